"""How each kind of reproduction is evaluated with memsim's own parts.

Every function takes the case's YAML (``CaseSpec``), its path and a progress callback and returns a
``CaseResult``. memsim's figures come from the workload accounting (``trace.meta``), the simulator
(``memsim.sim.simulate``) or the MIP planner (``memsim.planners.plan``), labelled as such; the
published figures and every parameter of a transformation come from the YAML.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

from memsim.api import plan as plan_with
from memsim.errors import Infeasible, SpecError
from memsim.hardware import load_system
from memsim.hardware.spec import System
from memsim.planners import Plan, PlannerInfo, load_preset, run_preset
from memsim.sim import simulate
from memsim.specio import apply_overrides, validate
from memsim.studies.reproduce_spec import CaseResult, CaseSpec, Figure
from memsim.units import fmt_bytes
from memsim.workloads import build_trace, load_workload
from memsim.workloads.spec import Workload
from memsim.workloads.trace import Trace

Say = Callable[[str], None]
SIM = "simulated"
FORMULA = "accounting formula"


# -- shared helpers -----------------------------------------------------------------------------


def _need(setup: dict, key: str, path: Path):
    if key not in setup:
        raise SpecError("required key is missing", file=str(path), key=f"setup.{key}")
    return setup[key]


def workload_of(given, path: Path, overrides: list[str] = ()) -> Workload:
    """A catalog workload by name, or one written inline in the case file (paths relative to it)."""
    if isinstance(given, str):
        return load_workload(given, list(overrides))
    data = apply_overrides(copy.deepcopy(given), [o for o in overrides if not o.startswith("hardware.")],
                           str(path))
    workload = validate(Workload, data, f"{path} (setup.workload)")
    workload._source = str(path)
    from memsim.workloads import workload_architecture

    workload_architecture(workload)  # resolves the model now, so a bad name fails here
    return workload


def trace_of(setup: dict, path: Path, extra: list[str] = ()) -> Trace:
    overrides = [*setup.get("overrides", []), *extra]
    return build_trace(workload_of(_need(setup, "workload", path), path, overrides))


def system_of(setup: dict, path: Path, extra: list[str] = ()) -> System:
    """The case's System. Published figures count tensors only, so reproductions leave the
    runtime's non-tensor memory out (memsim.hardware.overheads) unless a case sets it back on."""
    pure = ["hardware.overheads=false"]
    return load_system(_need(setup, "hardware", path), [*pure, *setup.get("overrides", []), *extra])


def fixed_plan(data: dict, name: str, path: Path) -> Plan:
    plan = Plan.from_dict(copy.deepcopy(data), file=str(path))
    plan.planner = PlannerInfo(name=name, status="given")
    return plan


def oom_text(result) -> str:
    oom = result.oom
    held = ", ".join(f"{n} {fmt_bytes(b)}" for n, b in oom.largest[:3])
    return (f"does not fit in memsim: {oom.tier} needs {fmt_bytes(oom.needed_bytes)} of "
            f"{fmt_bytes(oom.capacity_bytes)} at {oom.op} (largest: {held})")


def gb(nbytes: float) -> float:
    return nbytes / 1e9


def gib(nbytes: float) -> float:
    return nbytes / 2**30


def _decimals(value: float) -> int:
    text = repr(float(value))
    return 0 if text.endswith(".0") else len(text.split(".")[1])


# -- ZeRO Table 1 -------------------------------------------------------------------------------


