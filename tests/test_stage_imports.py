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
    stages = ("memsim.sim", "memsim.planners", "memsim.workloads", "memsim.hardware", "pulp", "highspy",
              "simpy")
    modules = ("memsim.contracts.plan, memsim.contracts.result, memsim.contracts.names, "
               "memsim.contracts.spec, memsim.contracts.report, memsim.contracts.simulator")
    assert _loaded_after(f"import {modules}", stages) == []


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


def test_no_planner_module_imports_the_simulator() -> None:
    """Planners score plans through the ``Simulator`` memsim/api.py hands them (contracts/
    simulator.py); an import of memsim.sim anywhere in a planner, lazy ones too, is a violation."""
    from pathlib import Path

    planners = Path(__file__).resolve().parent.parent / "memsim" / "planners"
    offenders = {p.name: sorted(m for m in _imports(p) if m == "memsim.sim" or m.startswith("memsim.sim."))
                 for p in sorted(planners.glob("*.py"))}
    assert len(offenders) > 10 and {k: v for k, v in offenders.items() if v} == {}


def test_the_boundary_check_sees_a_simulator_import(tmp_path) -> None:  # the probe itself can fail
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from memsim.sim.parallel import runs_here\n\nimport memsim.sim\n")
    assert {"memsim.sim", "memsim.sim.parallel"} <= _imports(probe)


def _imports(path) -> set[str]:
    """Every memsim module ``path`` imports, at the top or inside a function."""
    import ast

    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_the_reproduce_modules_form_no_import_cycle() -> None:
    """reproduce_spec (types) <- kinds <- reproduce_kinds (dispatch) <- reproduce (runner)."""
    from graphlib import CycleError, TopologicalSorter
    from pathlib import Path

    studies = Path(__file__).resolve().parent.parent / "memsim" / "studies"
    mods = {p.stem: p for p in studies.glob("reproduce*.py")}
    graph = {name: {m.rsplit(".", 1)[-1] for m in _imports(path)
                    if m.startswith("memsim.studies.") and m.rsplit(".", 1)[-1] in mods} - {name}
             for name, path in mods.items()}
    assert {"reproduce", "reproduce_kinds", "reproduce_spec"} <= set(graph)
    assert graph["reproduce_spec"] == set() and "reproduce_kinds" in graph["reproduce"]
    try:
        tuple(TopologicalSorter(graph).static_order())  # a generator: the cycle shows when run
        cycle = None
    except CycleError as exc:
        cycle = exc.args[1]
    assert cycle is None
