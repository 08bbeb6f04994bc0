"""Solving a pulp model with HiGHS (CBC as fallback) and reading back status, gap and time."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pulp


@dataclass
class SolveInfo:
    status: str  # optimal | feasible | time_limit | infeasible | error
    objective: float | None
    gap: float | None
    solve_s: float
    solver: str

    @property
    def ok(self) -> bool:
        return self.status in ("optimal", "feasible")


@contextmanager
def _stdout_silenced() -> Iterator[None]:
    """Point file descriptor 1 at /dev/null: HiGHS's C++ constructor prints its banner there
    before any option (``output_flag``) can be set, and ``--json`` owns stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class _QuietHiGHS(pulp.HiGHS):
    """pulp's HiGHS interface with the model built silently (``msg=False`` alone is too late)."""

    def createAndConfigureSolver(self, lp):  # pulp's method name
        with _stdout_silenced():
            super().createAndConfigureSolver(lp)


def _highs(time_limit: float, gap: float) -> pulp.LpSolver | None:
    try:
        solver = _QuietHiGHS(msg=False, timeLimit=max(time_limit, 0.01), gapRel=gap, threads=1)
        return solver if solver.available() else None
    except Exception:  # pulp raises a bare error when highspy is missing
        return None


def solve(prob: pulp.LpProblem, time_limit: float = 10.0, gap: float = 1e-4) -> SolveInfo:
    """Solve in place. ``time_limit`` is honoured by the solver; the gap is HiGHS's own."""
    start = time.perf_counter()
    solver = _highs(time_limit, gap)
    name = "highs"
    if solver is None:
        solver, name = pulp.PULP_CBC_CMD(msg=False, timeLimit=max(1, int(time_limit)), gapRel=gap), "cbc"
    try:
        prob.solve(solver)
    except pulp.PulpSolverError:
        return SolveInfo("error", None, None, time.perf_counter() - start, name)
    seconds = time.perf_counter() - start
    return _read_status(prob, name, seconds)


def _read_status(prob: pulp.LpProblem, name: str, seconds: float) -> SolveInfo:
    objective = pulp.value(prob.objective)
    if name == "highs" and getattr(prob, "solverModel", None) is not None:
        import highspy

        model = prob.solverModel
        status = model.getModelStatus()
        info = model.getInfo()
        has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
        is_mip = any(v.cat == pulp.LpInteger for v in prob.variables())
        gap = float(info.mip_gap) if is_mip and has_solution else (0.0 if has_solution else None)
        if status == highspy.HighsModelStatus.kOptimal:
            return SolveInfo("optimal", objective, gap if is_mip else 0.0, seconds, name)
        if has_solution:
            return SolveInfo("feasible", objective, gap, seconds, name)
        if status in (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kUnboundedOrInfeasible):
            return SolveInfo("infeasible", None, None, seconds, name)
        if status == highspy.HighsModelStatus.kTimeLimit:
            return SolveInfo("time_limit", None, None, seconds, name)
        return SolveInfo("error", None, None, seconds, name)
    status = pulp.LpStatus[prob.status]
    if status == "Optimal":
        return SolveInfo(
            "optimal" if prob.sol_status == pulp.LpSolutionOptimal else "feasible",
            objective,
            0.0 if prob.sol_status == pulp.LpSolutionOptimal else None,
            seconds,
            name,
        )
    return SolveInfo("infeasible" if status == "Infeasible" else "error", None, None, seconds, name)


def value(var) -> float:
    v = pulp.value(var)
    return float(v) if v is not None else 0.0
