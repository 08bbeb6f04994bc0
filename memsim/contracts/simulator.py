"""What a planner may ask of the simulator, as values handed to it (never an import).

Planners score candidates by simulating them, but ``memsim.planners`` must not import
``memsim.sim``: the stages meet only through contracts. ``memsim.api`` (orchestration) builds a
``Simulator`` from the simulator's entry points and passes it to the planners that score plans
(``planners/report.py``, ``layouts.py``, ``diagnose.py``, ``slo.py``); a test can pass its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from memsim.contracts.plan import Plan
    from memsim.contracts.result import Result
    from memsim.errors import Diagnosis
    from memsim.hardware.spec import System
    from memsim.workloads.trace import Trace


class Simulate(Protocol):
    def __call__(self, system: System, trace: Trace, plan: Plan | None = None) -> Result: ...


@dataclass(frozen=True)
class Simulator:
    """The simulator's entry points a planner uses.

    ``simulate``: one step (or a serving run) of a plan, the Result users see;
    ``simulate_parallel``: one training step under a parallel layout (``trace.meta["parallel"]``);
    ``runs_parallel(trace, system)``: whether ``simulate`` hands this trace to the parallel one
    (a layout beyond data parallelism, or ranks across nodes); ``kv_pool_diagnosis(result)``: why
    a serving run left requests unserved (None when it served all)."""

    simulate: Simulate
    simulate_parallel: Callable[[System, Trace, Plan], Result]
    runs_parallel: Callable[[Trace, System], bool]
    kv_pool_diagnosis: Callable[[Result], Diagnosis | None]

    def score(self, system: System, trace: Trace) -> Callable[[Plan], Result]:
        """``score(plan) -> Result`` for one case."""
        return lambda plan: self.simulate(system, trace, plan)
