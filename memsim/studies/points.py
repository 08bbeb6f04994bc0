"""One point of a study: its content hash, and running it in a worker process.

The point functions are registered by name so a study picks one with ``run: plan|simulate``:

* ``plan`` — ``memsim.api.plan_case``: the planner searches, the simulator scores its plan
  and the baselines (what ``memsim plan --json`` prints).
* ``simulate`` — load the workload and simulate it with every byte resident on the compute tier
  (what ``memsim simulate`` prints without a plan): the cheap "does it fit, how fast" question.

A point never raises: ``Infeasible`` becomes status ``infeasible`` with the diagnosis,
``SpecError`` becomes ``bad_input`` with the message, anything else ``error`` with where it
happened, and the study goes on. Run times (``solve_s``, ``wall_s``) are split off the result so
the stored point is byte-identical from run to run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memsim.errors import Infeasible, SpecError
from memsim.specio import catalog_dir, load_mapping, resolve
from memsim.units import fmt_bytes

VOLATILE = ("solve_s", "wall_s")  # run times: kept in run.json, never in a point's result
PointFn = Callable[[dict], dict]


def _plan_point(inputs: dict) -> dict:
    from memsim.api import plan_case

    report = plan_case(inputs["hardware"], inputs["workload"], inputs["planner"],
                       list(inputs["overrides"]), inputs["time_limit"])
    return report.to_dict() if hasattr(report, "to_dict") else dict(report)


def _simulate_point(inputs: dict) -> dict:
    from memsim.api import simulate_case

    return simulate_case(inputs["hardware"], inputs["workload"], planner=inputs["planner"],
                         overrides=list(inputs["overrides"]))[1]


POINT_FUNCTIONS: dict[str, PointFn] = {"plan": _plan_point, "simulate": _simulate_point}


# -- content hash ---------------------------------------------------------------------------------


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _referenced_files(mapping: Any, folder: Path) -> dict[str, str]:
    """sha256 of files a spec names by a string value (a model's config.json, a trace file)."""
    found: dict[str, str] = {}
    models = catalog_dir("workloads") / "models"
    stack = [mapping]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str) and 0 < len(node) < 300 and "\n" not in node:
            for candidate in (folder / node, models / node, models / f"{node}.json",
                              models / node / "config.json"):
                if candidate.is_file():
                    found[node] = hashlib.sha256(candidate.read_bytes()).hexdigest()
                    break
    return found


def _spec_content(name: str, family: str) -> dict:
    """The resolved file (``extends:`` followed) and the files it names, or the bare name."""
    try:
        path = resolve(name, family)
    except SpecError:
        return {"name": name}  # a built-in (e.g. a planner name) or a bad name the point will report
    mapping = load_mapping(path, family)
    return {"content": mapping, "files": _referenced_files(mapping, path.parent)}


@functools.cache
def code_digest() -> str:
    """sha256 of memsim's own source: a changed model or planner invalidates cached points even
    when the version number has not moved (a development checkout)."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _planner_catalog() -> dict:
    """Every preset in planners/: baseline presets are simulated beside each plan, so they count."""
    folder = catalog_dir("planners")
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.y*ml"))}


def point_hash(inputs: dict, version: str) -> str:
    """Content hash of everything a point's result depends on, so a cached result is reused only
    when hardware, workload and planner files, overrides and memsim (version and source) are all
    unchanged."""
    payload = {
        "memsim": version,
        "code": code_digest(),
        "planners": _planner_catalog(),
        "run": inputs["run"],
        "time_limit": inputs["time_limit"],
        "overrides": list(inputs["overrides"]),
        "hardware": _spec_content(inputs["hardware"], "hardware"),
        "workload": _spec_content(inputs["workload"], "workloads"),
        "planner": None if inputs["planner"] is None else _spec_content(inputs["planner"], "planners"),
    }
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()[:20]


# -- running one point ----------------------------------------------------------------------------


def _system_summary(hardware: str, overrides: list[str]) -> dict:
    """What the point's machine is made of, for costing: GPUs and bytes per tier kind."""
    from memsim.hardware import load_system

    system = load_system(hardware, overrides)
    gpus = (system.gpu.count if system.gpu else 0) * system.nodes  # the whole cluster
    by_kind: dict[str, int] = {}
    for tier in system.tiers.values():
        count = (gpus or 1) if tier.is_per_device else system.nodes
        by_kind[tier.kind] = by_kind.get(tier.kind, 0) + tier.capacity * count
    return {"name": system.name, "gpus": gpus, "bytes_by_kind": dict(sorted(by_kind.items())),
            "usd_per_hour": None if system.usd_per_hour is None else system.usd_per_hour * system.nodes}


def _split_volatile(value: Any, path: str, out: dict[str, float]) -> Any:
    if isinstance(value, dict):
        kept = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key in VOLATILE and isinstance(item, int | float):
                out[where] = item
            else:
                kept[key] = _split_volatile(item, where, out)
        return kept
    if isinstance(value, list):
        return [_split_volatile(v, f"{path}.{i}", out) for i, v in enumerate(value)]
    return value


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {Path(last.filename).name}:{last.lineno} in {last.name})"


def _reason(diagnosis) -> str:
    """The summary, plus which tiers are short by how much when the summary does not say."""
    short = [f"{s.tier} short by {fmt_bytes(s.short_bytes)}" for s in diagnosis.shortfalls if s.short_bytes]
    if short and not any(s.tier in diagnosis.summary for s in diagnosis.shortfalls):
        return f"{diagnosis.summary}: {', '.join(short)}"
    return diagnosis.summary


def run_point(inputs: dict, function: str | None = None) -> dict:
    """Run one point and return its record; never raises for a failing point.

    ``function`` names the point function (default: ``inputs["run"]``)."""
    name = function or inputs["run"]
    record: dict[str, Any] = {"inputs": inputs, "status": "ok", "reason": None, "result": None,
                              "diagnosis": None, "system": None, "timing": {}}
    try:
        record["system"] = _system_summary(inputs["hardware"], list(inputs["overrides"]))
        result = POINT_FUNCTIONS[name](inputs)
        timing: dict[str, float] = {}
        record["result"] = _split_volatile(result, "", timing)
        record["timing"] = timing
        if result.get("feasible") is False:
            record["status"] = "infeasible"
            oom = result.get("oom") or {}
            short = fmt_bytes(oom.get("short_bytes", 0))
            record["reason"] = f"out of memory on {oom['tier']}: short by {short}" if oom.get("tier") \
                else "no feasible plan"
    except Infeasible as exc:
        record.update(status="infeasible", reason=_reason(exc.diagnosis), diagnosis=exc.diagnosis.to_dict())
        payload = getattr(exc, "payload", None)  # what the failed case needed (peak bytes per tier)
        if isinstance(payload, dict):
            timing = {}
            record["result"] = _split_volatile({**payload, "feasible": False}, "", timing)
            record["timing"] = timing
    except SpecError as exc:
        record.update(status="bad_input", reason=str(exc))
    except Exception as exc:  # a bug or a missing piece must not stop the study: record it
        record.update(status="error", reason=f"{type(exc).__name__}: {exc}{_where(exc)}")
    return record