def zero(spec: CaseSpec, path: Path, say: Say) -> CaseResult:
    workload = _need(spec.setup, "workload", path)
    figures, setup = [], []
    for i, col in enumerate(spec.columns or []):
        stage = int(col["zero_stage"])
        say(f"stage {stage}")
        trace = build_trace(load_workload(workload, [f"training.zero_stage={stage}"]))
        pdb = trace.meta["per_device_bytes"]
        states = pdb["weights"] + pdb["gradients"] + pdb["optimizer"]
        published = float(col["published_gb"])
        shown = round(gb(states), _decimals(published))
        exact = "matches" if shown == published else "DIFFERS"
        figures.append(Figure(f"stage{stage}", f"{col['label']}: model states per device", "GB", published,
                              gb(states), FORMULA,
                              f"{states:,} B = {col.get('formula', '')}; {exact} at the published precision"))
        if i == 0:
            setup.append(f"workload `{workload}`: {trace.meta['params']:,} parameters, Nd = "
                         f"{trace.meta['data_parallel']}, {trace.meta['optimizer']}, {trace.meta['dtype']}")
    return CaseResult(spec.name, spec.title, spec.source, setup, figures,
                      commands=[f"memsim workload show {workload} --set training.zero_stage=3"])


# -- FlexGen ------------------------------------------------------------------------------------


def flexgen(spec: CaseSpec, path: Path, say: Say) -> CaseResult:
    hardware = _need(spec.setup, "hardware", path)
    system = system_of(spec.setup, path)
    setup = [f"hardware `{hardware}` ({system.description})"]
    out = CaseResult(spec.name, spec.title, spec.source, setup, [])
    traces: dict[str, Trace] = {}
    policy_tps: dict[str, float] = {}  # workload -> FlexGen's policy, simulated
    for i, run in enumerate(spec.runs or []):
        name = run["workload"]
        say(run["label"])
        trace = traces.get(name) or traces.setdefault(name, build_trace(load_workload(name)))
        if "plan" in run:
            _policy_run(system, trace, run, f"run{i}", path, out, policy_tps, say)
        else:
            limit = float(spec.setup.get("time_limit_s", 10))
            _planner_run(system, trace, run, f"run{i}", limit, out, policy_tps.get(trace.name))
            out.commands.append(f"memsim plan --hardware {hardware} --workload {name} "
                                f"--planner {run.get('planner', 'mip')}")
    return out


def _published(run: dict) -> float | None:
    value = run.get("published_tokens_per_s")
    return float(value) if value is not None else None


def _policy_run(system: System, trace: Trace, run: dict, key: str, path: Path, out: CaseResult,
                policy_tps: dict[str, float], say: Say) -> None:
    """A published policy (a fixed Plan from the YAML), simulated."""
    label, note = f"{run['label']}: tokens/s", run.get("published_note", "")
    plan = fixed_plan(run["plan"], "flexgen-policy", path)
    result = simulate(system, trace, plan)
    out.setup.append(f"{run['label']}: workload `{trace.name}`, plan {_plan_text(plan)}")
    if not result.feasible:
        out.figures.append(Figure(key, label, "tokens/s", _published(run), None, SIM,
                                  f"{oom_text(result)}. {note}"))
        out.figures.append(_what_if_fits(system, trace, plan, run, key, _published(run), say))
        return
    policy_tps[trace.name] = result.tokens_per_s
    out.figures.append(Figure(key, label, "tokens/s", _published(run), result.tokens_per_s, SIM,
                              _join(note, _busiest(result))))
    if run.get("cost_model_tokens_per_s") is not None:
        out.figures.append(Figure(f"{key}-model", f"{run['label']}: tokens/s vs FlexGen's cost model",
                                  "tokens/s", float(run["cost_model_tokens_per_s"]), result.tokens_per_s, SIM,
                                  "FlexGen's own prediction (experimental/cost_model.py)"))


