"""Why nothing fits, computed with slack variables on the capacity constraints (never guessed).

1. Every tier's capacity constraint gets a slack ``s_t ≥ 0``; minimising ``Σ s_t`` over the whole
   search space gives the least each tier must grow together: the shortfalls.
2. The smallest *single* change: slack on one tier only (others hard) gives "add N GiB to t";
   a new CXL card or NVMe drive is a new tier of zero capacity with slack, so its slack is the
   card's size; a smaller micro-batch scales activations and is tried without slack.
"""

from __future__ import annotations

import math

from memsim.contracts.simulator import Simulator
from memsim.errors import Diagnosis, Shortfall
from memsim.hardware.spec import Link, System, Tier
from memsim.kinds import tier_kind
from memsim.planners import mip
from memsim.planners.lp import SLACK_PRICE
from memsim.units import fmt_bytes
from memsim.workloads.trace import Trace

# A CXL Type-3 card and a Gen4 NVMe drive as the "add one" options. Samsung CMM-D (CXL 2.0, PCIe
# Gen5 x8): up to 512 GB, ~ 28 GB/s per direction in Samsung's 2023 product brief; Samsung PM9A3
# (PCIe Gen4 x4): 6.9 GB/s read, 4.1 GB/s write (product brief).
CXL_CARD = {"kind": "cxl", "capacity": 1, "read_bw": 28e9, "write_bw": 28e9, "latency": 250e-9}
NVME_DRIVE = {"kind": "ssd", "capacity": 1, "read_bw": 6.9e9, "write_bw": 4.1e9, "latency": 80e-6}


def diagnose(
    system: System, trace: Trace, options: dict | None = None, time_limit: float = 5.0, note: str = "",
    result=None, simulator: Simulator | None = None,
) -> Diagnosis:
    """Shortfalls and the cheapest single changes. A serving run whose requests never fit the KV
    pool is the simulator's diagnosis (``simulator.kv_pool_diagnosis``: one request's blocks
    against the pool), of ``result`` or of the default plan simulated here: the MIP's serving model
    sizes a pool for a whole batch of sequences, so its slack would overstate what one request
    needs. A serving workload therefore needs ``simulator`` (memsim.api passes the simulator's)."""
    if trace.kind == "serving":
        if simulator is None:
            raise TypeError("diagnosing a serving workload needs the simulator (simulator=...)")
        kv = simulator.kv_pool_diagnosis(result if result is not None else simulator.simulate(system, trace))
        if kv is not None and kv.shortfalls:
            return kv
    view = mip.planning_view(system, trace)
    options = options or {}
    found = mip.search(system, trace, options, time_limit, slack=True)
    if found.best is None or found.best.slack is None:
        return Diagnosis(
            f"{trace.name} does not fit on {system.name}{note}: the search found no "
            f"structure to measure the shortfall",
            [],
            [],
        )
    caps = found.space.caps
    shortfalls = [
        Shortfall(t, int(caps[t] + s), view.tiers[t].capacity)
        for t, s in sorted(found.best.slack.items())
        if s > 1.0
    ]
    suggestions = _single_changes(system, view, trace, options, time_limit)
    if not shortfalls:  # the planner model fits; the simulator said otherwise (fragmentation, order)
        summary = f"{trace.name} does not fit on {system.name}{note}"
    else:
        tiers = ", ".join(f"{s.tier} by {fmt_bytes(s.short_bytes)}" for s in shortfalls)
        summary = f"{trace.name} does not fit on {system.name}{note}: short on {tiers}"
    return Diagnosis(summary, shortfalls, suggestions)


def _single_changes(
    system: System, view: System, trace: Trace, options: dict, time_limit: float
) -> list[str]:
    ranked: list[tuple[float, str]] = []
    for tier in view.tiers:
        need = _slack_on(system, trace, options, time_limit, {tier})
        if need is not None and need > 1.0:
            kind = view.tiers[tier].kind
            what = tier_kind(kind).growth(tier)
            ranked.append((need * SLACK_PRICE.get(kind, 1.0), f"add {fmt_bytes(_round_up(need))} of {what}"))
    host = view.cpu.memory if view.cpu else None
    if host and host != view.fast_tier:
        for label, spec in (("a CXL memory card", CXL_CARD), ("an NVMe drive", NVME_DRIVE)):
            extended = _with_tier(system, host, spec, label)
            need = _slack_on(extended, trace, options, time_limit, {"added"})
            if need is not None and need > 1.0:
                price = SLACK_PRICE[spec["kind"]]
                ranked.append((need * price, f"add {label} of {fmt_bytes(_round_up(need))}"))
    smaller = _smaller_batch(system, trace, options, time_limit)
    if smaller:  # changes the job rather than the machine: listed after the hardware changes
        ranked.append((math.inf, smaller))
    ranked.sort(key=lambda r: r[0])  # cheapest first (SLACK_PRICE per GB of each kind)
    return [text for _, text in ranked]


def _slack_on(
    system: System, trace: Trace, options: dict, time_limit: float, tiers: set[str]
) -> float | None:
    found = mip.search(system, trace, options, time_limit, slack=tiers)
    if found.best is None or found.best.slack is None:
        return None
    need = sum(found.best.slack.values())
    return need if math.isfinite(need) else None


def _with_tier(system: System, host: str, spec: dict, label: str) -> System:
    """The system with one more, empty tier of ``spec`` linked to the host memory."""
    data = system.model_dump()
    data["tiers"]["added"] = {**spec, "source": f"{label} (diagnosis)"}
    bw = max(spec["read_bw"], spec["write_bw"])
    data["links"].append(
        Link(
            name="added-link",
            kind=tier_kind(spec["kind"]).link,
            ends=(host, "added"),
            bandwidth=bw,
        ).model_dump()
    )
    Tier.model_validate(data["tiers"]["added"])
    return System.model_validate(data)


def _smaller_batch(system: System, trace: Trace, options: dict, time_limit: float) -> str | None:
    if trace.kind != "training":
        return None
    micro = int(trace.meta.get("micro_batch") or 1)
    for div in (2, 4, 8, 16):
        if micro // div < 1 and div > 2:
            break
        found = mip.search(system, trace, options, time_limit, act_scale=1 / div)
        if found.best is not None:
            if micro >= div:
                return f"a micro-batch of {micro // div} (now {micro}) with gradient accumulation ×{div}"
            return f"activations {div}× smaller (a shorter sequence or sequence parallelism)"
    return None


def _round_up(nbytes: float) -> int:
    """Up to the next 1 GiB (sizes people buy), at least 1 GiB."""
    gib = 2**30
    return max(gib, math.ceil(nbytes / gib) * gib)
