"""LLM in a flash (Alizadeh et al., arXiv 2312.11514) built from memsim's own parts.

memsim has no sparsity predictor or neuron cache, so the case transforms the inference Trace the
way the paper's mechanisms change what one token costs (sect. 3 and 4.1), with every parameter in
the case YAML:

* activation sparsity: the FFN matmuls compute (and read) only the ``active_fraction`` of neurons
  the predictor marks active;
* windowing: of the FFN, only the ``window_fraction`` used by the last k tokens stays in DRAM, and
  each token reads the ``new_fraction`` not already there from flash — so each layer's weights
  become attention + norms + window + new neurons (+ the predictor), homed in DRAM except the new
  neurons, homed in flash and streamed by the simulator every token; the inactive rest of the FFN
  sits on flash untouched;
* row-column bundling: flash reads are one up-projection column plus one down-projection row
  (2·d_model elements) instead of one of them; the simulator issues 1 MiB flash requests, so the
  case sets the flash tier's read bandwidth to its ``read_size_curve`` at the read size.

Naive loading is the untransformed trace with ``naive_dram_share`` of the weights homed in DRAM and
the rest streamed from flash for every token (large sequential reads).
"""

from __future__ import annotations

import copy
from pathlib import Path

from memsim.hardware.spec import System
from memsim.planners import Plan, PlannerInfo
from memsim.sim import simulate
from memsim.studies.reproduce import CaseResult, CaseSpec, Figure
from memsim.units import fmt_bandwidth, fmt_bytes, parse_bytes
from memsim.workloads.trace import LAYER, Trace

FFN_OPS = ("mlp_up", "mlp_gate", "mlp_down")
ELEM = {"fp32": 4, "bf16": 2, "fp16": 2}


def ffn_split(trace: Trace) -> tuple[int, int]:
    """(FFN bytes, all bytes) of one layer's weight tensor, from the decode matmul shapes."""
    elem = ELEM[str(trace.meta.get("dtype", "fp16"))]
    ffn = 0
    for block in trace.blocks:
        if block.name != "decode":
            continue
        for op in block.ops:
            if op.kind == "matmul" and op.name.split(".")[-1] in FFN_OPS:
                ffn += op.shape[1] * op.shape[2] * elem
    return ffn, trace.tensors[f"L{LAYER}.weight"].bytes


def windowed(trace: Trace, s: dict) -> tuple[Trace, Plan, dict]:
    """The trace as one token sees it under sparsity + windowing, and the plan homing new neurons in flash."""
    active, window, new = (float(s[k]) for k in ("active_fraction", "window_fraction", "new_fraction"))
    ffn, layer = ffn_split(trace)
    layers = int(trace.meta["layers"])
    predictor = float(s.get("predictor_share", 0.0)) * trace.meta["per_device_bytes"]["weights"] / layers
    resident = layer - ffn + ffn * window + predictor
    streamed = ffn * new
    out = copy.deepcopy(trace)
    out.name = f"{trace.name}-windowed"
    out.tensors[f"L{LAYER}.weight"].bytes = int(resident + streamed)
    for block in out.blocks:
        for op in block.ops:
            if op.kind == "matmul" and op.name.split(".")[-1] in FFN_OPS:
                op.flops *= active
                op.bytes_read = int(op.bytes_read * active)
    share = streamed / (resident + streamed)
    plan = Plan(placement={"weight": {"dram": 1 - share, "flash": share}},
                planner=PlannerInfo(name="window+bundle", status="given"))
    return out, plan, {"resident": resident, "streamed": streamed, "ffn": ffn}


def with_read_size(system: System, tier: str, read_bytes: int) -> System:
    """The system with ``tier`` read at its read_size_curve at ``read_bytes`` (the case's read size)."""
    out = system.model_copy(deep=True)
    t = out.tiers[tier]
    t.read_bw = min(t.read_bw, t.read_size_curve.at(read_bytes)) if t.read_size_curve else t.read_bw
    return out


def cpu_only(system: System) -> System:
    out = system.model_copy(deep=True)
    out.compute = {k: v for k, v in out.compute.items() if v.kind == "cpu"}
    return out


