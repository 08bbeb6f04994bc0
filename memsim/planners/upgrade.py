"""The cheapest hardware that reaches a throughput target: the MIP with cost as its objective.

The same slack variables that explain an infeasible case become purchases: every tier may grow
by ``s_t`` GiB at ``SLACK_PRICE[kind]`` per GB, the step time is bounded by the target, and the
search minimises the bill. The result names what to add and the upgraded System, on which the
ordinary MIP then plans (and the simulator checks) — see ``report.plan`` with a preset whose
options set ``target_tokens_per_s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from memsim.errors import Diagnosis, Infeasible
from memsim.hardware.spec import System
from memsim.planners import mip
from memsim.planners.lp import SLACK_PRICE
from memsim.planners.space import build_space
from memsim.units import fmt_bytes
from memsim.workloads.trace import Trace

GIB = 2**30


@dataclass
class Upgrade:
    """What to add to each tier (bytes, per node), its price, and the System with it added."""

    target_tokens_per_s: float
    add_bytes: dict[str, int]
    cost_usd: float
    estimate_s: float
    system: System
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"target_tokens_per_s": self.target_tokens_per_s, "add_bytes": dict(self.add_bytes),
                "cost_usd": round(self.cost_usd, 2), "estimate_s": self.estimate_s, "notes": list(self.notes),
                "capacity_bytes": {t: tier.capacity for t, tier in self.system.tiers.items()}}


def cheapest_upgrade(system: System, trace: Trace, target_tokens_per_s: float, options: dict | None = None,
                     time_limit: float = 10.0) -> Upgrade:
    """Minimum-cost tier growth so the MIP's estimate reaches ``target_tokens_per_s``.

    Raises ``Infeasible`` when no amount of memory reaches the target (compute- or link-bound)."""
    tokens = float(trace.meta.get("tokens_per_step") or 0)
    if tokens <= 0 or target_tokens_per_s <= 0:
        raise ValueError("a throughput target needs tokens_per_step in the trace and a positive target")
    view = mip.planning_view(system, trace)
    space = build_space(view, dict(options or {}))
    space.max_step = tokens / target_tokens_per_s
    found = mip.search(system, trace, options, time_limit, slack=True, space=space)
    if found.best is None or found.best.slack is None:
        unlimited = build_space(view, dict(options or {}))
        unlimited.caps = dict.fromkeys(unlimited.caps, 10**18)
        fastest = mip.search(system, trace, options, time_limit, space=unlimited)
        best = tokens / fastest.best.estimate_s if fastest.best else 0.0
        raise Infeasible(Diagnosis(
            f"{trace.name} cannot reach {target_tokens_per_s:g} tokens/s on {system.name} by adding memory: "
            f"the planner's best estimate with unlimited tiers is {best:.4g} tokens/s"))
    ranks = _ranks(system, trace)  # a shared host tier grows for every rank on the node
    add = {t: _round_up(s) * (1 if system.tiers[t].is_per_device else ranks)
           for t, s in sorted(found.best.slack.items()) if s > 1.0}
    cost = sum(SLACK_PRICE.get(system.tiers[t].kind, 1.0) * b / 1e9 for t, b in add.items())
    data = system.model_dump()
    for tier, extra in add.items():
        data["tiers"][tier]["capacity"] = system.tiers[tier].capacity + extra
    upgraded = System.model_validate(data)
    notes = [f"add {fmt_bytes(b)} to {t}" for t, b in add.items()] or ["no upgrade needed"]
    return Upgrade(target_tokens_per_s, add, cost, found.best.estimate_s, upgraded, notes)


def _ranks(system: System, trace: Trace) -> int:
    """Host tiers are shared by the node's data-parallel ranks: a per-rank need × ranks."""
    gpu = system.gpu
    return min(int(trace.meta.get("data_parallel") or 1), gpu.count) if gpu else 1


def _round_up(nbytes: float) -> int:
    return max(GIB, math.ceil(nbytes / GIB) * GIB)