def _planner_run(system: System, trace: Trace, run: dict, key: str, limit: float, out: CaseResult,
                 policy: float | None) -> None:
    """The plan memsim's planner picks (MIP by default), simulated; beside the policy's figure."""
    planner, label = run.get("planner", "mip"), f"{run['label']}: tokens/s"
    note = run.get("published_note", "")
    try:
        report = plan_with(system, trace, planner, time_limit=limit, baselines=False)
    except Infeasible as exc:
        out.figures.append(Figure(key, label, "tokens/s", _published(run), None, "MIP plan simulated",
                                  f"the planner finds no plan that fits: {exc.diagnosis.summary}. {note}"))
        out.setup.append(f"{run['label']}: workload `{trace.name}`, planner `{planner}`: no plan fits")
        return
    tps = report.result.tokens_per_s
    out.figures.append(Figure(key, label, "tokens/s", _published(run), tps, "MIP plan simulated",
                              _join(note, _busiest(report.result))))
    if policy:
        out.figures.append(Figure(f"{key}-ratio", f"{run['label']} / FlexGen's policy, both simulated", "x",
                                  None, tps / policy, "MIP plan simulated"))
    info = report.plan.planner
    gap = f", gap {info.gap:.2%}" if info.gap is not None else ""
    out.setup.append(f"{run['label']}: workload `{trace.name}`, planner `{planner}` ({info.status}{gap}) "
                     f"chose {_plan_text(report.plan)}")


def _what_if_fits(system: System, trace: Trace, plan: Plan, run: dict, key: str, published: float,
                  say: Say) -> Figure:
    """The same policy with the overflowing tier grown to what the simulator says it needs: shows
    the throughput the policy would reach, labelled as a what-if (the figure above stays None)."""
    grown, result = system, None
    for _ in range(3):
        result = simulate(grown, trace, plan)
        if result.feasible or result.oom is None:
            break
        oom = result.oom
        need = math.ceil(oom.needed_bytes / 2**30 + 0.5) * 2**30
        say(f"what-if: {oom.tier} at {fmt_bytes(need)}")
        grown = grown.model_copy(deep=True)
        grown.tiers[oom.tier].capacity = max(need, grown.tiers[oom.tier].capacity + 2**30)
    label = f"{run['label']}, what-if: " + ", ".join(
        f"{t} {fmt_bytes(grown.tiers[t].capacity)}" for t in grown.tiers
        if grown.tiers[t].capacity != system.tiers[t].capacity)
    if result is None or not result.feasible:
        return Figure(key + "-whatif", label, "tokens/s", published, None, "simulated (what-if)",
                      "still does not fit after growing the tier three times")
    return Figure(key + "-whatif", label, "tokens/s", published, result.tokens_per_s, "simulated (what-if)",
                  "memsim's capacity need, not the T4's: shows the throughput of the policy itself")


def _busiest(result) -> str:
    """The copy engine busy the largest share of the step: where a slow step spends its time."""
    if not result.link_busy:
        return ""
    name, busy = max(sorted(result.link_busy.items()), key=lambda i: i[1])
    return f"busiest copy engine {name}: {busy:.0%} of the step"


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _split_text(split: dict[str, float]) -> str:
    return "/".join(f"{f:.0%} {t}" for t, f in sorted(split.items(), key=lambda i: -i[1]))


def _plan_text(plan: Plan) -> str:
    where = "; ".join(f"{cls} " + _split_text(split)
                      for cls, split in sorted(plan.placement.items()))
    batches = (f", GPU batch {plan.gpu_batch_size} × {plan.num_gpu_batches}"
               if plan.num_gpu_batches else "")
    return f"{where or 'all on the GPU'}{batches}{', attention on the CPU' if plan.cpu_attention else ''}"


# -- PagedAttention ----------------------------------------------------------------------------


