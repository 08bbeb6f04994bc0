"""Turning a finished simulation into a Result (and an OOM into a Diagnosis)."""

from __future__ import annotations

from memsim import units
from memsim.contracts.result import Result
from memsim.errors import Diagnosis, Shortfall
from memsim.hardware.overheads import describe
from memsim.hardware.spec import Compute, System
from memsim.sim.kv_pool_fit import kv_pool_diagnosis

EPS = 1e-12


def peak_flops(unit: Compute | None, dtype: str) -> float:
    """The unit's dense peak FLOP/s in ``dtype`` (no efficiency factor): MFU's denominator."""
    if unit is None:
        return 0.0
    return unit.flops(dtype) / unit.matmul_efficiency


def main_unit(system: System) -> Compute:
    return system.gpu or system.cpu


def common_fields(clock, makespan: float) -> dict:
    """Per-tier peak/mean/capacity and per-engine busy fractions."""
    pools = clock.pools
    return {
        "peak_bytes": {n: p.peak for n, p in sorted(pools.items())},
        "mean_bytes": {n: p.mean(makespan) for n, p in sorted(pools.items())},
        "capacity_bytes": {n: p.capacity for n, p in sorted(pools.items())},
        "reserved_bytes": {t: dict(lines) for t, lines in sorted(clock.reserved.items())},
        "link_busy": {n: (e.busy_s / makespan if makespan > 0 else 0.0)
                      for n, e in sorted(clock.copier.engines.items())},
    }


def step_result(engine, wall_s: float) -> Result:
    clock, system, prog = engine.clock, engine.sys, engine.prog
    makespan = clock.env.now
    acct = dict(engine.acct)
    tail = makespan - engine.main_end
    if tail > EPS:  # after the main stream's last op: the CPU's work, else copies still running
        cpu = sum(max(0.0, e - max(s, engine.main_end)) for s, e in engine.cpu_spans)
        acct["cpu"] += cpu
        acct["exposed_transfer"] += tail - cpu
    meta = engine.trace_meta
    tokens = int(meta.get("tokens_per_step") or 0)
    flops = float(meta.get("flops_per_step") or sum(op.flops for op in prog.ops if not op.recompute))
    peak = peak_flops(main_unit(system), meta.get("dtype") or _dtype(prog))
    return Result(
        feasible=clock.oom is None,
        step_time_s=makespan,
        tokens_per_s=tokens / makespan if makespan > 0 else 0.0,
        tokens_per_step=tokens,
        mfu=flops / (makespan * peak) if makespan > 0 and peak > 0 else 0.0,
        breakdown={k: acct[k] for k in sorted(acct)},
        oom=clock.oom,
        events=clock.events,
        wall_s=wall_s,
        notes=list(meta.get("workload_notes") or []) + sorted(set(prog.notes + clock.notes)),
        timeline=clock.recorder.finish() if clock.recorder is not None else None,
        **common_fields(clock, makespan),
    )


def _dtype(prog) -> str:
    return next((op.dtype for op in prog.ops if op.kind == "matmul"), "bf16")


def diagnose(result: Result, plannable: bool = True) -> Diagnosis:
    """Why a simulated case does not fit: every tier whose peak demand exceeds its capacity, the
    first OOM (time, op, largest live tensors) and the capacity each tier would need.
    ``plannable`` is false for a workload the planner can only place resident (a forward-only
    traced module): then the hint names the capacity alone, not a plan that cannot exist."""
    short = [Shortfall(tier, result.peak_bytes[tier], cap)
             for tier, cap in sorted(result.capacity_bytes.items())
             if result.peak_bytes.get(tier, 0) > cap]
    oom = result.oom
    if oom is None and not short:
        return kv_pool_diagnosis(result) or Diagnosis("fits: no tier exceeds its capacity")
    if oom is not None:
        holders = ", ".join(f"{n} {units.fmt_bytes(b)}" for n, b in oom.largest[:3])
        peak = result.peak_bytes.get(oom.tier, oom.needed_bytes)
        summary = (f"{oom.tier} overflows at t={units.fmt_time(oom.time_s)} during {oom.op} "
                   f"({units.fmt_bytes(oom.needed_bytes)} in use of "
                   f"{units.fmt_bytes(oom.capacity_bytes)}"
                   + (f"; largest: {holders}" if holders else "") + ")"
                   + f"; over the whole run it needs {units.fmt_bytes(peak)}")
        if result.reserved_bytes.get(oom.tier):
            held = describe({oom.tier: result.reserved_bytes[oom.tier]})
            summary += (f", of which non-tensor memory {held}"
                        " (hardware overheads: false to leave it out)")
    else:
        summary = "; ".join(f"{s.tier} needs {units.fmt_bytes(s.needed_bytes)}" for s in short)
    suggestions = [f"{s.tier} with at least {units.fmt_bytes(s.needed_bytes)} "
                   f"(+{units.fmt_bytes(s.short_bytes)})" for s in short]
    if short and plannable:
        suggestions.append("or a plan that offloads or recomputes (memsim plan --planner mip)")
    elif short:
        suggestions.append("or trace it with --train: the planner decides recompute and offload "
                           "per stage of a training graph; a forward-only module is planned resident")
    return Diagnosis(summary, short, suggestions)
