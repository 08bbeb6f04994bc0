"""The discrete-event simulator (simpy): memsim's single source of truth for a plan's numbers.

    result = simulate(system, trace, plan)          # Result: step time, tokens/s, MFU, bytes...
    if not result.feasible: raise Infeasible(diagnose(result))

The System a rank sees is ``system.rank_view(trace.meta["data_parallel"])``. Without a plan every
byte stays on the compute tier (the GPU's HBM; a CPU-only system's DRAM). See docs/simulator.md.
"""

from __future__ import annotations

import time

from memsim.contracts.plan import Plan, trace_fingerprint
from memsim.contracts.result import OOM, Result, ServingStats
from memsim.errors import SpecError
from memsim.hardware.spec import System
from memsim.sim.parallel import runs_here, simulate_parallel, single_rank_block
from memsim.sim.report import diagnose
from memsim.sim.timeline import write_timeline
from memsim.workloads.trace import Trace

__all__ = ["OOM", "Result", "ServingStats", "check_plan", "diagnose", "simulate", "write_timeline"]


def check_plan(system: System, trace: Trace, plan: Plan, file: str = "plan") -> None:
    """Refuse a plan for another workload or one that names tiers this system lacks (exit 2)."""
    if plan.fingerprint and plan.fingerprint != trace_fingerprint(trace):
        raise SpecError(f"this plan was made for {plan.workload or 'another workload'!r} "
                        f"(fingerprint {plan.fingerprint}), not {trace.name!r} "
                        f"({trace_fingerprint(trace)}); re-plan for this workload",
                        file=file, key="fingerprint")
    plan.check(set(system.tiers), file=file)
    plan.check_layers(int(trace.meta.get("layers") or max((b.repeat for b in trace.blocks), default=1)),
                      file=file)


def simulate(system: System, trace: Trace, plan: Plan | None = None, *,
             timeline: bool = False, fold: bool | None = None) -> Result:
    """Run one step (training, inference) or the whole request trace (serving) event by event.

    ``fold``: simulate a few of a step's identical layers and advance by whole periods
    (``memsim.sim.fold``; the default follows ``MEMSIM_FOLD``, on unless it is 0). A simulation
    already run in this process is not run again (``memsim.sim.memo``; ``MEMSIM_SIM_CACHE=0``)."""
    wall = time.perf_counter()
    plan = plan if plan is not None else Plan()
    if trace.meta.get("batch_size_auto"):
        raise SpecError("inference.batch_size is auto: memsim plan chooses it; simulate a batch with "
                        "--set inference.batch_size=N (the plan's gpu_batch_size × num_gpu_batches)",
                        key="inference.batch_size")
    view = system.rank_view(int(trace.meta.get("data_parallel", 1) or 1))
    check_plan(view, trace, plan)
    if not plan.pinned:
        from memsim.sim.hostmem import pageable_view

        view = pageable_view(view)
    from memsim.sim import fold as folding
    from memsim.sim import memo

    folded = folding.enabled(fold)
    cached = memo.enabled() and not timeline
    if cached:  # a simulation already run is not run again (memsim/sim/memo.py)
        key, loose = memo.keys(view, trace, plan, folded)
        hit = memo.lookup(view, trace, plan, key, loose)
        if hit is not None:
            hit.wall_s = time.perf_counter() - wall
            return hit
    if trace.kind == "serving" and trace.meta.get("disaggregated"):
        from memsim.sim.disaggregated import simulate_disaggregated

        result = simulate_disaggregated(view, trace, plan, timeline=timeline)
    elif trace.kind == "serving":
        from memsim.sim.serving import simulate_serving

        result = simulate_serving(view, trace, plan, timeline=timeline)
    elif runs_here(trace, system):
        result = simulate_parallel(system, trace, plan, timeline)
    else:
        result = folding.simulate_folded(view, trace, plan) if folded and not timeline else None
        if result is None:
            from memsim.sim.engine import StepEngine
            from memsim.sim.program import build_program

            program = build_program(trace, view, plan)
            result = StepEngine(view, program, plan.prefetch_depth, timeline, trace.meta).run()
        result.parallel = single_rank_block(result, trace, view)
    if cached:
        memo.store(view, plan, key, loose, result)
    result.wall_s = time.perf_counter() - wall  # the whole simulation, program building included
    return result