def paged(spec: CaseSpec, path: Path, say: Say) -> CaseResult:
    s = spec.setup
    system = system_of(s, path)
    contiguous = int(_need(s, "contiguous_block_tokens", path))
    paged_ = int(_need(s, "paged_block_tokens", path))
    results = {}
    for label, block in (("contiguous", contiguous), ("paged", paged_)):
        say(f"{label} ({block}-token blocks)")
        trace = trace_of(s, path, [f"serving.scheduler.block_size={block}"])
        results[label] = simulate(system, trace, None)
    for label, r in results.items():
        if not r.feasible:
            raise Infeasible(_diag(r, f"pagedattention {label}"))
    c, p = results["contiguous"].serving, results["paged"].serving
    pub = spec.published
    figures = [
        Figure("contiguous_share", f"contiguous reservation ({contiguous} tokens): KV memory holding tokens",
               "%", _range(pub.get("contiguous_token_share")), 1 - c.kv_fragmentation, SIM),
        Figure("paged_share", f"paged ({paged_}-token blocks): KV memory holding tokens", "%",
               _range(pub.get("paged_token_share")), 1 - p.kv_fragmentation, SIM),
        Figure("throughput_gain", "throughput, paged / contiguous", "x", _range(pub.get("throughput_gain")),
               p.throughput_tokens_per_s / c.throughput_tokens_per_s, SIM),
        Figure("contiguous_tps", "contiguous reservation: throughput", "tokens/s", None,
               c.throughput_tokens_per_s, SIM, f"p50 TTFT {c.ttft_s['p50']:.3g} s"),
        Figure("paged_tps", "paged: throughput", "tokens/s", None, p.throughput_tokens_per_s, SIM,
               f"p50 TTFT {p.ttft_s['p50']:.3g} s; {p.preemptions} preemptions"),
    ]
    trace = trace_of(s, path)
    setup = [f"hardware `{s['hardware']}` with {', '.join(s.get('overrides', [])) or 'no overrides'}",
             f"serving workload `{trace.name}` ({trace.meta.get('model')}): {len(trace.requests)} requests, "
             f"mean prompt {_mean(trace.requests.prompt_len):.0f}, mean output "
             f"{_mean(trace.requests.output_len):.0f} tokens",
             f"block_size {contiguous} (one block per request: a max-length reservation) vs {paged_}",
             "throughput at saturation (requests arrive faster than either setup serves them); the paper "
             "compares request rates at equal latency"]
    return CaseResult(spec.name, spec.title, spec.source, setup, figures)


def _range(value):
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return (float(value[0]), float(value[1]))
    return float(value)


def _mean(values) -> float:
    return sum(values) / max(1, len(values))


def _diag(result, what: str):
    from memsim.sim import diagnose

    diagnosis = diagnose(result)
    diagnosis.summary = f"{what}: {diagnosis.summary}"
    return diagnosis


# -- Chen et al. sqrt(n) checkpointing --------------------------------------------------------


def _phase_split(system, trace: Trace, plan) -> str:
    """How the no-checkpointing step's op time splits into forward and backward (each op alone,
    as the engine costs it): what one recomputed forward adds depends on that ratio."""
    from memsim.sim.engine import StepEngine
    from memsim.sim.program import build_program

    view = system.rank_view(int(trace.meta.get("data_parallel", 1) or 1))
    engine = StepEngine(view, build_program(trace, view, plan), plan.prefetch_depth, False, trace.meta)
    phase: dict[str, float] = {}
    elementwise = 0.0
    for op, t in zip(engine.prog.ops, engine.dur, strict=True):
        phase[op.phase] = phase.get(op.phase, 0.0) + t
        if op.phase == "forward" and op.kind == "elementwise":
            elementwise += t
    fwd, bwd = phase.get("forward", 0.0), phase.get("backward", 0.0)
    return (f"ops alone: forward {fwd:.3g} s, backward {bwd:.3g} s ({bwd / fwd:.2f}× the forward; "
            f"memory-bound elementwise ops are {elementwise / fwd:.0%} of the forward)")


