"""``memsim simulate`` as an API call: load the case by name, get a plan, simulate, report."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from memsim.contracts.plan import Plan
from memsim.contracts.result import Result
from memsim.contracts.simulator import Simulator
from memsim.errors import Infeasible
from memsim.sim import check_plan, diagnose, simulate, write_timeline
from memsim.sim.kv_pool_fit import kv_pool_diagnosis
from memsim.sim.parallel import runs_here, simulate_parallel

if TYPE_CHECKING:
    from memsim.contracts.report import PlanReport
    from memsim.hardware.spec import System
    from memsim.planners.report import Progress
    from memsim.workloads.trace import Trace

# the simulator as the planners see it: they score plans through it and never import memsim.sim
SIMULATOR = Simulator(simulate=simulate, simulate_parallel=simulate_parallel, runs_parallel=runs_here,
                      kv_pool_diagnosis=kv_pool_diagnosis)


def simulate_case(hardware: str, workload: str, *, plan_path: str | None = None,
                  planner: str | None = None, overrides: Iterable[str] = (),
                  timeline_path: str | None = None) -> tuple[Result, dict]:
    """Simulate a catalog (or file) case; returns the Result and the ``--json`` document.

    Raises ``SpecError`` for bad input (a plan for another workload, unknown tiers) and
    ``Infeasible`` (carrying the document as ``payload``) when a tier overflows.
    """
    from memsim.hardware import load_system
    from memsim.headline import job
    from memsim.workloads import load_trace

    overrides = list(overrides)
    system = load_system(hardware, overrides)
    trace = load_trace(workload, overrides)
    if planner is not None:
        plan = plan_case(hardware, trace, planner, overrides).plan
    elif plan_path is not None:
        from memsim.emit import load_plan  # memsim's own plan or a framework config

        plan = load_plan(plan_path, system, trace)
        check_plan(system, trace, plan, file=plan_path)
    else:
        plan = None
    result = simulate(system, trace, plan, timeline=timeline_path is not None)
    if timeline_path is not None:
        write_timeline(result.timeline or [], timeline_path)
    doc = result_document(result, plan)
    doc.update(hardware=system.name, workload=trace.name, kind=trace.kind, job=job(trace, system))
    if timeline_path is not None:
        doc["timeline"] = timeline_path
    if not result.feasible:
        exc = Infeasible(diagnose(result, plannable=not _forward_only(trace)))
        exc.payload = {k: v for k, v in doc.items() if k != "feasible"}
        raise exc
    return result, doc


def plan_case(
    hardware,
    workload,
    planner: str = "mip",
    overrides: Iterable[str] = (),
    time_limit: float = 10.0,
    progress: Progress | None = None,
) -> PlanReport:
    """Load by name or path (``--set`` strings; ``hardware.`` ones go to the system) and plan."""
    from memsim.hardware import load_system
    from memsim.workloads import load_trace

    overrides = list(overrides)
    system = load_system(hardware, overrides)
    trace = load_trace(workload, overrides)
    report = plan(system, trace, planner, time_limit=time_limit, progress=progress,
                  rebuild=lambda extra: load_trace(workload, [*overrides, *extra]))
    if trace.meta.get("slo"):  # serving.slo: size the deployment (GPUs, DRAM cache) against it
        from memsim.planners.slo import candidates

        report.slo = candidates(system, trace, progress or (lambda _: None), simulate=simulate)
    return report


def plan(system: System, trace: Trace, planner: str = "mip", **options) -> PlanReport:
    """``memsim.planners.report.plan`` scored by the simulator: the MIP (or the preset) plans,
    its plan and every baseline are simulated, the report shows them side by side. ``options``:
    ``time_limit``, ``baselines``, ``progress``, ``rebuild`` (see that function)."""
    from memsim.planners.report import plan as plan_with

    return plan_with(system, trace, planner, simulator=SIMULATOR, **options)


def result_document(result: Result, plan: Plan | None) -> dict:
    """The stable ``simulate --json`` keys (DESIGN.md) plus the Result's own fields."""
    doc = result.to_dict()
    if plan is None:
        doc["planner"] = {"name": "resident", "status": "given", "gap": None, "solve_s": None}
    else:
        info = plan.planner
        doc["planner"] = {"name": info.name, "status": info.status, "gap": info.gap,
                          "solve_s": info.solve_s, "estimate_s": info.estimate_s}
    doc["baselines"] = []
    doc["source"] = "simulated"
    return doc


def _forward_only(trace) -> bool:
    """A traced module without a backward block: nothing for a planner to decide (planners/traced.py)."""
    return trace.kind == "module" and "stages" not in trace.meta
