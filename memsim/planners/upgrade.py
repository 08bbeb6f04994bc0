"""What a buyer can change to reach a throughput target, each change planned and simulated.

A preset whose options set ``target_tokens_per_s`` asks "what should I buy?". The answers are
changes a buyer can make, never a bigger HBM (HBM only comes with another GPU):

* **memory**: grow DRAM, CXL or NVMe up to what the platform takes (a tier's ``max_capacity`` in
  the hardware YAML, with its source; a tier without one cannot grow). The MIP with cost as its
  objective picks the cheapest growth: every growable tier gains ``s_t`` GiB at
  ``SLACK_PRICE[kind]`` per GB, capped at the platform's limit, and the step time is bounded by
  the target (``cheapest_upgrade``);
* **gpus**: more GPUs of the node's kind (training: data parallelism up to the node's GPU count,
  with the workload's ZeRO stage and with ZeRO-3, which shards the model states over them);
* **machine**: each catalog machine (``memsim/data/hardware``) with a GPU, the job unchanged.

Every option is planned with the preset's own search and scored by the simulator (``score``,
from ``report.plan``), so ``meets_target`` and ``simulated_tokens_per_s`` are the figures a
``plan`` on that configuration shows. Options that meet the target rank first, cheapest per hour
first: the catalog's ``usd_per_hour`` for the share of the node's GPUs used (a study's cost
measure) plus a memory purchase amortised over ``AMORTISE_YEARS``; those that miss follow,
fastest first. The report plans on the first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from memsim.errors import SpecError
from memsim.hardware.spec import System
from memsim.planners import mip
from memsim.planners.lp import SLACK_PRICE
from memsim.planners.space import build_space
from memsim.units import fmt_bytes
from memsim.workloads.trace import Trace

GIB = 2**30
AMORTISE_YEARS = 3  # a server's usual depreciation period: a one-off purchase per hour of use
HOURS_PER_YEAR = 8760
MEMORY_TRIES = 4  # cost-MIP solves of the memory option, each aiming higher by the simulator's miss

Score = Callable[[System, Trace], object]  # (system, trace) → an Evaluated of report.py
Rebuild = Callable[[list[str]], Trace]  # extra --set overrides → the workload's Trace


@dataclass
class Option:
    """One buyable change: the configuration it gives, its price, and (once scored) its result."""

    kind: str  # "none" | "memory" | "gpus" | "machine"
    label: str
    system: System
    trace: Trace
    add_bytes: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0  # one-off purchase (memory, at list $/GB)
    usd_per_hour: float | None = None  # the configuration's hourly price, where the catalog has one
    estimate_s: float | None = None  # the cost MIP's step time (memory options)
    overrides: list[str] = field(default_factory=list)  # --set lines that give this job
    simulated_tokens_per_s: float | None = None
    meets_target: bool = False
    note: str = ""

    def to_dict(self) -> dict:
        return {"kind": self.kind, "label": self.label, "hardware": self.system.name,
                "gpus": _gpus(self.system, self.trace), "add_bytes": dict(self.add_bytes),
                "cost_usd": round(self.cost_usd, 2),
                "usd_per_hour": None if self.usd_per_hour is None else round(self.usd_per_hour, 4),
                "overrides": list(self.overrides), "simulated_tokens_per_s": self.simulated_tokens_per_s,
                "meets_target": self.meets_target, "note": self.note}


@dataclass
class Upgrade:
    """The chosen option (the first of ``options``) and every option tried, ranked."""

    target_tokens_per_s: float
    add_bytes: dict[str, int]
    cost_usd: float
    estimate_s: float | None
    system: System
    notes: list[str] = field(default_factory=list)
    trace: Trace | None = None
    options: list[Option] = field(default_factory=list)

    @property
    def chosen(self) -> Option | None:
        return self.options[0] if self.options else None

    def to_dict(self) -> dict:
        best = self.chosen
        return {"target_tokens_per_s": self.target_tokens_per_s, "add_bytes": dict(self.add_bytes),
                "cost_usd": round(self.cost_usd, 2), "estimate_s": self.estimate_s, "notes": list(self.notes),
                "capacity_bytes": {t: tier.capacity for t, tier in self.system.tiers.items()},
                "chosen": best.label if best else None,
                "meets_target": bool(best and best.meets_target),
                "simulated_tokens_per_s": best.simulated_tokens_per_s if best else None,
                "options": [o.to_dict() for o in self.options]}


def buyable_upgrade(system: System, trace: Trace, target_tokens_per_s: float, score: Score,
                    options: dict | None = None, time_limit: float = 10.0,
                    rebuild: Rebuild | None = None) -> Upgrade:
    """Every buyable option for ``target_tokens_per_s``, planned, simulated and ranked."""
    if target_tokens_per_s <= 0 or not float(trace.meta.get("tokens_per_step") or 0) > 0:
        raise ValueError("a throughput target needs tokens_per_step in the trace and a positive target")
    notes: list[str] = []
    node = system.gpu.count if system.gpu else 0
    as_is = Option("none", f"as is: {_gpus(system, trace)} of {node} GPUs of {system.name}", system, trace,
                   usd_per_hour=_hourly(system, trace))
    gpus, why = _more_gpus(system, trace, rebuild)
    notes += why
    tried = [as_is, *gpus, *_machines(system, trace)]
    for opt in tried:
        _score(opt, score, target_tokens_per_s)
    memory, why = _memory(system, trace, target_tokens_per_s, score, options, time_limit)
    tried += memory
    notes += why
    ranked = sorted(tried, key=lambda o: _rank(o))
    best = ranked[0]
    if best.kind == "none" and best.meets_target:
        notes.insert(0, "no upgrade needed: the machine as is meets the target")
    elif best.meets_target:
        notes.insert(0, f"{best.label} meets the target: {best.simulated_tokens_per_s:.4g} tokens/s "
                        "simulated")
    else:
        tps = best.simulated_tokens_per_s
        fastest = f"{tps:.4g} tokens/s" if tps else "nothing fits"
        notes.insert(0, f"no buyable option tried meets {target_tokens_per_s:g} tokens/s; the fastest is "
                        f"{best.label} ({fastest}, simulated)")
    return Upgrade(target_tokens_per_s, dict(best.add_bytes), best.cost_usd, best.estimate_s, best.system,
                   notes, best.trace, ranked)


def _score(opt: Option, score: Score, target: float) -> None:
    """Plan ``opt`` with the preset's search and keep the simulator's throughput."""
    try:
        ev = score(opt.system, opt.trace)
    except (SpecError, mip.NotApplicable) as exc:
        opt.note = f"not planned: {exc}"
        return
    tps = ev.result.tokens_per_s if ev.feasible else None
    opt.simulated_tokens_per_s = tps
    opt.meets_target = tps is not None and tps >= target * (1 - 1e-9)
    if not ev.feasible:
        opt.note = opt.note or "does not fit"


def _memory(system: System, trace: Trace, target: float, score: Score, options: dict | None,
            time_limit: float) -> tuple[list[Option], list[str]]:
    """The cheapest memory growth whose *simulated* throughput meets ``target``.

    The cost MIP prices growth against its own step-time estimate; where the simulator then finds
    the plan slower, the MIP is asked again for the throughput scaled by the miss (up to
    ``MEMORY_TRIES`` times, within the platform's limits), as report.py re-solves an overflow."""
    aim, best = target, None
    for _ in range(MEMORY_TRIES):
        opt = cheapest_upgrade(system, trace, aim, options, time_limit)
        if isinstance(opt, str):
            return ([best] if best else []), ([] if best else [opt])
        if not opt.add_bytes:  # no growth needed: the same as "as is"
            break
        _score(opt, score, target)
        if best is None or (opt.simulated_tokens_per_s or 0) > (best.simulated_tokens_per_s or 0):
            best = opt
        if opt.meets_target:
            break
        tps = opt.simulated_tokens_per_s
        aim *= (target / tps if tps else 1.25) * 1.02
    return ([best] if best else []), []


def cheapest_upgrade(system: System, trace: Trace, target_tokens_per_s: float, options: dict | None = None,
                     time_limit: float = 10.0) -> Option | str:
    """The cheapest growth of DRAM, CXL and NVMe (within each tier's ``max_capacity``) whose MIP
    estimate reaches ``target_tokens_per_s``; a sentence saying why there is none otherwise."""
    tokens = float(trace.meta.get("tokens_per_step") or 0)
    if tokens <= 0 or target_tokens_per_s <= 0:
        raise ValueError("a throughput target needs tokens_per_step in the trace and a positive target")
    ranks = _ranks(system, trace)  # a shared host tier grows for every rank on the node
    room = {n: t.max_capacity - t.capacity for n, t in system.tiers.items()
            if t.kind != "hbm" and t.max_capacity is not None and t.max_capacity > t.capacity}
    if not room:
        return (f"memory: no tier of {system.name} can grow (none has a max_capacity above its capacity "
                "in the hardware YAML; HBM never grows)")
    view = mip.planning_view(system, trace)
    space = build_space(view, dict(options or {}), meta=trace.meta)
    space.max_step = tokens / target_tokens_per_s
    space.slack_cap = {n: b / (1 if system.tiers[n].is_per_device else ranks) / GIB for n, b in room.items()}
    found = mip.search(system, trace, options, time_limit, slack=set(room), space=space)
    if found.best is None or found.best.slack is None:
        grown = ", ".join(f"{n} to {fmt_bytes(system.tiers[n].max_capacity)}" for n in sorted(room))
        return (f"memory: growing {grown} (the platform's max_capacity; HBM never grows) "
                "does not reach the target in the MIP's estimate")
    add = {t: min(room[t], _round_up(s) * (1 if system.tiers[t].is_per_device else ranks))
           for t, s in sorted(found.best.slack.items()) if s > 1.0}
    cost = sum(SLACK_PRICE.get(system.tiers[t].kind, 1.0) * b / 1e9 for t, b in add.items())
    data = system.model_dump()
    for tier, extra in add.items():
        data["tiers"][tier]["capacity"] = system.tiers[tier].capacity + extra
    upgraded = System.model_validate(data)
    label = "memory: " + (", ".join(f"{t} +{fmt_bytes(b)}" for t, b in add.items()) or "none")
    hourly = _hourly(upgraded, trace)
    if hourly is not None:
        hourly += cost / (AMORTISE_YEARS * HOURS_PER_YEAR)
    return Option("memory", label, upgraded, trace, add, cost, hourly, found.best.estimate_s,
                  note=f"~${cost:,.0f} at list $/GB")


def _more_gpus(system: System, trace: Trace, rebuild: Rebuild | None) -> tuple[list[Option], list[str]]:
    """Data parallelism over more of the node's GPUs, with the job's ZeRO stage and with ZeRO-3."""
    gpu, used = system.gpu, _gpus(system, trace)
    if gpu is None or gpu.count <= used:
        return [], [f"gpus: {system.name} has no more GPUs than the {used} the job uses"]
    if trace.kind != "training":
        return [], [f"gpus: more GPUs are modelled for training (data parallelism), not {trace.kind}"]
    if rebuild is None:
        return [], ["gpus: a saved trace cannot be rebuilt for more GPUs (plan the workload YAML)"]
    stage = int(trace.meta.get("zero_stage") or 0)
    counts = sorted({n for n in (2, 4, 8, 16, 32, 64) if used < n < gpu.count} | {gpu.count})
    out = []
    for n in counts:
        for z in sorted({stage, 3}):
            sets = [f"training.data_parallel={n}", f"training.parallel.data={n}", f"training.zero_stage={z}"]
            try:
                t = rebuild(sets)
            except SpecError:
                continue
            out.append(Option("gpus", f"gpus: {n} of {gpu.count} GPUs of {system.name}, ZeRO-{z}", system, t,
                              usd_per_hour=_hourly(system, t), overrides=sets))
    return out, []


def _machines(system: System, trace: Trace) -> list[Option]:
    """Each other catalog machine with a GPU, running the job as it is."""
    from memsim.hardware import list_systems

    out = []
    for other in list_systems():
        if other.name == system.name or other.gpu is None:
            continue
        if other.gpu.count < _gpus(system, trace):
            continue
        out.append(Option("machine", f"machine: {other.name}", other, trace,
                          usd_per_hour=_hourly(other, trace)))
    return out


def _rank(o: Option) -> tuple:
    if o.meets_target:
        return (0, o.usd_per_hour is None, o.usd_per_hour or 0.0, o.cost_usd,
                -(o.simulated_tokens_per_s or 0.0), o.label)
    return (1, -(o.simulated_tokens_per_s or 0.0), o.label)


def _hourly(system: System, trace: Trace) -> float | None:
    """The catalog's node price × the share of its GPUs the job uses (None: no list price)."""
    node = system.usd_per_hour
    gpu = system.gpu
    if node is None:
        return None
    return node * _gpus(system, trace) / gpu.count if gpu and gpu.count else node


def _gpus(system: System, trace: Trace) -> int:
    gpu = system.gpu
    return min(int(trace.meta.get("data_parallel") or 1), gpu.count) if gpu else 0


def _ranks(system: System, trace: Trace) -> int:
    """Host tiers are shared by the node's data-parallel ranks: a per-rank need × ranks."""
    return max(1, _gpus(system, trace))


def _round_up(nbytes: float) -> int:
    return max(GIB, math.ceil(nbytes / GIB) * GIB)