def checkpoint(spec: CaseSpec, path: Path, say: Say) -> CaseResult:
    s = spec.setup
    system = system_of(s, path)
    trace = trace_of(s, path)
    out, plans = {}, {}
    for role in ("baseline", "planner"):
        name = _need(s, role, path)
        say(name)
        plans[role] = run_preset(load_preset(name), system, trace)
        out[role] = simulate(system, trace, plans[role])
        if not out[role].feasible:
            raise Infeasible(_diag(out[role], f"{spec.name} {name}"))
    fast = system.fast_tier
    none_, sqrt_ = out["baseline"], out["planner"]
    pdb = trace.meta["per_device_bytes"]
    states = pdb["weights"] + pdb["gradients"] + pdb["optimizer"]
    pub = spec.published
    figures = [
        Figure("peak_none", f"peak {fast}, no checkpointing", "GB", pub.get("peak_none_gb"),
               gb(none_.peak_bytes[fast]), SIM),
        Figure("peak_sqrt", f"peak {fast}, √n checkpointing", "GB", pub.get("peak_sqrt_gb"),
               gb(sqrt_.peak_bytes[fast]), SIM),
        Figure("reduction", "memory reduction (no checkpointing / √n)", "x",
               pub["peak_none_gb"] / pub["peak_sqrt_gb"] if "peak_sqrt_gb" in pub else None,
               none_.peak_bytes[fast] / sqrt_.peak_bytes[fast], SIM),
        Figure("extra_time", "extra step time of √n checkpointing", "%", pub.get("extra_time"),
               sqrt_.step_time_s / none_.step_time_s - 1, SIM,
               f"recompute {sqrt_.breakdown.get('recompute', 0.0):.3g} s of {sqrt_.step_time_s:.3g} s; "
               + _phase_split(system, trace, plans["baseline"])),
    ]
    setup = [f"hardware `{s['hardware']}`; workload `{trace.name}`: {trace.meta['layers']} layers, "
             f"{trace.meta['params']:,} parameters, micro-batch {trace.meta['micro_batch']} × "
             f"{trace.meta['seq_len']} tokens",
             f"model states {gb(states):.3g} GB and activations {gb(pdb['activations']):.3g} GB "
             f"(accounting); a layer saves {_layer_saving(trace)}",
             f"planners `{s['baseline']}` vs `{s['planner']}` "
             f"({'; '.join(plans['planner'].notes) or 'as planned'})"]
    return CaseResult(spec.name, spec.title, spec.source, setup, figures)


def _layer_saving(trace: Trace) -> str:
    """What one layer saves for its backward vs its input (all a recomputed layer keeps)."""
    per = trace.meta.get("activation_bytes_per_layer") or {}
    if not per.get("input"):
        return "(no per-layer figures in the trace)"
    return (f"{fmt_bytes(per['total'])}, {per['total'] / per['input']:.0f}× its {fmt_bytes(per['input'])} "
            "input, which is all a recomputed layer keeps")


# -- HeadInfer ----------------------------------------------------------------------------------


