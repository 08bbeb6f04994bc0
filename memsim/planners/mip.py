"""The MIP planner: enumerate the few discrete structures, solve a small MIP/LP for each, keep
the best. Structures are what FlexGen also enumerates outside its LP (GPU batch split, CPU
attention) plus the optimizer device and the activation tier for training; inside, the
fractions per tier and the integer counts of kept / offloaded / recomputed layers.

``search`` returns the best candidate and the solver statistics summed over all structures;
``mip`` and ``flexgen`` (its inference search restricted to FlexGen's GPU/CPU/disk space) are the
registry entries.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from memsim.contracts.plan import Plan, PlannerInfo
from memsim.hardware.spec import System
from memsim.planners import inference, serving, traced, training
from memsim.planners.lp import Candidate
from memsim.planners.profile import Profile, build_profile
from memsim.planners.space import Space, build_space
from memsim.workloads.trace import Trace


@dataclass
class Search:
    best: Candidate | None
    candidates: list[tuple[str, Candidate]]
    status: str
    gap: float | None
    solve_s: float
    profile: Profile
    space: Space


def planning_view(system: System, trace: Trace) -> System:
    """What one data-parallel rank sees (the simulator plans on the same view)."""
    return system.rank_view(int(trace.meta.get("data_parallel") or 1))


def search(
    system: System,
    trace: Trace,
    options: dict | None = None,
    time_limit: float = 10.0,
    slack: bool | set[str] = False,
    act_scale: float = 1.0,
    space: Space | None = None,
    only: str | None = None,
) -> Search:
    """Solve every structure (or only the one labelled ``only``) and keep the best estimate."""
    view = planning_view(system, trace)
    space = space or build_space(view, options or {}, meta=trace.meta)
    prof = build_profile(view, trace)
    start = time.perf_counter()
    jobs = [(lb, job) for lb, job in _jobs(view, trace, prof, space, slack, act_scale) if only in (None, lb)]
    results: list[tuple[str, Candidate]] = []
    for label, job in jobs:
        left = max(0.05, time_limit - (time.perf_counter() - start))
        results.append((label, job(left)))
    solve_s = time.perf_counter() - start
    solved = [(lb, c) for lb, c in results if c.plan is not None]
    key = (
        (lambda lc: (lc[1].info.objective, lc[1].estimate_s)) if slack else (lambda lc: lc[1].estimate_s)
    )
    best = min(solved, key=key)[1] if solved else None
    statuses = {c.info.status for _, c in results}
    if best is None:
        status = "time_limit" if "time_limit" in statuses else "infeasible"
    elif statuses <= {"optimal", "infeasible"}:
        status = "optimal"
    else:
        status = "feasible"
    gap = best.info.gap if best else None
    return Search(best, results, status, gap, solve_s, prof, space)


def _jobs(view: System, trace: Trace, prof: Profile, space: Space, slack: bool, act_scale: float):
    if trace.kind == "training":
        return [
            (
                f"optimizer={dev} activations→{at or 'none'}",
                lambda left, dev=dev, at=at: training.solve_training(
                    view, prof, space, dev, at, left, slack, act_scale
                ),
            )
            for dev, at in training.structures(view, space)
        ]
    if trace.kind == "inference":
        return [
            (
                f"gpu_batches={nb} cpu_attention={ca}",
                lambda left, nb=nb, ca=ca: inference.solve_inference(
                    view, trace, prof, space, nb, ca, left, slack
                ),
            )
            for nb, ca in inference.structures(view, trace, prof, space)
        ]
    if trace.kind == "module":
        return traced.jobs(view, trace, space, slack, act_scale)
    if trace.kind == "serving":
        return [
            (
                f"max_num_seqs={n}",
                lambda left, n=n: serving.solve_serving(view, trace, prof, space, n, left, slack),
            )
            for n in space.max_num_seqs
        ]
    return []


def run(name: str, system: System, trace: Trace, options: dict, time_limit: float) -> Plan:
    """A registry entry: the best plan of the search, its PlannerInfo filled in."""
    found = search(system, trace, options, time_limit)
    return finish(name, found, found.best, found.solve_s)


def finish(name: str, found: Search, chosen: Candidate | None, solve_s: float) -> Plan:
    """``chosen``'s plan with the search's PlannerInfo (status, gap, solve time, estimate)."""
    if chosen is None or chosen.plan is None:
        plan = Plan(planner=PlannerInfo(name=name, status=found.status, solve_s=round(solve_s, 6)))
        plan.notes.append("no structure of the search fits: see the diagnosis")
        return plan
    plan = copy.deepcopy(chosen.plan)
    plan.planner = PlannerInfo(name=name, status=found.status, objective=chosen.estimate_s,
                               gap=chosen.info.gap, solve_s=round(solve_s, 6), estimate_s=chosen.estimate_s)
    tried = len(found.candidates)
    solved = sum(c.plan is not None for _, c in found.candidates)
    plan.notes.append(f"{name}: {solved} of {tried} structures fit; solver {chosen.info.solver}")
    return plan


def search_options(kind: str, options: dict) -> dict:
    """The options a search-kind preset runs with (FlexGen's space under its own)."""
    return {**FLEXGEN_SPACE, **options} if kind == "flexgen" else dict(options)


def mip(system: System, trace: Trace, options: dict, time_limit: float = 10.0) -> Plan:
    return run("mip", system, trace, options, time_limit)


FLEXGEN_SPACE = {
    "tiers": {
        "weight": ["hbm", "dram", "ssd"],
        "kv": ["hbm", "dram", "ssd"],
        "activation": ["hbm", "dram", "ssd"],
    },
    "prefetch_depth": 1,
}


def flexgen(system: System, trace: Trace, options: dict, time_limit: float = 10.0) -> Plan:
    """FlexGen's policy search: its LP over GPU/CPU/disk percentages for every batch split."""
    if trace.kind != "inference":
        raise NotApplicable("FlexGen's policy search is for offloaded inference")
    return run("flexgen", system, trace, search_options("flexgen", options), time_limit)


class NotApplicable(Exception):
    """A baseline that does not apply to this workload kind (it is skipped, not infeasible)."""
