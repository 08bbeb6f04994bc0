"""LLM in a flash (Alizadeh et al., arXiv 2312.11514) run by memsim's own mechanisms.

The windowed runs are the workload knob ``inference.sparsity`` (memsim.workloads.sparsity: the
predictor's active neurons, the window of the last k tokens resident, the newly active neurons
read per token, row-column bundling as the read size) and the plan's ``neuron_tier``, which the
trace builder and the simulator execute; nothing here changes a trace or a hardware constant.
Each of the paper's two settings is one entry of the case's setup (hardware, dtype, the tier the
resident set lives on, the tier the weights are stored on):

* naive: the dense model with ``naive_resident_share`` of the weights resident and the rest read
  from storage for every token, in large sequential reads, prefetched a layer ahead — the paper's
  baseline, "the most efficient theoretical baseline", loading half the model per token (sect. 4);
* windowing, windowing + bundling: the sparse trace with the FFN outside the window on storage.
  Their plans use ``prefetch_depth: 0``: a layer's neurons are known only once its predictor has
  run on the layer's attention output, so their reads cannot start earlier (the simulator makes
  the FFN part its own slot, memsim.sim.neurons).
"""

from __future__ import annotations

import copy
from pathlib import Path

from memsim.hardware.spec import System
from memsim.planners import Plan, PlannerInfo
from memsim.sim import simulate
from memsim.studies.reproduce_spec import CaseResult, CaseSpec, Figure
from memsim.units import fmt_bandwidth, fmt_bytes

VARIANTS = ("naive", "windowing", "windowing + bundling")
LABELS = {"gpu": "GPU", "cpu": "CPU only"}


def cpu_only(system: System) -> System:
    out = system.model_copy(deep=True)
    out.compute = {k: v for k, v in out.compute.items() if v.kind == "cpu"}
    return out


def _workload(s: dict, setting: dict, sparsity: dict | None) -> dict:
    data = copy.deepcopy(s["workload"])
    data["inference"]["dtype"] = setting["dtype"]
    if sparsity is not None:
        data["inference"]["sparsity"] = sparsity
    return data


def _run(spec: CaseSpec, path: Path, unit: str, setting: dict, say) -> tuple[dict, dict]:
    from memsim.studies.reproduce_cases import _need, system_of, trace_of

    s = spec.setup
    system = system_of(setting, path)
    if setting.get("cpu_only"):
        system = cpu_only(system)
    resident, store = _need(setting, "resident", path), _need(setting, "store", path)
    share = float(s.get("naive_resident_share", 0.5))
    sparsity = dict(_need(s, "sparsity", path))
    runs, traces = {}, {}
    for name in VARIANTS:
        if name == "naive":
            wl = _workload(s, setting, None)
            plan = Plan(placement={"weight": {resident: share, store: 1 - share}},
                        prefetch_depth=int(s.get("naive_prefetch_depth", 1)),
                        planner=PlannerInfo(name="naive", status="given"))
        else:
            wl = _workload(s, setting, {**sparsity, "bundling": name.endswith("bundling")})
            plan = Plan(placement={"weight": {resident: 1.0}}, neuron_tier=store, prefetch_depth=0,
                        planner=PlannerInfo(name=name, status="given"))
        say(f"{unit}: {name}")
        trace = trace_of({"workload": wl}, path)
        runs[name], traces[name] = simulate(system, trace, plan), trace
    return runs, {"system": system, "traces": traces, "store": store, "resident": resident}


def flash_case(spec: CaseSpec, path: Path, say) -> CaseResult:
    from memsim.studies.reproduce_cases import _need

    s = spec.setup
    figures, setup = [], []
    for unit in ("gpu", "cpu"):
        setting = _need(s, unit, path)
        runs, ctx = _run(spec, path, unit, setting, say)
        n, w, b = (runs[v] for v in VARIANTS)
        trace = ctx["traces"]["windowing + bundling"]
        gen = trace.meta["gen_len"]
        store, system = ctx["store"], ctx["system"]
        io = sum(v for k, v in b.link_busy.items() if f"{store}->" in k) * b.step_time_s
        figures.append(Figure(
            f"speedup_{unit}", f"{LABELS[unit]}: speed-up of windowing + bundling over naive", "x",
            _range(spec.published.get(f"speedup_{unit}")), n.step_time_s / b.step_time_s,
            "simulated",
            f"per token {1e3 * n.step_time_s / gen:.0f} ms naive, {1e3 * w.step_time_s / gen:.0f} ms "
            f"windowing, {1e3 * b.step_time_s / gen:.0f} ms with bundling, of which "
            f"{1e3 * io / gen:.0f} ms {store} reads and {1e3 * b.breakdown['compute'] / gen:.0f} ms "
            "compute" + _fits(n, w, b)))
        if unit == "cpu":
            steps = gen - 1  # the decode steps: the prefill reads no neurons (sparsity.py)
            figures.append(Figure("io_per_token", "flash loading per token, windowing + bundling",
                                  "ms", spec.published.get("io_ms_per_token"), 1e3 * io / steps,
                                  "simulated", f"busy time of the {store} read engine / {steps} "
                                               "decode steps"))
        sp = trace.meta["sparsity"]
        model = ctx["traces"]["naive"].meta["per_device_bytes"]["weights"]
        tier = system.tiers[store]
        cap = system.tiers[ctx["resident"]].capacity
        setup.append(
            f"{LABELS[unit]}: hardware `{setting['hardware']}`"
            + (" (its CPU only)" if setting.get("cpu_only") else "")
            + f", {trace.meta['dtype']}: the {fmt_bytes(model)} model is {model / cap:.2f}× the "
            f"{fmt_bytes(cap)} {ctx['resident']}; per layer {fmt_bytes(sp['resident_bytes_per_layer'])} "
            f"resident, {fmt_bytes(sp['loaded_bytes_per_token_layer'])} read per token from {store} "
            f"in {fmt_bytes(sp['read_bytes'])} bundles at "
            f"{fmt_bandwidth(tier.read_bandwidth(sp['read_bytes']))} (unbundled "
            f"{fmt_bytes(sp['read_bytes'] // 2)} reads at "
            f"{fmt_bandwidth(tier.read_bandwidth(sp['read_bytes'] // 2))}); naive reads at "
            f"{fmt_bandwidth(tier.read_bandwidth(1 << 20))}")
    w = ctx["traces"]["windowing + bundling"].meta["sparsity"]
    setup.insert(0, f"workload `{s['workload']['name']}` with inference.sparsity: active "
                    f"{w['active_fraction']:.0%} of the FFN, window k = {w['window']} "
                    f"({w['window_fraction']:.0%} resident, {w['load_fraction']:.1%} read per token), "
                    f"predictor {s['sparsity'].get('predictor_fraction', 0):.2%} of the model; "
                    f"plan neuron_tier on storage, prefetch_depth 0")
    setup.append("not modelled: the paper's memory-management implementation beyond one in-memory "
                 "copy of the loaded bytes (it reports 65 ms a token on the M1 Max, sect. 4.1); "
                 "the prompt's own neuron loading")
    return CaseResult(spec.name, spec.title, spec.source, setup, figures)


def _fits(*results) -> str:
    bad = [r for r in results if not r.feasible]
    if not bad:
        return ""
    return f"; does not fit: {bad[0].oom.tier} short by {fmt_bytes(bad[0].oom.short_bytes)}"


def _range(value):
    if value is None:
        return None
    return (float(value[0]), float(value[1])) if isinstance(value, list | tuple) else float(value)
