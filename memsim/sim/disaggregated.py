"""Disaggregated prefill and decode (DistServe, Zhong et al. OSDI'24; Splitwise, Patel et al.
ISCA'24; Mooncake, Qin et al. FAST'25): two GPU pools, the prompt's KV sent between them.

``serving.disaggregated`` splits the GPUs into prefill instances, which run prompts only
(batched up to their ``max_num_batched_tokens``) and give each request its first token, and
decode instances, which run continuous-batching decode with their own KV pools, so no prefill
ever shares an iteration with a decode (DistServe's "prefill-decoding interference" gone).
Each instance is the serving engine of ``memsim.sim.serving`` on one GPU's share of the model at
its pool's tensor and pipeline degrees, and the three stages run one after another in time:

1. requests reach prefill instances in turn (round robin, in arrival order); a prefill instance
   serves each as a one-token request, its prefix cache included;
2. a finished prompt's KV (prompt tokens × the whole model's KV bytes per token) goes to the
   next decode instance in turn, over ``link`` (a fabric of the system, one of its links, or a
   bandwidth), spread over ``min(GPUs of the prefill instance, GPUs of the decode instance)``
   GPU links in parallel, each transfer after the last one on the same sender and receiver.
   ``transfer: after`` sends it once the prefill ends: ``start + bytes / rate + latency``.
   ``transfer: layerwise`` sends each layer's KV as the prefill finishes it (DistServe's and
   Mooncake's layer-by-layer streaming): with the prompt's last prefill iteration spanning
   ``[t0, t1]`` over ``L`` equal layers, the chain ends at
   ``max(max(start, t0 + (t1 − t0)/L) + X, t1 + X/L) + latency``, ``X`` the whole copy's time;
3. the request joins its decode instance when the KV arrives, its prompt cached and its first
   token out (``meta["prefilled"]``); that moment is its TTFT, transfer included. Its later
   gaps are the TBT. A one-token request ends at its prefill.

Not modelled: a decode instance's back-pressure on prefill (a handed-off request that waits for
decode blocks keeps its KV on the prefill GPU, not booked there), and the receive buffer.
"""

from __future__ import annotations

import copy
import time

from memsim.contracts.plan import Plan
from memsim.contracts.result import Result, ServingStats
from memsim.errors import SpecError
from memsim.hardware.spec import System
from memsim.sim.report import main_unit, peak_flops
from memsim.sim.serving import ServingEngine, _quantiles
from memsim.units import fmt_bandwidth, parse_bandwidth
from memsim.workloads.trace import Requests, Trace

KEY = "serving.disaggregated"


def link_rate(system: System, d: dict) -> tuple[float, float, str]:
    """(achievable bytes/s per GPU link, latency in s, what it is) of ``d["link"]``: the
    system's ``nvlink`` or ``network`` fabric, one of its links by name, or a bandwidth."""
    name = str(d["link"])
    # NVLink needs a prefill and a decode instance's segments of each pipeline stage in one node
    # (DistServe's low node-affinity placement, §4.2): their tensor groups side by side
    gpus = d["prefill"]["tensor"] + d["decode"]["tensor"]
    if name in ("nvlink", "network"):
        fabric = getattr(system, name)
        if fabric is None:
            raise SpecError(f"system {system.name!r} has no {name} fabric; name one of its links "
                            f"({', '.join(ln.name for ln in system.links)}) or a bandwidth such as "
                            "100Gb/s", file=d.get("file"), key=f"{KEY}.link")
        per_node = system.gpu.count if system.gpu else 1
        if name == "nvlink" and gpus > per_node:
            raise SpecError(f"a prefill and a decode instance's tensor groups ({gpus} GPUs) do not fit "
                            f"one node of {per_node} GPUs of {system.name!r}; NVLink does not reach "
                            "between nodes: use link: network", file=d.get("file"), key=f"{KEY}.link")
        rate, latency, what = fabric.bandwidth * fabric.efficiency, fabric.latency, name
    elif (link := next((ln for ln in system.links if ln.name == name), None)) is not None:
        rate, latency, what = link.rate(link.ends[0]), link.latency, f"link {name}"
    else:
        try:
            rate, latency, what = parse_bandwidth(name), 0.0, name
        except ValueError:
            raise SpecError(f"{name!r} is neither a fabric of {system.name!r} (nvlink, network), "
                            f"one of its links ({', '.join(ln.name for ln in system.links)}) nor a "
                            "bandwidth such as 100Gb/s", file=d.get("file"), key=f"{KEY}.link") from None
    if d.get("latency") is not None:
        latency = float(d["latency"])
    return rate, latency, f"{what} ({fmt_bandwidth(rate)} per GPU)"


