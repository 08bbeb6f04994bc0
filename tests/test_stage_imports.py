"""The stages meet only through memsim/contracts: importing the simulator loads no planner and
no MIP solver (a fresh interpreter, so modules other tests imported do not hide a regression)."""

from __future__ import annotations

import os
import subprocess
import sys


def _loaded_after(statement: str, modules: tuple[str, ...]) -> list[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=os.environ.copy())
    return out.stdout.split()


def test_importing_the_simulator_loads_no_planner_or_solver() -> None:
    assert _loaded_after("import memsim.sim", ("pulp", "highspy", "memsim.planners")) == []


def test_importing_the_contracts_loads_no_stage() -> None:
    stages = ("memsim.sim", "memsim.planners", "memsim.workloads", "pulp", "highspy", "simpy")
    assert _loaded_after("import memsim.contracts.plan, memsim.contracts.result", stages) == []


def test_the_check_sees_a_loaded_module() -> None:  # the probe itself can fail
    assert _loaded_after("import json", ("json",)) == ["json"]


def test_no_simulator_module_imports_a_planner() -> None:
    """Lazy imports too: composing planner and simulator is memsim/api.py's job."""
    import re
    from pathlib import Path

    sim = Path(__file__).resolve().parent.parent / "memsim" / "sim"
    pattern = re.compile(r"^\s*(from|import)\s+memsim\.planners\b", re.M)
    offenders = [p.name for p in sorted(sim.glob("*.py")) if pattern.search(p.read_text())]
    assert len(list(sim.glob("*.py"))) > 10 and offenders == []
