"""What ``memsim plan`` returns: a plan, its simulated Result, and the baselines beside it.

A contract between the planners that build it (``planners/report.py``, ``layouts.py``), the
orchestration that returns it (``memsim.api.plan``) and the CLI that renders it (``to_dict`` is
the ``plan --json`` document).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from memsim.contracts.plan import Plan
from memsim.headline import job
from memsim.units import fmt_bytes

if TYPE_CHECKING:
    from memsim.hardware.spec import System
    from memsim.planners.upgrade import Upgrade
    from memsim.workloads.trace import Trace


@dataclass
class Evaluated:
    name: str
    plan: Plan | None
    result: object | None  # memsim.contracts.result.Result
    note: str = ""
    label: str = ""  # the search structure the plan came from (search kinds only)

    @property
    def feasible(self) -> bool:
        return self.result is not None and bool(self.result.feasible)

    @property
    def step_time_s(self) -> float | None:
        return self.result.step_time_s if self.feasible else None

    @property
    def tokens_per_s(self) -> float | None:
        return self.result.tokens_per_s if self.feasible else None

    def to_dict(self) -> dict:
        r = self.result
        return {
            "name": self.name,
            "feasible": self.feasible,
            "step_time_s": self.step_time_s,
            "tokens_per_s": r.tokens_per_s if self.feasible else None,
            "note": self.note or (infeasible_note(r) if r is not None and not self.feasible else ""),
        }


@dataclass
class PlanReport:
    """A plan, its simulated Result, and every baseline simulated on the same case."""

    system: System
    trace: Trace
    plan: Plan
    result: object  # Result
    baselines: list[Evaluated] = field(default_factory=list)
    upgrade: Upgrade | None = None  # when the preset asked for the cheapest hardware for a target
    fallback: dict | None = None  # the planner's own plan, when a baseline is returned instead
    slo: list[dict] | None = None  # serving.slo: deployments simulated, best first (planners/slo.py)
    batch_search: dict | None = None  # inference.batch_size auto: memsim/planners/batch.py

    @property
    def feasible(self) -> bool:
        return bool(self.result.feasible)

    def to_dict(self) -> dict:
        """The ``memsim plan --json`` document."""
        r, info = self.result, self.plan.planner
        doc = {
            "feasible": bool(r.feasible),
            "source": "simulated",
            "hardware": self.system.name,
            "workload": self.trace.name,
            "kind": self.trace.kind,
            "job": job(self.trace, self.system),
            "layers": int(self.trace.meta.get("layers") or max(b.repeat for b in self.trace.blocks)),
            "step_time_s": r.step_time_s,
            "tokens_per_s": r.tokens_per_s,
            "mfu": r.mfu,
            "peak_bytes": dict(r.peak_bytes),
            "capacity_bytes": dict(r.capacity_bytes),
            "reserved_bytes": {t: dict(lines) for t, lines in r.reserved_bytes.items()},
            "breakdown": dict(r.breakdown),
            "link_busy": dict(r.link_busy),
            "serving": _serving(r),
            "parallel": getattr(r, "parallel", None),
            "oom": r.oom.to_dict() if r.oom else None,
            "planner": {
                "name": info.name,
                "status": info.status,
                "objective": info.objective,
                "gap": info.gap,
                "solve_s": info.solve_s,
                "estimate_s": info.estimate_s,
            },
            "baselines": [b.to_dict() for b in self.baselines],
            "upgrade": self.upgrade.to_dict() if self.upgrade else None,
            "fallback": self.fallback,
            "plan": self.plan.to_dict(),
            "notes": [*self.trace.meta.get("workload_notes", []), *self.plan.notes],
            **({"slo": self.slo} if self.slo is not None else {}),
        }
        if self.batch_search is not None:  # only then: every other document stays as it was
            doc["batch_search"] = self.batch_search
        return doc


def infeasible_note(result) -> str:
    """Each overflowing tier's full demand (the simulator keeps running past the first OOM)."""
    over = [f"{t} needs {fmt_bytes(p)} of {fmt_bytes(result.capacity_bytes[t])}"
            for t, p in sorted(result.peak_bytes.items())
            if t in result.capacity_bytes and p > result.capacity_bytes[t]]
    if over:
        return "; ".join(over)
    oom = getattr(result, "oom", None)
    return f"{oom.tier} short by {fmt_bytes(oom.short_bytes)}" if oom else "does not fit"


def _serving(result) -> dict | None:
    s = getattr(result, "serving", None)
    if s is None:
        return None
    return s.__dict__ if not hasattr(s, "to_dict") else s.to_dict()
