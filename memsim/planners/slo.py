"""Capacity planning of a serving workload against an SLO (``serving.slo``): how many GPUs, which
KV-cache tiers of what size, and what each costs.

Each candidate is simulated, not estimated: ``replicas`` identical one-GPU servers share the
stream round-robin (each gets every *n*-th request, as a load balancer without affinity does),
each with the prefix cache given a DRAM tier of one of the sizes tried (the node's DRAM split
between the replicas). A candidate meets the SLO when the simulated TTFT p99 and TBT p99 are
within ``ttft_p99`` and ``tbt_p99``; its goodput is then the requests per second the replicas
complete (DistServe's "goodput": throughput within the SLO; 0 when it is missed). Cost per
million generated tokens is the GPUs' share of the node's ``usd_per_hour``. Candidates are
ranked: meeting the SLO first, then cheapest per token, then highest goodput.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from memsim.contracts.simulator import Simulate
from memsim.hardware.spec import System
from memsim.workloads.trace import Requests, Trace

DEFAULT_DRAM = (0, 64 * 2**30, 256 * 2**30)


def _share(requests: Requests, n: int, k: int) -> Requests:
    """Every ``n``-th request from the ``k``-th: one replica's share of a round-robin dispatch."""
    cols = [requests.arrival_s, requests.prompt_len, requests.output_len]
    opt = [requests.hash_ids, requests.answer_hash_ids]
    return Requests(*(c[k::n] for c in cols), *(c[k::n] if c is not None else None for c in opt))


def candidates(system: System, trace: Trace, say: Callable[[str], None] = lambda _: None, *,
               simulate: Simulate) -> list[dict]:
    """Every (replicas, DRAM cache size) candidate simulated by ``simulate``, best first."""
    slo = trace.meta["slo"]
    gpus = system.gpu.count if system.gpu is not None else 1
    replicas = [n for n in (slo.get("replicas") or (1, 2, 4, 8)) if n <= gpus] or [1]
    cached = trace.meta.get("kv_cache") is not None and bool(trace.requests.hash_ids)
    drams = list(slo.get("dram") or DEFAULT_DRAM) if cached and "dram" in system.tiers else [None]
    price = system.usd_per_hour
    rows = []
    for n in replicas:
        share = _share(trace.requests, n, 0)  # replicas are alike: simulate the first one
        for dram in drams:
            if dram is not None and dram * n > system.tiers["dram"].capacity:
                continue
            sub = copy.copy(trace)
            sub.requests = share
            sub.meta = dict(trace.meta)
            if dram is not None:
                sub.meta["kv_cache"] = {**trace.meta["kv_cache"],
                                        "tiers": {"dram": dram} if dram else {}}
            say(f"simulating {n} GPU(s), DRAM cache {dram or 0} B")
            r = simulate(system, sub)
            sv = r.serving
            meets = bool(r.feasible and sv.completed == len(share) and sv.ttft_s["p99"] <= slo["ttft_p99"]
                         and sv.tbt_s["p99"] <= slo["tbt_p99"])
            tokens = n * r.tokens_per_s
            usd = price * n / gpus if price is not None else None
            rows.append({
                "gpus": n, "kv_tiers": {"dram": dram} if dram else {}, "feasible": bool(r.feasible),
                "meets_slo": meets, "ttft_p99_s": sv.ttft_s["p99"], "tbt_p99_s": sv.tbt_s["p99"],
                "prefix_hit_rate": sv.prefix_hit_rate,
                "goodput_rps": n * sv.completed / r.step_time_s if meets and r.step_time_s > 0 else 0.0,
                "tokens_per_s": tokens, "usd_per_hour": usd,
                "usd_per_mtok": usd / (tokens * 3600) * 1e6 if usd is not None and tokens > 0 else None})
    rows.sort(key=lambda c: (not c["meets_slo"], c["usd_per_mtok"] if c["usd_per_mtok"] is not None
                             else float("inf"), -c["goodput_rps"], c["gpus"]))
    return rows
