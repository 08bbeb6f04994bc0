"""Pieces the three MIP models (training, inference, serving) share: the solved candidate,
capacity rows in GiB, slack for diagnosis runs, and tidy fractions for the plan."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pulp

from memsim.contracts.plan import Plan
from memsim.hardware.spec import System
from memsim.kinds import tier_kinds
from memsim.planners.solver import SolveInfo


@dataclass
class Candidate:
    """One solved structure: the plan it decodes to, its estimate and the solver's report."""

    plan: Plan | None
    estimate_s: float
    info: SolveInfo
    slack: dict[str, float] | None = None  # bytes each tier fell short by (diagnosis runs)


GIB = 2.0**30


def cap_constraint(prob: pulp.LpProblem, cap: float, expr, slack=None, name: str = "") -> None:
    """``expr ≤ cap`` (+ ``slack`` GiB in a diagnosis run), written in GiB so the solver sees
    coefficients near 1 rather than 1e11 (HiGHS loses precision on badly scaled rows)."""
    lhs = expr * (1.0 / GIB)
    prob += (lhs <= cap / GIB + slack) if slack is not None else (lhs <= cap / GIB), name


# Relative price of a GB added to a tier of each kind, so a diagnosis grows the cheapest tiers
# first (the figures and their sources: hardware/kinds/tiers.yaml, slack_price).
SLACK_PRICE = {k: v.slack_price for k, v in tier_kinds().items()}


def slack_price(system: System, tier: str) -> float:
    return SLACK_PRICE.get(system.tiers[tier].kind, 1.0)


def slack_tiers(system: System, slack: bool | set[str]) -> list[str]:
    """Tiers whose capacity may be exceeded (at a cost) in a diagnosis run."""
    if slack is True:
        return list(system.tiers)
    return [t for t in system.tiers if t in (slack or ())]


def normalise(split: dict[str, float]) -> dict[str, float]:
    """Fractions rounded to 1e-6 that sum to exactly 1 (the largest absorbs the rounding)."""
    total = sum(split.values())
    out = {t: round(v / total, 6) for t, v in split.items()}
    out = {t: v for t, v in out.items() if v > 0}
    last = max(out, key=lambda t: (out[t], t))
    out[last] = round(1.0 - sum(v for t, v in out.items() if t != last), 6)
    return dict(sorted(out.items()))


@functools.cache
def safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)
