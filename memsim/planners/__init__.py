"""Planners: the MIP, the baselines users know, and the report that simulates them side by side.

Public API: ``plan(system, trace, planner="mip", *, simulator, ...) -> PlanReport``, scored by
the ``Simulator`` it is given (``memsim.api.plan`` gives it the simulator's; by case name:
``memsim.api.plan_case``); ``REGISTRY`` maps planner kinds to ``callable(system, trace, options) ->
Plan``; named presets live in ``planners/*.yaml``. See docs/planner.md for the formulation.
Planners never import ``memsim.sim`` (tests/test_stage_imports.py).
"""

from memsim.contracts.plan import Plan, PlannerInfo, ServingPolicy, trace_fingerprint
from memsim.planners.registry import REGISTRY, Preset, list_presets, load_preset, run_preset
from memsim.planners.report import PlanReport, plan

__all__ = [
    "REGISTRY",
    "Plan",
    "PlanReport",
    "PlannerInfo",
    "Preset",
    "ServingPolicy",
    "list_presets",
    "load_preset",
    "plan",
    "run_preset",
    "trace_fingerprint",
]
