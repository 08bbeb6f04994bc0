"""Capacity planning of a serving workload against an SLO (``serving.slo``): how many GPUs, which
tensor-parallel degree, which KV-cache tiers of what size, and what each costs.

Each candidate is simulated, not estimated: ``replicas`` identical servers of ``tensor`` GPUs
each (one GPU's share of the model at that TP degree: memsim.workloads.slo_costs) share the
stream — round-robin, or cache-aware (``routing: prefix``: a session's requests follow its
prefix, memsim.planners.routing) — each GPU with the prefix cache given a DRAM tier of one of
the sizes tried (the node's DRAM split between the GPUs). A candidate meets the SLO when the
simulated TTFT p99 and TBT p99 (the worst replica's) are within ``ttft_p99`` and ``tbt_p99``;
its goodput is then the requests per second the replicas complete (DistServe's "goodput":
throughput within the SLO; 0 when it is missed). Cost per million generated tokens is the GPUs'
share of the node's ``usd_per_hour``. Candidates are ranked: meeting the SLO first, then
cheapest per token, then highest goodput.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from memsim.contracts.simulator import Simulate
from memsim.hardware.spec import System
from memsim.planners.routing import route
from memsim.workloads.trace import Requests, Trace

DEFAULT_DRAM = (0, 64 * 2**30, 256 * 2**30)


def _degrees(trace: Trace) -> list[tuple[int, dict | None]]:
    """(TP degree, one GPU's TokenCosts dict) for each degree tried; None: the trace's own."""
    by = trace.meta["slo"].get("costs_by_tensor")
    if not by:
        return [(int((trace.meta.get("parallel") or {}).get("tensor", 1)), None)]
    return [(int(t), c) for t, c in sorted(by.items(), key=lambda kv: int(kv[0])) if "invalid" not in c]


def _tier_sizes(system: System, drams: list, ssds: list) -> list[dict[str, int] | None]:
    """Each cache-tier combination tried: a DRAM size, then (``slo.nvme``) an NVMe size below it
    on the system's first SSD tier; None: no prefix cache to size."""
    if drams == [None]:
        return [None]
    ssd = next((t for t, spec in system.tiers.items() if spec.kind == "ssd"), None)
    out = []
    for d in drams:
        for n in ssds or [0]:
            out.append({k: v for k, v in (("dram", d), (ssd, n)) if v})
    return out


def _run(system: System, trace: Trace, share: Requests, costs: dict | None, tp: int,
         tiers: dict[str, int] | None, simulate: Simulate):
    sub = copy.copy(trace)
    sub.requests = share
    sub.meta = dict(trace.meta)
    if costs is not None:
        sub.meta["token_costs"] = costs
        sub.meta["parallel"] = {**(trace.meta.get("parallel") or {}), "tensor": tp,
                                "gpus": tp * int((trace.meta.get("parallel") or {}).get("pipeline", 1))}
    if tiers is not None:
        sub.meta["kv_cache"] = {**trace.meta["kv_cache"], "tiers": tiers}
    return simulate(system, sub)


def candidates(system: System, trace: Trace, say: Callable[[str], None] = lambda _: None, *,
               simulate: Simulate) -> list[dict]:
    """Every (TP degree, replicas, DRAM cache size) candidate simulated by ``simulate``, best
    first."""
    slo = trace.meta["slo"]
    gpus = system.gpu.count if system.gpu is not None else 1
    routing = slo.get("routing") or "round_robin"
    cached = trace.meta.get("kv_cache") is not None and bool(trace.requests.hash_ids)
    drams = list(slo.get("dram") or DEFAULT_DRAM) if cached and "dram" in system.tiers else [None]
    ssd = next((t for t, spec in system.tiers.items() if spec.kind == "ssd"), None)
    ssds = list(slo.get("nvme") or []) if cached and ssd is not None else []
    price = system.usd_per_hour
    rows = []
    for tp, costs in _degrees(trace):
        replicas = [n for n in (slo.get("replicas") or (1, 2, 4, 8)) if n * tp <= gpus]
        if not replicas and tp <= gpus:
            replicas = [1]
        for n in replicas:
            # replicas of a round-robin split are alike: simulate the first; cache-aware routing
            # gives each its own sessions, so each is simulated
            shares = route(trace.requests, n, routing)
            if routing == "round_robin":
                shares = shares[:1]
            for tiers in _tier_sizes(system, drams, ssds):
                if any(size * n * tp > system.tiers[t].capacity for t, size in (tiers or {}).items()):
                    continue
                say(f"simulating {n} replica(s) of TP {tp}, cache tiers {tiers or 'HBM only'}")
                runs = [_run(system, trace, sh, costs, tp, tiers, simulate) for sh in shares]
                rows.append(_row(runs, shares, n, tp, tiers, gpus, price, slo, routing))
    rows.sort(key=lambda c: (not c["meets_slo"], c["usd_per_mtok"] if c["usd_per_mtok"] is not None
                             else float("inf"), -c["goodput_rps"], c["gpus"]))
    return rows


def _row(runs: list, shares: list[Requests], n: int, tp: int, tiers: dict | None, gpus: int,
         price: float | None, slo: dict, routing: str) -> dict:
    """One candidate's figures: the worst replica's p99s (every replica's when alike), the sum
    of their throughputs, the hit rate over all their prompt tokens."""
    alike = len(runs) == 1
    scale = n if alike else 1
    served = [r for r, sh in zip(runs, shares, strict=True) if len(sh)]
    ttft = max(r.serving.ttft_s["p99"] for r in served)
    tbt = max(r.serving.tbt_s["p99"] for r in served)
    completed = sum(r.serving.completed for r in served)
    requests = sum(len(sh) for sh in shares)
    span = max(r.step_time_s for r in served)
    meets = bool(all(r.feasible for r in served) and completed == requests
                 and ttft <= slo["ttft_p99"] and tbt <= slo["tbt_p99"])
    tokens = scale * sum(r.tokens_per_s for r in served)
    prompt = [sum(sh.prompt_len) for sh, r in zip(shares, runs, strict=True) if len(sh)]
    hits = sum(r.serving.prefix_hit_rate * p for r, p in zip(served, prompt, strict=True))
    hit = hits / max(sum(prompt), 1)
    used = n * tp
    usd = price * used / gpus if price is not None else None
    return {
        "gpus": used, "replicas": n, "tensor": tp, "routing": routing,
        "kv_tiers": dict(tiers or {}), "feasible": all(r.feasible for r in served),
        "meets_slo": meets, "ttft_p99_s": ttft, "tbt_p99_s": tbt, "prefix_hit_rate": hit,
        "goodput_rps": scale * completed / span if meets and span > 0 else 0.0,
        "tokens_per_s": tokens, "usd_per_hour": usd,
        "usd_per_mtok": usd / (tokens * 3600) * 1e6 if usd is not None and tokens > 0 else None}