def _role_trace(trace: Trace, pool: dict, requests: Requests, prefilled: bool) -> Trace:
    """The trace one instance of ``pool`` serves: its GPU's costs, its scheduler keys."""
    sub = copy.copy(trace)
    sub.requests = requests
    meta = {k: v for k, v in trace.meta.items() if k not in ("disaggregated", "slo")}
    meta["token_costs"] = pool["token_costs"]
    meta["scheduler"] = {**(trace.meta.get("scheduler") or {}), **pool["scheduler"]}
    meta["parallel"] = {"tensor": pool["tensor"], "pipeline": pool["pipeline"],
                        "gpus": pool["tensor"] * pool["pipeline"]}
    if prefilled:
        meta["prefilled"] = True
        meta.pop("kv_cache", None)  # decode instances keep no prefix cache
    sub.meta = meta
    return sub


class Disaggregated:
    """The three stages over one request stream (module docstring)."""

    def __init__(self, system: System, trace: Trace, plan: Plan, timeline: bool = False):
        self.sys, self.trace, self.plan, self.timeline = system, trace, plan, timeline
        self.d = trace.meta["disaggregated"]
        self.reqs = trace.requests
        self.rate, self.latency, self.link_name = link_rate(system, self.d)
        self.notes: list[str] = []
        self.first_at: dict[int, float] = {}  # per request (index in the trace): first token out
        self.last_at: dict[int, float] = {}  # its last token
        self.transfer: dict[int, float] = {}  # prefill end → KV at its decode instance

    def run(self) -> Result:
        wall = time.perf_counter()
        d, reqs = self.d, self.reqs
        n = len(reqs)
        prefill = []
        ready = []  # (prefill end, request, prefill instance, its last iteration's start)
        for p in range(d["prefill"]["instances"]):
            idx = list(range(p, n, d["prefill"]["instances"]))
            hashes = [reqs.hash_ids[i] for i in idx] if reqs.hash_ids is not None else None
            one = Requests([reqs.arrival_s[i] for i in idx], [reqs.prompt_len[i] for i in idx],
                           [1] * len(idx), hashes)
            eng = ServingEngine(self.sys, _role_trace(self.trace, d["prefill"], one, False), self.plan,
                                self.timeline)
            prefill.append((eng, eng.run()))
            for r in eng.served:
                if r.first_t >= 0:
                    ready.append((r.first_t, idx[r.id], p, r.first_t0))
        ready.sort()
        ttft, transfer = [], []
        handed: list[list[tuple[float, int]]] = [[] for _ in range(d["decode"]["instances"])]
        links = min(d["prefill"]["tensor"] * d["prefill"]["pipeline"],
                    d["decode"]["tensor"] * d["decode"]["pipeline"])
        kvb = int(d["kv_bytes_per_token"])
        layers = max(1, int(self.trace.meta.get("layers") or 1))
        send = [0.0] * d["prefill"]["instances"]
        recv = [0.0] * d["decode"]["instances"]
        sent_bytes = turn = done_at_prefill = 0
        for t1, i, p, t0 in ready:
            if reqs.output_len[i] <= 1:  # nothing to decode: the prefill's token was the last
                ttft.append(t1 - reqs.arrival_s[i])
                self.first_at[i] = self.last_at[i] = t1
                done_at_prefill += 1
                continue
            j = turn % len(recv)
            turn += 1
            nbytes = reqs.prompt_len[i] * kvb
            x = nbytes / (links * self.rate)
            if d.get("transfer") == "after":
                end = max(t1, send[p], recv[j]) + x
            else:
                start = max(t0, send[p], recv[j])
                end = max(max(start, t0 + (t1 - t0) / layers) + x, t1 + x / layers)
            send[p] = recv[j] = end
            at = end + self.latency
            sent_bytes += nbytes
            ttft.append(at - reqs.arrival_s[i])
            self.first_at[i] = at
            self.transfer[i] = at - t1
            transfer.append(at - t1)
            handed[j].append((at, i))
        decode = []
        for j, rows in enumerate(handed):
            rows.sort()
            sub = Requests([a for a, _ in rows], [reqs.prompt_len[i] for _, i in rows],
                           [reqs.output_len[i] for _, i in rows])
            if not rows:
                self.notes.append(f"decode instance {j} got no request")
                continue
            eng = ServingEngine(self.sys, _role_trace(self.trace, d["decode"], sub, True), self.plan,
                                self.timeline)
            decode.append((eng, eng.run()))
            for r in eng.served:
                if r.generated >= r.output:
                    self.last_at[rows[r.id][1]] = r.last_t
        return self._result(n, prefill, decode, ttft, transfer, sent_bytes, done_at_prefill,
                            time.perf_counter() - wall)

    def _pool(self, role: str, runs: list, makespan: float) -> dict:
        pool = self.d[role]
        busy = sum(res.breakdown["compute"] + res.breakdown["recompute"] + res.breakdown["exposed_transfer"]
                   for _, res in runs)
        fast = self.sys.fast_tier
        return {"instances": pool["instances"], "gpus": pool["gpus"], "tensor": pool["tensor"],
                "pipeline": pool["pipeline"],
                "utilization": busy / (pool["instances"] * makespan) if makespan > 0 else 0.0,
                "kv_utilization": (sum(res.serving.kv_utilization * res.step_time_s for _, res in runs)
                                   / (len(runs) * makespan) if runs and makespan > 0 else 0.0),
                "kv_blocks": runs[0][1].serving.kv_blocks if runs else 0,
                "preemptions": sum(res.serving.preemptions for _, res in runs),
                "peak_bytes": max((res.peak_bytes.get(fast, 0) for _, res in runs), default=0)}

    def _result(self, n: int, prefill: list, decode: list, ttft: list[float], transfer: list[float],
                sent_bytes: int, done_at_prefill: int, wall_s: float) -> Result:
        runs = prefill + decode
        makespan = max(res.step_time_s for _, res in runs)
        gen = sum(res.tokens_per_step for _, res in runs)
        completed = done_at_prefill + sum(res.serving.completed for _, res in decode)
        dropped = n - len(ttft) + sum(res.serving.dropped for _, res in decode)
        tbt = [s for eng, _ in decode for s in eng.tbt]
        stores = [eng.store for eng, _ in prefill if eng.store is not None]
        prompts = sum(s.prompt_tokens for s in stores)
        hits: dict[str, int] = {}
        for s in stores:
            for tier, k in s.hits_by_tier.items():
                hits[tier] = hits.get(tier, 0) + k
        pools = {role: self._pool(role, group, makespan)
                 for role, group in (("prefill", prefill), ("decode", decode))}
        first = decode[0][1].serving if decode else prefill[0][1].serving
        stats = ServingStats(
            requests=n, completed=completed, ttft_s=_quantiles([(v, 1) for v in ttft]),
            tbt_s=_quantiles(tbt), throughput_tokens_per_s=gen / makespan if makespan > 0 else 0.0,
            kv_utilization=pools["decode"]["kv_utilization"],
            kv_fragmentation=(sum(res.serving.kv_fragmentation for _, res in decode) / len(decode)
                              if decode else 0.0),
            preemptions=sum(res.serving.preemptions for _, res in runs), dropped=dropped,
            kv_pool_blocks=first.kv_pool_blocks, kv_block_tokens=first.kv_block_tokens,
            kv_block_bytes=first.kv_block_bytes, kv_pool_tier=first.kv_pool_tier,
            largest_request_tokens=max((res.serving.largest_request_tokens for _, res in runs), default=0),
            prefix_hit_rate=sum(s.hit_tokens for s in stores) / prompts if prompts else 0.0,
            prefix_hits_by_tier=hits, kv_blocks=first.kv_blocks, kv_pool_bytes=first.kv_pool_bytes,
            kv_transfer_bytes=sent_bytes, kv_transfer_seconds=_quantiles([(v, 1) for v in transfer]),
            pools=pools)
        over = next((res.serving for _, res in runs if res.serving.overloaded), None)
        if over is not None:
            stats.overloaded, stats.overload_reason = True, over.overload_reason
        fast = self.sys.fast_tier
        fullest = max(runs, key=lambda run: run[1].peak_bytes.get(fast, 0))[1]  # the fullest GPU
        breakdown: dict[str, float] = {}
        for _, res in runs:  # the mean instance's seconds, idle after its last event included
            tail = {"idle": makespan - res.step_time_s}
            for k, v in res.breakdown.items():
                breakdown[k] = breakdown.get(k, 0.0) + (v + tail.get(k, 0.0)) / len(runs)
        gpus = sum(self.d[role]["gpus"] for role in ("prefill", "decode"))
        flops = float(self.trace.meta.get("flops_per_step") or 0.0)
        peak = peak_flops(main_unit(self.sys), str(self.trace.meta.get("dtype") or "bf16")) * gpus
        notes = {note for _, res in runs for note in res.notes}
        notes.add(f"disaggregated: {self.d['prefill']['instances']} prefill and "
                  f"{self.d['decode']['instances']} decode instances, KV over {self.link_name}, "
                  f"sent {self.d.get('transfer') or 'layerwise'}")
        return Result(
            feasible=all(res.feasible for _, res in runs) and dropped == 0,
            step_time_s=makespan, tokens_per_s=stats.throughput_tokens_per_s, tokens_per_step=gen,
            mfu=flops / (makespan * peak) if makespan > 0 and peak > 0 else 0.0,
            peak_bytes=dict(fullest.peak_bytes), mean_bytes=dict(fullest.mean_bytes),
            capacity_bytes=dict(fullest.capacity_bytes), link_busy=dict(fullest.link_busy),
            reserved_bytes=dict(fullest.reserved_bytes),
            breakdown={k: breakdown[k] for k in sorted(breakdown)},
            oom=next((res.oom for _, res in runs if res.oom is not None), None), serving=stats,
            events=sum(res.events for _, res in runs), wall_s=wall_s,
            notes=sorted(notes | set(self.notes)), timeline=self._timeline(prefill, decode))

    def _timeline(self, prefill: list, decode: list) -> list[dict] | None:
        """Every instance's Chrome-trace events, one process each (``prefill 0``, ``decode 1``)."""
        if not self.timeline:
            return None
        out = []
        runs = [("prefill", k, res) for k, (_, res) in enumerate(prefill)]
        runs += [("decode", k, res) for k, (_, res) in enumerate(decode)]
        for pid, (role, k, res) in enumerate(runs, 1):
            for ev in res.timeline or ():
                ev = {**ev, "pid": pid}
                if ev.get("name") == "process_name":
                    ev["args"] = {"name": f"{role} {k}"}
                out.append(ev)
        return out


def simulate_disaggregated(system: System, trace: Trace, plan: Plan, *, timeline: bool = False) -> Result:
    if trace.requests is None or len(trace.requests) == 0:
        raise ValueError(f"serving trace {trace.name!r} has no requests")
    return Disaggregated(system, trace, plan, timeline).run()