def headinfer(spec: CaseSpec, path: Path, say: Say) -> CaseResult:
    s = spec.setup
    system = system_of(s, path)
    trace = trace_of(s, path)
    fast, meta = system.fast_tier, trace.meta
    kv = meta["per_device_bytes"]["kv_cache"]
    say("all on the GPU")
    resident = simulate(system, trace, None)
    say("all on the GPU, whole prompt in one prefill")
    whole = simulate(system, trace_of(s, path, [f"inference.prefill_chunk={meta['prompt_len']}"]),
                     None)
    say("KV offloaded to DRAM, layer-wise")
    plan_data = _need(s, "offload_plan", path)
    offload = simulate(system, trace, fixed_plan(plan_data, "kv-offload", path))
    from memsim.workloads import workload_architecture

    arch = workload_architecture(workload_of(s["workload"], path, s.get("overrides", [])))
    say("KV offloaded to DRAM, head-wise")
    headwise_plan = fixed_plan({**plan_data, "kv_head_groups": arch.kv_heads}, "head-wise", path)
    headwise = simulate(system, trace, headwise_plan)
    buffers = int(s.get("buffers", 2))
    head_kv = kv // (arch.layers * arch.kv_heads) * buffers
    layer_kv = kv // arch.layers
    non_kv = _non_kv_peak(resident, trace, fast)
    gpu_kv_offload = offload.peak_bytes[fast] - non_kv
    gpu_kv_head = headwise.peak_bytes[fast] - non_kv
    pub = spec.published
    # HeadInfer's sizes are binary: its "128 GB" KV cache is 2^37 B and its "1 GB" two 512 MiB
    # head buffers, so every published size here is GiB. Its "everything on the GPU" baseline is
    # standard inference, which prefills the whole prompt at once (chunked prefill is one of
    # HeadInfer's own additions); the chunked run is quoted beside it.
    base, other = (whole, resident) if s.get("baseline_whole_prefill", True) else (resident, whole)
    other_text = ("in chunks of " + f"{meta.get('prefill_chunk'):,}" if base is whole
                  else "the whole prompt at once")
    figures = [
        Figure("kv", "KV cache at 2^20 tokens", "GiB", pub.get("kv_cache_gib"), gib(kv), FORMULA,
               f"{kv:,} B"),
        Figure("gpu_total_resident", f"peak {fast}, everything on the GPU", "GiB",
               pub.get("gpu_total_resident_gib"), gib(base.peak_bytes[fast]), SIM,
               ("more than the GPU has: the simulator reports the need. " if not base.feasible
                else "") + f"Prefilling {other_text} instead: "
               f"{gib(other.peak_bytes[fast]):.1f} GiB"),
        Figure("gpu_total_offload", f"peak {fast}, KV homed in DRAM, head-wise streaming", "GiB",
               pub.get("gpu_total_offload_gib"), gib(headwise.peak_bytes[fast]), SIM,
               (f"kv_head_groups {arch.kv_heads}, {headwise.step_time_s:,.0f} s a step. "
                if headwise.feasible else oom_text(headwise) + ". ")
               + f"Layer-wise streaming (the default) needs {gib(offload.peak_bytes[fast]):.2f} GiB"
               + ("" if offload.feasible else " and does not fit")),
        Figure("gpu_kv_offload", f"KV on the {fast}, head-wise streaming", "GiB",
               pub.get("gpu_kv_offload_gib"), gib(gpu_kv_head), SIM,
               f"one KV head's cache is {fmt_bytes(kv // (arch.layers * arch.kv_heads))}; "
               f"layer-wise, one layer's is {fmt_bytes(layer_kv)} and the GPU holds "
               f"{gib(gpu_kv_offload):.2f} GiB of KV"),
        Figure("gpu_kv_headwise", f"KV on the {fast}, {buffers} head buffers", "GiB",
               pub.get("gpu_kv_offload_gib"), gib(head_kv), FORMULA,
               f"{buffers} × KV / (layers × KV heads) = {buffers} × {fmt_bytes(head_kv // buffers)}"),
    ]
    offload_text = _plan_text(fixed_plan(s["offload_plan"], "kv-offload", path))
    setup = [f"hardware `{s['hardware']}`; workload `{s['workload']}` "
             f"{'with ' + ', '.join(s['overrides']) + ' ' if s.get('overrides') else ''}"
             f"({meta['prompt_len'] + meta['gen_len']:,} tokens, batch {meta['batch_size']}, prefill in "
             f"chunks of {meta.get('prefill_chunk')})",
             "everything on the GPU: "
             + ("standard inference, the whole prompt in one prefill" if base is whole
                else f"prefill in chunks of {meta.get('prefill_chunk')}"),
             f"offload plan: {offload_text}; head-wise: the same with kv_head_groups "
             f"{arch.kv_heads} (one KV head at a time, prefetch_depth {headwise_plan.prefetch_depth} "
             "head ahead)"]
    return CaseResult(spec.name, spec.title, spec.source, setup, figures)


def _non_kv_peak(resident, trace: Trace, fast: str) -> int:
    """Peak bytes on the GPU that are not KV: the resident peak minus the whole KV cache."""
    return resident.peak_bytes[fast] - trace.meta["per_device_bytes"]["kv_cache"]
