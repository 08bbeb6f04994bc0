"""Simulations already run: a content-hash cache, so one simulation is never run twice.

The simulator is deterministic, so (system, trace, plan) decide a Result. A study's points share
many simulations (the baselines beside each plan do not depend on the axis that picks the plan:
kv-offload-128k's 104 simulations have 32 distinct results); a plan's baselines often coincide.
The key hashes the system, the whole trace and the plan (less what names or describes it:
planner info, notes, workload, fingerprint) and whether folding is on.

Layers: this process (``LIMIT`` Results, least recently used dropped), and a folder when
``MEMSIM_SIM_CACHE_DIR`` names one (``run_study`` points its workers at the study's output, so
two workers share their runs; the key then includes memsim's source digest).
``MEMSIM_SIM_CACHE=0`` turns both off.

A serving plan that differs from one already run only in how it would preempt (``preempt``,
``swap_tier``, ``swap_bytes``) is the same simulation when that run preempted nothing and no
swap space was carved out of a KV tier (``memsim/sim/serving.py``'s ``_setup``): vLLM's swap
defaults beside the resident baseline, on a case whose KV pool never runs out.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import pickle
from collections import OrderedDict
from pathlib import Path

from memsim.contracts.plan import Plan
from memsim.contracts.result import Result
from memsim.hardware.spec import System
from memsim.workloads.trace import Trace

LIMIT = 128
_MEMO: OrderedDict[str, Result] = OrderedDict()
_PREEMPT_FREE: dict[str, tuple[Result, frozenset[str]]] = {}  # serving, less preemption → run
_NAMING = ("planner", "notes", "workload", "fingerprint")
_PREEMPTION = ("preempt", "swap_tier", "swap_bytes")


def enabled() -> bool:
    return os.environ.get("MEMSIM_SIM_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def clear() -> None:
    _MEMO.clear()
    _PREEMPT_FREE.clear()


def _digest(payload: dict) -> str:
    text = json.dumps(payload, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _body(plan: Plan) -> dict:
    body = plan.to_dict()
    for key in _NAMING:
        body.pop(key, None)
    return body


def _trace_body(trace: Trace) -> dict:
    """The trace as the key sees it; a serving trace's request columns by their digest (the
    ``repr`` of each column, exact and C-fast: ``asdict`` of 100,000 requests' block hashes took
    longer than simulating them)."""
    if trace.requests is None:
        return trace.to_dict()
    body = dataclasses.replace(trace, requests=None).to_dict()
    digest = hashlib.sha256()
    for f in dataclasses.fields(trace.requests):
        digest.update(f"{f.name}={getattr(trace.requests, f.name)!r};".encode())
    body["requests"] = digest.hexdigest()
    return body


def keys(system: System, trace: Trace, plan: Plan, fold: bool) -> tuple[str, str | None]:
    """(the simulation's key, its key less the serving plan's preemption settings or None)."""
    base = {"system": system.model_dump(mode="json"), "trace": _trace_body(trace), "fold": fold}
    body = _body(plan)
    key = _digest({**base, "plan": body})
    loose = None
    if trace.kind == "serving" and body.get("serving"):
        serving = {k: v for k, v in body["serving"].items() if k not in _PREEMPTION}
        loose = _digest({**base, "plan": {**body, "serving": serving}})
    return key, loose


def _swap_tiers(system: System, plan: Plan) -> frozenset[str]:
    """The tier swap space would be carved from, when the plan preempts by swapping."""
    s = plan.serving
    if s is None or s.preempt != "swap":
        return frozenset()
    host = system.cpu.memory if system.cpu is not None else None
    tier = s.swap_tier or (host if host != system.fast_tier else None)
    return frozenset({tier} if tier else ())


def _kv_tiers(system: System, plan: Plan) -> frozenset[str]:
    return frozenset(t for t, f in plan.home("kv", system.fast_tier).items() if f > 0)


def _disk() -> Path | None:
    folder = os.environ.get("MEMSIM_SIM_CACHE_DIR")
    return Path(folder) if folder else None


def _disk_name(key: str) -> str:
    from memsim.studies.points import code_digest  # (only when a study shares its runs)

    return hashlib.sha256((key + code_digest()).encode()).hexdigest()[:32] + ".pkl"


def lookup(system: System, trace: Trace, plan: Plan, key: str, loose: str | None) -> Result | None:
    """A copy of the Result of this simulation if it has run (None: it has not)."""
    hit = _MEMO.get(key)
    if hit is None and loose is not None and loose in _PREEMPT_FREE:
        result, swap = _PREEMPT_FREE[loose]
        if not (swap | _swap_tiers(system, plan)) & _kv_tiers(system, plan):
            hit = result
    if hit is None and (folder := _disk()) is not None:
        try:
            hit = pickle.loads((folder / _disk_name(key)).read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError):
            hit = None
    if hit is None:
        return None
    _MEMO[key] = hit
    _MEMO.move_to_end(key)
    return copy.deepcopy(hit)


def store(system: System, plan: Plan, key: str, loose: str | None, result: Result) -> None:
    kept = copy.deepcopy(result)
    _MEMO[key] = kept
    while len(_MEMO) > LIMIT:
        _MEMO.popitem(last=False)
    serving = result.serving
    if loose is not None and serving is not None and serving.preemptions == 0:
        _PREEMPT_FREE[loose] = (kept, _swap_tiers(system, plan))
        while len(_PREEMPT_FREE) > LIMIT:
            _PREEMPT_FREE.pop(next(iter(_PREEMPT_FREE)))
    if (folder := _disk()) is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / _disk_name(key)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(pickle.dumps(kept))
            os.replace(tmp, path)
        except OSError:
            pass  # a cache that cannot be written is only a slower run
