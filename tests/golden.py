"""The golden set: full ``simulate --json`` / ``plan --json`` documents of a few cases, kept in
``tests/golden/`` so a faster simulator can be checked to report the same figures.

    python tests/golden.py --write [NAME ...]   # regenerate, unfolded (for an intended change)
    python tests/golden.py [NAME ...]           # compare, print the differences

Volatile keys (wall and solve times, the simpy event count, which folding changes) are dropped.
Floats compare within ``REL`` relative: folding a repeated schedule sums the same periods in
another order, which may move the last bits; everything else compares exactly.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
VOLATILE = frozenset({"wall_s", "solve_s", "events", "timing"})
REL = 1e-9


def cases() -> list[dict]:
    from memsim.specio import read_yaml

    return read_yaml(GOLDEN / "cases.yaml")


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in sorted(value.items()) if k not in VOLATILE}
    if isinstance(value, list | tuple):
        return [_strip(v) for v in value]
    return value


def document(case: dict) -> dict:
    """The case's JSON document as the CLI prints it (an infeasible case: its error payload)."""
    from memsim.errors import Infeasible

    sets = list(case.get("set", []))
    hw, wl = case["hardware"], case["workload"]
    wl = str(ROOT / wl) if wl.endswith(".yaml") else wl
    try:
        if case["command"] == "plan":
            from memsim.api import plan_case

            planner = case["planner"]
            planner = str(ROOT / planner) if planner.endswith(".yaml") else planner
            doc = plan_case(hw, wl, planner, sets, float(case.get("time_limit", 10.0))).to_dict()
        else:
            from memsim.api import simulate_case

            with tempfile.TemporaryDirectory() as tmp:
                path = None
                if "plan" in case:
                    path = str(Path(tmp) / "plan.json")
                    Path(path).write_text(json.dumps(case["plan"]))
                _, doc = simulate_case(hw, wl, plan_path=path, planner=case.get("planner"),
                                       overrides=sets)
    except Infeasible as exc:
        doc = {"feasible": False, "error": str(exc), **(getattr(exc, "payload", None) or {})}
    return json.loads(json.dumps(_strip(doc), sort_keys=True, default=str))


def differences(want, got, path: str = "") -> list[str]:
    """Where ``got`` differs from ``want``: exact, except floats within ``REL`` relative."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{path}.{k}: only in {'golden' if k in want else 'new'}"
               for k in sorted(set(want) ^ set(got))]
        for k in sorted(set(want) & set(got)):
            out += differences(want[k], got[k], f"{path}.{k}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{path}: {len(want)} items, now {len(got)}"]
        return [d for i, (a, b) in enumerate(zip(want, got, strict=True))
                for d in differences(a, b, f"{path}[{i}]")]
    if (isinstance(want, float) or isinstance(got, float)) and not isinstance(want, bool) \
            and isinstance(want, int | float) and isinstance(got, int | float):
        if math.isclose(want, got, rel_tol=REL, abs_tol=1e-300) or want == got:
            return []
        return [f"{path}: {want!r} -> {got!r} (rel {abs(got - want) / max(abs(want), 1e-300):.2e})"]
    return [] if want == got else [f"{path}: {want!r} -> {got!r}"]


def main(argv: list[str]) -> int:
    import os

    write = "--write" in argv
    if write:  # the golden figures are the unfolded simulator's (memsim/sim/fold.py)
        os.environ["MEMSIM_FOLD"] = "0"
    names = [a for a in argv if not a.startswith("-")]
    bad = 0
    for case in cases():
        if names and case["name"] not in names:
            continue
        doc = document(case)
        path = GOLDEN / f"{case['name']}.json"
        if write:
            path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
            print(f"wrote {path.relative_to(ROOT)}")
            continue
        diffs = differences(json.loads(path.read_text()), doc)
        bad += bool(diffs)
        print(f"{case['name']}: {'same' if not diffs else f'{len(diffs)} differences'}")
        for d in diffs[:20]:
            print("   ", d)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