def flash_case(spec: CaseSpec, path: Path, say) -> CaseResult:
    from memsim.studies.reproduce_cases import _need, system_of, trace_of

    s = spec.setup
    dram = parse_bytes(_need(s, "dram_bytes", path))
    base = system_of(s, path, [f"hardware.tiers.dram.capacity={dram}"])
    trace = trace_of(s, path)
    flash_tier = base.tiers_of("flash")[0]
    share = float(s.get("naive_dram_share", 0.5))
    naive = Plan(placement={"weight": {"dram": share, flash_tier: 1 - share}},
                 planner=PlannerInfo(name="naive", status="given"))
    wtrace, wplan, parts = windowed(trace, s)
    elem = ELEM[str(trace.meta.get("dtype", "fp16"))]
    hidden = next(op.shape[1] for b in trace.blocks if b.name == "decode" for op in b.ops
                  if op.name.endswith(".qkv"))  # d_model: the K dimension of the QKV projection
    row, bundle = hidden * elem, 2 * hidden * elem
    figures, times = [], {}
    for unit, system in (("gpu", base), ("cpu", cpu_only(base))):
        variants = (("naive", system, trace, naive),
                    ("windowing", with_read_size(system, flash_tier, row), wtrace, wplan),
                    ("windowing + bundling", with_read_size(system, flash_tier, bundle), wtrace, wplan))
        for name, sys_, tr, plan in variants:
            say(f"{unit}: {name}")
            r = simulate(sys_, tr, plan)
            times[(unit, name)] = r
        n, w, b = (times[(unit, v)] for v in ("naive", "windowing", "windowing + bundling"))
        label = "GPU (unified memory)" if unit == "gpu" else "CPU only"
        figures.append(Figure(f"speedup_{unit}", f"{label}: speed-up of windowing + bundling over naive",
                              "x", _range(spec.published.get(f"speedup_{unit}")),
                              n.step_time_s / b.step_time_s,
                              "simulated (transformed trace)",
                              f"per step {n.step_time_s:.3g} s naive, {w.step_time_s:.3g} s windowing, "
                              f"{b.step_time_s:.3g} s with bundling" + _fits(n, b)))
    bundled = times[("gpu", "windowing + bundling")]
    io = sum(v for k, v in bundled.link_busy.items() if f"{flash_tier}->" in k) * bundled.step_time_s
    figures.append(Figure("io_per_token", "flash loading per token, windowing + bundling", "ms",
                          spec.published.get("io_ms_per_token"), 1e3 * io / trace.meta["gen_len"],
                          "simulated",
                          f"busy time of the {flash_tier} read engine / {trace.meta['gen_len']} tokens"))
    model = trace.meta["per_device_bytes"]["weights"]
    setup = [f"hardware `{s['hardware']}` with DRAM cut to {fmt_bytes(dram)}: the {fmt_bytes(model)} "
             f"model is {model / dram:.2f}× the DRAM",
             f"workload `{trace.name}` ({trace.meta['model']}, {trace.meta['dtype']}, prompt "
             f"{trace.meta['prompt_len']}, {trace.meta['gen_len']} new tokens)",
             f"naive: {share:.0%} of the weights in DRAM, the rest streamed from {flash_tier} every token "
             f"(1 MiB reads at {fmt_bandwidth(base.tiers[flash_tier].read_bandwidth(1 << 20))})",
             f"windowing: per layer {fmt_bytes(parts['resident'])} resident, "
             f"{fmt_bytes(parts['streamed'])} of new FFN neurons read per token; FFN compute × "
             f"{s['active_fraction']}",
             f"reads of {fmt_bytes(row)} (one row) at "
             f"{fmt_bandwidth(with_read_size(base, flash_tier, row).tiers[flash_tier].read_bw)}, bundled "
             f"{fmt_bytes(bundle)} at "
             f"{fmt_bandwidth(with_read_size(base, flash_tier, bundle).tiers[flash_tier].read_bw)} "
             "(the tier's read_size_curve)",
             "not modelled: the predictor's compute, DRAM memory management (copying neurons in the "
             "window cache), and the paper's GPU setting (an RTX 4090 behind PCIe, not unified memory)"]
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
