"""Serving: a continuous-batching scheduler (iteration-level, vLLM-like) inside the simulation.

Every iteration the scheduler builds a batch under ``max_num_batched_tokens`` and ``max_num_seqs``
(chunked prefill, as vLLM V1 does): running requests first (one token per decoding request, the
next prompt chunk for a prefilling one), then swapped-out requests, then waiting ones, first come
first served. KV lives in paged blocks of ``block_size`` tokens; a request holds
``ceil(cached tokens / block_size)`` blocks, so its last block is partly empty (fragmentation).
When a running request needs a block and none is free, the most recently admitted request is
preempted (vLLM's LIFO): by *swap* (its blocks are copied to ``swap_tier`` while ``swap_bytes``
lasts, and copied back before it runs again) or by *recompute* (its blocks are dropped and its
prompt plus the tokens generated so far are prefilled again).
The decisions are ``memsim.sim.scheduler.schedule`` (queues in, batch out); this engine times them.

Iteration time (roofline on the compute unit, phase ``decode`` when every request decodes):
dense part ``op_time(new_tokens × flops_per_token, weight_bytes + activations)`` plus attention
``op_time(Σ new × context × attn_flops_per_token_ctx, KV read + written)`` plus one kernel
launch per layer and part. Weights (and KV) homed off the compute tier are streamed over the
links every iteration, overlapped layer by layer with compute (the iteration takes the longer of
the two); swaps are copied before the iteration computes, block by block, as vLLM's cache engine
does (other granularities, overlap and reuse: ``serving.swap``, ``memsim.sim.swap``). A run of
decode-only iterations with nothing in between (no arrival, completion or block shortage, nothing
streamed) is simulated in one timeout, each iteration timed as it would be alone.

The KV pool is what ``gpu_memory_utilization`` (the trace's scheduler, default 0.9) of the compute
tier leaves after resident weights, the activation workspace of one full batch and the prefetch
buffers. If the weights alone do not fit, the OOM is recorded and the pool is sized by demand, so
the run still reports each tier's full need.
"""

from __future__ import annotations

import math
import time

import numpy as np

from memsim.contracts.plan import Plan, ServingPolicy
from memsim.contracts.result import Result, ServingStats
from memsim.errors import SpecError, did_you_mean
from memsim.hardware.spec import System
from memsim.sim.engine import Clock
from memsim.sim.kvload import LMCACHE_CHUNK_TOKENS, PrefixLoader
from memsim.sim.kvstore import PrefixStore
from memsim.sim.overload import overload_verdict
from memsim.sim.program import paused_gc, split_bytes
from memsim.sim.report import common_fields, main_unit, peak_flops
from memsim.sim.scheduler import Queues, Swap, schedule
from memsim.sim.swap import SwapCost, SwapStats, start_swaps
from memsim.workloads.moe import weight_bytes_read
from memsim.workloads.parallel_serving import held_allreduce_bytes, tp_comm_seconds
from memsim.workloads.trace import TokenCosts, Trace

DEFAULT_GPU_UTIL = 0.9  # vLLM's default gpu_memory_utilization


class Req:
    """One request's progress: tokens whose KV is cached, tokens generated, blocks held."""

    __slots__ = ("answer", "arrival", "blocks", "computed", "first_t", "first_t0", "generated", "hashes",
                 "held", "host", "id", "k", "last_t", "looked", "output", "prompt", "seen", "swapped",
                 "valid")

    def __init__(self, rid: int, arrival: float, prompt: int, output: int):
        self.id, self.arrival, self.prompt, self.output = rid, arrival, prompt, output
        self.computed = self.generated = self.blocks = self.swapped = 0
        self.host = self.valid = 0  # a kept host copy's blocks, and its current ones (swap reuse)
        self.k = 0  # tokens scheduled in the current iteration
        self.first_t = self.last_t = -1.0
        self.first_t0 = -1.0  # start of the iteration that gave the first token
        self.hashes: list[int] = []  # prefix-chained block hashes of the prompt (prefix cache)
        self.answer: list[int] = []  # hashes of the whole blocks the answer completes
        self.held = 0  # leading hashes this request references in the prefix store
        self.looked = False  # counted in the prefix hit rate (first admission only)
        self.seen = (-1, 0, 0)  # (store epoch, hit blocks, cached tokens) of the last lookup


def policy_for(trace: Trace, plan: Plan) -> tuple[ServingPolicy, float]:
    """The serving policy: the plan's, else the trace's scheduler settings, else defaults."""
    sched = dict(trace.meta.get("scheduler") or {})
    util = float(sched.get("gpu_memory_utilization") or DEFAULT_GPU_UTIL)
    if plan.serving is not None:
        return plan.serving, util
    policy = ServingPolicy()
    for key in ("max_num_seqs", "max_num_batched_tokens", "block_size"):
        if sched.get(key):
            setattr(policy, key, int(sched[key]))
    if sched.get("preempt") in ("swap", "recompute"):
        policy.preempt = sched["preempt"]
    policy.swap_bytes = int(sched.get("swap_bytes") or 0)
    return policy, util


class ServingEngine:
    takes = None  # which arriving requests this engine serves (memsim.sim.virtual_engines): all

    def __init__(self, system: System, trace: Trace, plan: Plan, timeline: bool):
        self.sys, self.trace, self.plan = system, trace, plan
        raw = trace.meta.get("token_costs")
        if raw is None:
            raise ValueError(f"serving trace {trace.name!r} has no meta['token_costs']")
        self.tc = raw if isinstance(raw, TokenCosts) else TokenCosts(**raw)
        self.policy, self.util = policy_for(trace, plan)
        self.clock = Clock(system, timeline, trace.meta)
        self.env = self.clock.env
        self.unit = main_unit(system)
        self.fast = system.fast_tier
        self.dtype = str(trace.meta.get("dtype") or "bf16")
        self.layers = max(1, self.tc.layers)
        self.swap_tier = self.policy.swap_tier or self._host()
        self.acct = {"compute": 0.0, "recompute": 0.0, "exposed_transfer": 0.0,
                     "memory_wait": 0.0, "cpu": 0.0, "idle": 0.0}
        self.notes: list[str] = []
        # statistics
        self.ttft: list[float] = []
        self.tbt: list[tuple[float, int]] = []  # (gap, how many tokens had it)
        self.preemptions = 0
        self.kv_area = self.kv_slots_area = self.kv_tokens_area = 0.0
        self.kv_last_t = 0.0
        self.generated_total = 0
        self.dropped = 0
        self.swap_used = 0  # blocks held on the swap tier
        self.retained: list[Req] = []  # running requests keeping a host copy (swap reuse)
        self.swap_cost = SwapCost.from_meta(trace.meta.get("swap"), self.layers)
        self.swap_stats = SwapStats()
        budget = trace.meta.get("kv_budget")  # serving.kv_budget: KV tokens a request keeps
        self.kv_cap = int(budget["cap"]) if budget else None

    def _host(self) -> str | None:
        host = self.sys.cpu.memory if self.sys.cpu is not None else None
        return host if host is not None and host != self.fast else None

    # -- setup: weights, workspace, KV pool ----------------------------------------------------

    def _setup(self) -> None:
        tc, pol, pools = self.tc, self.policy, self.clock.pools
        self.w_home = split_bytes(tc.weight_bytes, self.plan.home("weight", self.fast))
        self.kv_frac = dict(self.plan.home("kv", self.fast))
        for tier, nbytes in self.w_home.items():
            pools[tier].alloc("weights", nbytes, "load weights")
        self.streamed_w = {t: b for t, b in self.w_home.items() if t != self.fast}
        staging = int(sum(self.streamed_w.values()) * min(1.0, (self.plan.prefetch_depth + 1) / self.layers))
        work = tc.activation_bytes_per_token * pol.max_num_batched_tokens
        pools[self.fast].alloc("activations", work, "profile run")
        pools[self.fast].alloc("prefetch buffers", staging, "profile run")
        if (self.trace.meta.get("scheduler") or {}).get("nccl_record_streams"):
            pools[self.fast].alloc("held all-reduce inputs", held_allreduce_bytes(
                tc, pol.max_num_batched_tokens), "profile run")
        self.block_bytes = pol.block_size * tc.kv_bytes_per_token
        budgets = {}
        for tier, frac in self.kv_frac.items():
            if frac <= 0:
                continue
            cap = self.sys.tiers[tier].capacity
            free = (cap * self.util if tier == self.fast else cap) - pools[tier].used
            if tier == self.swap_tier and pol.preempt == "swap":
                free -= pol.swap_bytes
            budgets[tier] = free / (frac * self.block_bytes)
        blocks = int(min(budgets.values())) if budgets else 0
        self.kv_pool_tier = min(budgets, key=budgets.get) if budgets else None
        max_len = max((p + o for p, o in zip(self.trace.requests.prompt_len,
                                              self.trace.requests.output_len, strict=True)), default=1)
        if self.clock.oom is not None or blocks <= 0:
            demand = pol.max_num_seqs * math.ceil(max_len / pol.block_size)
            self.notes.append(f"the KV cache does not fit: pool sized by demand ({demand} blocks) "
                              "to measure each tier's full need")
            blocks = demand
        self.total_blocks = blocks
        self.free_blocks = blocks
        self.max_len = max_len
        self.store = self._prefix_store()
        self.kv_loads: dict[str, int] = {}  # prefix tokens to copy in from lower cache tiers
        # what every iteration reuses: the streamed copies and the unit's roofline rates
        self.streamed_w_items = list(self.streamed_w.items())
        self.kv_streamed = [(t, f) for t, f in self.kv_frac.items() if t != self.fast and f > 0]
        unit = self.unit
        bw = unit.mem_bw * unit.memory_efficiency
        self._rates = {d: (unit.rate("matmul", p, self.dtype), unit.rate("attention", p, self.dtype),
                           bw, unit.launch_overhead)
                       for d, p in ((True, "decode"), (False, "prefill"))}
        self.launches = unit.launch_overhead * max(0, 2 * self.layers - 2)
        # decode-only iterations may be run in one go when nothing streams during them
        self.ff_ok = not self.streamed_w_items and not self.kv_streamed and self.kv_cap is None
        self.loader = self._prefix_loader() if self.store is not None and self.store.lower else None

    def _prefix_store(self) -> PrefixStore | None:
        """The prefix cache (``meta["kv_cache"]``), its lower tiers' capacity held in their pools."""
        cache = self.trace.meta.get("kv_cache") or {}
        if not cache.get("prefix_caching") or not self.trace.requests.hash_ids:
            return None
        block_tokens = int(cache.get("block_tokens") or 512)
        lower = []
        for tier, nbytes in (cache.get("tiers") or {}).items():
            if tier not in self.sys.tiers or tier == self.fast:
                raise SpecError(f"{tier!r} is not a memory tier below {self.fast!r} of system "
                                f"{self.sys.name!r}{did_you_mean(tier, set(self.sys.tiers) - {self.fast})}",
                                key=f"serving.kv_cache.tiers.{tier}")
            self.clock.pools[tier].alloc("kv cache", int(nbytes), "prefix cache tier")
            lower.append((tier, int(nbytes) // (block_tokens * self.tc.kv_bytes_per_token)))
        eviction = str(cache.get("eviction") or "lru")
        last_use = None
        if eviction == "predict":  # the oracle the predictions are drawn from: each block's last use
            last_use = {h: i for i, hashes in enumerate(self.trace.requests.hash_ids) for h in hashes}
        return PrefixStore(block_tokens, self.policy.block_size, self.fast, lower, eviction=eviction,
                           ttl_s=float(cache.get("ttl_s") or 0.0), last_use=last_use,
                           prediction_error=float(cache.get("prediction_error") or 0.0),
                           seed=int(cache.get("seed") or 0))

    def _prefix_loader(self) -> PrefixLoader:
        cache = self.trace.meta.get("kv_cache") or {}
        dense, attn, _, _ = self._rates[False]
        return PrefixLoader(self.clock.copier.topo, self.fast, self.tc, self.layers, (dense, attn),
                            (cache.get("load") or "layerwise") == "layerwise",
                            int(cache.get("chunk_tokens") or LMCACHE_CHUNK_TOKENS))

    def _worth_loading(self, r: Req, hit: int, tokens: int) -> tuple[int, int]:
        """The leading hit blocks worth using: a lower-tier block only if loading it is quicker
        than recomputing (``PrefixLoader.best_cut``)."""
        store = self.store
        j = self.loader.best_cut(store.runs(r.hashes[:hit]), store.block_tokens, tokens)
        return (hit, tokens) if j == hit else (j, min(j * store.block_tokens, r.prompt - 1))

    # -- the server loop -----------------------------------------------------------------------

    def run(self) -> Result:
        wall = time.perf_counter()
        with paused_gc():
            self._setup()
            self.env.process(self._serve())
            self.clock.run()
        return self._result(time.perf_counter() - wall)

    def _serve(self):
        """The scheduler loop. Hot: one pass per iteration over the running requests, so the
        per-request work is kept to local variables; the KV integrals and the cached-token sum
        are kept incrementally (``live``) and read at the same points as a full recount."""
        env, pol = self.env, self.policy
        reqs = self.trace.requests
        todo = [Req(i, a, p, o) for i, (a, p, o) in
                enumerate(zip(reqs.arrival_s, reqs.prompt_len, reqs.output_len, strict=True))]
        bs = pol.block_size
        if self.store is not None:
            for r, hashes in zip(todo, reqs.hash_ids, strict=True):
                r.hashes = hashes
            for r, answer in zip(todo, reqs.answer_hash_ids or (), strict=False):
                r.answer = answer
        store = self.store
        if self.trace.meta.get("prefilled"):  # a decode instance (sim/disaggregated.py): each
            for r in todo:                     # arrives with its prompt's KV and first token
                r.computed, r.generated, r.first_t = r.prompt, 1, r.arrival
                r.last_t = r.arrival
        cap = self.kv_cap if self.kv_cap is not None else 1 << 62
        too_big = [r for r in todo if -(-min(r.prompt + r.output, cap) // bs) > self.total_blocks]
        if too_big:
            self.dropped = len(too_big)
            self.notes.append(f"{len(too_big)} requests need more KV blocks than the whole pool "
                              f"({self.total_blocks}): never scheduled")
            big = {r.id for r in too_big}
            todo = [r for r in todo if r.id not in big]
        self.served = todo
        self.completed = 0
        waiting: list[Req] = []  # FIFO from index `head`
        running: list[Req] = []  # in admission order: preemption takes from the end
        swapped: list[Req] = []
        nxt = head = cached = live = 0  # live: Σ computed over running, kept incrementally
        n_todo = len(todo)
        rec = self.clock.recorder
        track = "gpu" if self.sys.gpu else "cpu"
        swapping = pol.preempt == "swap" and self.swap_tier is not None
        swap = Swap(swapping, self.block_bytes, pol.swap_bytes, swapping and self.swap_cost.reuse)
        total_blocks = self.total_blocks
        free = self.free_blocks
        ttft, tbt, acct = self.ttft, self.tbt, self.acct
        kv_area = kv_slots_area = kv_tokens_area = 0.0
        kv_last_t = self.kv_last_t
        generated_total = 0
        iteration = self._iteration
        timeout = env.timeout
        takes = self.takes
        self.at_last = None  # (first, last arrival, completed, waiting) once all have arrived
        while nxt < n_todo or head < len(waiting) or running or swapped:
            now = env._now
            while nxt < n_todo and todo[nxt].arrival <= now:
                if takes is None or takes(todo[nxt]):  # (a virtual engine takes only its own)
                    waiting.append(todo[nxt])
                nxt += 1
                if nxt == n_todo:
                    self.at_last = (todo[0].arrival, todo[-1].arrival, self.completed,
                                    len(waiting) - head + len(swapped))
            dt = now - kv_last_t  # KV integrals (time-weighted blocks, slots, cached tokens)
            if dt > 0:
                used = total_blocks - free
                kv_area += used * dt
                kv_slots_area += used * bs * dt
                kv_tokens_area += cached * dt
            kv_last_t = now
            if head >= len(waiting) and not running and not swapped:
                yield timeout(todo[nxt].arrival - now)
                acct["idle"] += env._now - now
                continue
            if not swapped and self.ff_ok and rec is None and (
                    store is None or not store.pinned) and (
                    head >= len(waiting) or self._head_blocked(waiting[head], len(running), free)):
                steps, need = self._decode_run(running, now, todo[nxt].arrival if nxt < n_todo
                                               else None, free)
                if steps:  # decode-only iterations up to the next event, in one timeout
                    n = len(running)
                    t = now
                    for j, dt in enumerate(steps):
                        free -= need[j]
                        used = total_blocks - free
                        t += dt
                        kv_area += used * dt
                        kv_slots_area += used * bs * dt
                        kv_tokens_area += (live + n * j) * dt
                        tbt.append((dt, n))
                    acct["compute"] += t - now
                    k = len(steps)
                    live += n * k
                    generated_total += n * k
                    taken = 0
                    for r in running:
                        pg = r.prompt + r.generated + k - 1  # the last step's context
                        grow = -(-pg // bs) - r.blocks
                        if grow > 0:
                            r.blocks += grow
                            taken += grow
                        r.computed += k
                        r.generated += k
                    self.free_blocks = free
                    if store is not None:
                        store.fit(free)
                    yield timeout(t - now)
                    t = env._now
                    for r in running:
                        r.last_t = t
                    if taken:  # allocated when the run ends: its peak is the same
                        self._kv_bytes(0, taken)
                    kv_last_t = t
                    continue
            if store is not None and store.pinned:  # time-to-live pins that ran out
                free += store.expire(now)  # (pool bytes count cached blocks as free)
            q = Queues(running, waiting, head, swapped, free, live, self.swap_used, self.retained)
            batch = schedule(q, pol, swap, self if store is not None else None, self.kv_cap)
            if swap.reuse and q.swap_used != self.swap_used:  # kept copies: booked as they change
                self._swap_bytes(q.swap_used - self.swap_used)
            head, free, live, self.swap_used, self.retained = q.head, q.free, q.live, q.swap_used, q.retained
            for r in batch.preempted:  # the engine's part of a preemption: counted, cache let go
                self.preemptions += 1
                if store is not None:
                    store.release(r.hashes[:r.held])
                    r.held = 0
            new, ctx, kv_read, redo, decode = batch.new, batch.ctx, batch.kv_read, batch.redo, batch.decode
            given, taken, swap_out, swap_in = batch.given, batch.taken, batch.swap_out, batch.swap_in
            if store is not None:
                if store.unpinned:  # pinned blocks a hit took over: their room is free again
                    free += store.unpinned
                    store.unpinned = 0
                store.fit(free)
            if head > 4096:  # drop the consumed prefix now and then (amortised O(1))
                del waiting[:head]
                head = 0
            if given or taken:
                self._kv_bytes(given, taken)
            b_req = batch.requests(running)
            if not b_req and store is not None and store.next_expiry() is not None:
                self.free_blocks = free  # blocks pinned by a time-to-live: wait for the first out
                yield timeout(max(store.next_expiry() - now, 1e-9))
                acct["memory_wait"] += env._now - now
                continue
            if not b_req:  # only possible when one request alone cannot get its blocks
                stuck = swapped.pop(0) if swapped else waiting.pop(head)
                self.dropped += 1
                self.notes.append(f"request {stuck.id} could not get its KV blocks: dropped")
                continue
            cached = live if self.kv_cap is None else sum(min(r.computed, cap) for r in running)
            t0 = env._now
            self.free_blocks = free
            yield from iteration(new, ctx, kv_read, redo, decode, swap_out, swap_in,
                                 batch.swap_out_runs, batch.swap_in_runs)
            t1 = env._now
            dt = t1 - kv_last_t
            if dt > 0:
                used = total_blocks - free
                kv_area += used * dt
                kv_slots_area += used * bs * dt
                kv_tokens_area += cached * dt
            kv_last_t = t1
            if rec is not None:
                rec.span(track, f"iteration ({len(b_req)} seqs)", t0, t1,
                         {"tokens": new, "running": len(running), "waiting": len(waiting) - head,
                          "swapped": len(swapped)})
            # 4. tokens out, completions
            decoders = done = out = 0
            for r in b_req:
                k = r.k
                c = r.computed = r.computed + k
                if c < r.prompt + r.generated:  # still prefilling
                    if r.last_t == t1:
                        out += 1
                    continue
                g = r.generated = r.generated + 1
                if store is not None and r.held < len(r.hashes):  # prompt computed: cache it
                    store.register(r.hashes[r.held:])
                    r.held = len(r.hashes)
                last = r.last_t
                if r.first_t < 0:
                    r.first_t, r.first_t0 = t1, t0
                    ttft.append(t1 - r.arrival)
                elif last >= t0 and k == 1:
                    decoders += 1
                else:
                    tbt.append((t1 - last, 1))
                r.last_t = t1
                out += 1
                if g >= r.output:
                    done += 1
            generated_total += out
            live += new
            if decoders:
                tbt.append((t1 - t0, decoders))
            if done:
                freed = pinned = 0
                keep = []
                for r in running:
                    if r.generated >= r.output:
                        if store is not None:
                            held = r.hashes[:r.held]
                            if r.answer:  # the answer's whole blocks join the cache too
                                store.register(r.answer)
                                held = held + r.answer  # released tail first: answer, then prompt
                            pinned += store.release(held, t1, r.id, r.blocks)
                            r.held = 0
                        freed += r.blocks
                        live -= r.computed
                        r.blocks = 0
                        self.completed += 1
                        if r.host:  # its kept host copy goes with it
                            self._release_host(r)
                    else:
                        keep.append(r)
                running = keep
                free += freed - pinned  # pinned blocks keep their room until their ttl ends
                self.free_blocks = free
                self._kv_bytes(freed, 0)
            cached = live if self.kv_cap is None else sum(min(r.computed, cap) for r in running)
        now = env._now
        dt = now - kv_last_t
        if dt > 0:
            used = total_blocks - free
            kv_area += used * dt
            kv_slots_area += used * bs * dt
            kv_tokens_area += cached * dt
        self.kv_last_t = now
        self.kv_area, self.kv_slots_area, self.kv_tokens_area = kv_area, kv_slots_area, kv_tokens_area
        self.free_blocks = free
        self.generated_total = generated_total

    def _decode_run(self, running: list[Req], now: float, arrival: float | None,
                    free: int) -> tuple[list[float], list[int]]:
        """The decode-only iterations that can run back to back from ``now`` (their durations and
        the new blocks each takes): every running request decodes, none finishes, the free blocks
        cover every block a request starts, no request arrives before an iteration starts. The
        scheduler would build the same batch each time, and each is timed as ``_iteration``
        times it."""
        n = len(running)
        if n < 1 or n > self.policy.max_num_batched_tokens:
            return [], []
        bs = self.policy.block_size
        k = 1 << 30
        ctx = 0
        for r in running:
            pg = r.prompt + r.generated
            if not r.generated or r.computed != pg - 1 or r.last_t != now:
                return [], []
            k = min(k, r.output - r.generated - 1)
            ctx += pg
        if k < 2:
            return [], []
        need = [0] * k  # blocks started at step j: request r's token pg + j opens a block
        for r in running:
            for j in range(r.blocks * bs - (r.prompt + r.generated) + 1, k, bs):
                need[j] += 1
        steps: list[float] = []
        t = now
        tc = self.tc
        compute = self._compute_time if tc.pp > 1 or tc.tp > 1 else None
        if compute is None:  # _compute_time's sums inlined: the dense part is the same each step
            dense_rate, attn_rate, bw, launch = self._rates[True]
            dense = max(n * tc.flops_per_token / dense_rate,
                        (tc.weight_bytes * self._routed_share(n) + n * tc.activation_bytes_per_token)
                        / bw) + launch
            fa, kb, launches = tc.attn_flops_per_token_ctx, tc.kv_bytes_per_token, self.launches
        for j in range(k):
            if (arrival is not None and t >= arrival) or need[j] > free:
                break
            free -= need[j]
            if compute is None:
                dt = dense + (max(ctx * fa / attn_rate, (ctx + n) * kb / bw) + launch) + launches
            else:
                dt = compute(n, ctx, ctx, True)
            steps.append(dt)
            t += dt
            ctx += n
        if len(steps) < 2:
            return [], []
        return steps, need[:len(steps)]

    def _head_blocked(self, r: Req, n: int, free: int) -> bool:
        """Whether the first waiting request stays out of every decode-only iteration from now
        while the free blocks only shrink: the batch is full, or even its smallest first chunk
        (no cached prefix at all) needs more blocks than are free. The scheduler would try it
        each iteration and give up, so the iterations can still run in one go."""
        pol = self.policy
        budget = pol.max_num_batched_tokens - n
        if n >= pol.max_num_seqs or budget <= 0:
            return True
        return -(-min(r.prompt + r.generated, budget) // pol.block_size) - r.blocks > free

    def _swap_bytes(self, blocks: int) -> None:
        """Swap-tier bytes for ``blocks`` more (fewer, if negative) blocks of kept host copies."""
        pool = self.clock.pools[self.swap_tier]
        if blocks > 0:
            pool.alloc("kv swap", blocks * self.block_bytes, "swap out")
        else:
            pool.free("kv swap", -blocks * self.block_bytes)

    def _release_host(self, r: Req) -> None:
        """A finished request's kept host copy (swap reuse) gives its swap space back."""
        self.retained = [x for x in self.retained if x is not r]
        self.swap_used -= r.host
        self._swap_bytes(-r.host)
        r.host = r.valid = 0

    def _kv_bytes(self, given: int, taken: int) -> None:
        """Pool bytes for blocks given back, then taken (same instant: the peak is not inflated)."""
        for tier, frac in self.kv_frac.items():
            pool = self.clock.pools[tier]
            if given:
                pool.free("kv", int(given * self.block_bytes * frac))
            if taken:
                pool.alloc("kv", int(taken * self.block_bytes * frac), "kv blocks")

    def lookup(self, r: Req) -> int:
        """The prefix cache's hit blocks for ``r`` (``scheduler.Prefix``), ``r.computed`` the
        tokens they hold; a lookup is reused while the store has not changed."""
        store = self.store
        if not r.hashes:
            return 0
        if r.seen[0] == store.epoch:  # nothing changed since it last looked
            _, hit, r.computed = r.seen
            return hit
        hit, r.computed = store.lookup(r.hashes, r.prompt)
        if hit and self.loader is not None:
            hit, r.computed = self._worth_loading(r, hit, r.computed)
        r.seen = (store.epoch, hit, r.computed)
        return hit

    def admit(self, r: Req, hit: int) -> None:
        """``r`` was admitted (``scheduler.Prefix``): reference its hit blocks, count the tokens
        lower tiers serve (copied in before the iteration) and, once, its hit rate."""
        store = self.store
        if not r.hashes:
            return
        served = store.acquire(r.hashes[:hit], r.computed)
        r.held = hit
        for tier, n in served.items():
            if n and tier != self.fast:
                self.kv_loads[tier] = self.kv_loads.get(tier, 0) + n
        if not r.looked:
            r.looked = True
            store.count(served, r.prompt)

    def _iteration(self, new: int, ctx: int, kv_read: int, redo: int, decode: bool,
                   swap_out: int, swap_in: int, out_runs: list[int] | None = None,
                   in_runs: list[int] | None = None):
        """One forward pass over the batch: swaps first (``memsim.sim.swap``: beside it, layer by
        layer, with ``serving.swap.overlap``), then compute overlapped with streaming (after it,
        with ``prefetch_depth: 0``); ``out_runs``/``in_runs``: blocks swapped per request."""
        env, copier, fast = self.env, self.clock.copier, self.fast
        t0 = env._now
        loads, self.kv_loads = self.kv_loads, {}
        evs, overlapped = [], []
        for tier, n in loads.items():  # cached prefixes from lower tiers (kvload.PrefixLoader)
            head, rest = self.loader.start(env, copier, tier, n)
            evs.append(head)
            if rest is not None:
                overlapped.append(rest)
        reuse, swap_rest = self.swap_cost.reuse, []
        if swap_out or swap_in:
            out_runs = out_runs or ([swap_out] if swap_out else [])
            in_runs = in_runs or ([swap_in] if swap_in else [])
            head, swap_rest = start_swaps(
                env, copier, self.swap_cost, self.swap_stats, fast, self.swap_tier,
                self.block_bytes, out_runs, in_runs, 0 if reuse else swap_out * self.block_bytes,
                len(out_runs) + len(in_runs))
            evs += head
            overlapped += swap_rest
        if evs:
            yield env.all_of(evs)
        if swap_in and not reuse and not swap_rest:  # moved, not duplicated: the host copy goes
            self.clock.pools[self.swap_tier].free("kv swap", swap_in * self.block_bytes)
        t_swap = env._now
        compute = self._compute_time(new, ctx, kv_read, decode)
        copy = copier.copy
        routed = self._routed_share(new)  # MoE: only the experts this iteration's tokens pick
        streams = [copy(tier, fast, int(nbytes * routed), "weights (streamed)", "iteration", alloc=0)
                   for tier, nbytes in self.streamed_w_items]
        if self.kv_streamed:
            kv_bytes = kv_read * self.tc.kv_bytes_per_token
            streams += [copy(tier, fast, int(kv_bytes * frac), "kv (streamed)", "iteration",
                             alloc=0)
                        for tier, frac in self.kv_streamed]
        if streams and self.plan.prefetch_depth == 0:  # synchronous loads (vLLM's
            yield env.all_of(streams)                    # cpu_offload_gb): compute waits
            streams = []
        streams += overlapped  # cached-prefix loads stream beside the compute (sim/kvload.py)
        done = self._compute_done(compute)
        yield env.all_of([done, *streams]) if streams else done
        if swap_in and not reuse and swap_rest:  # overlapped swap-in: its source freed once in
            self.clock.pools[self.swap_tier].free("kv swap", swap_in * self.block_bytes)
        share = redo / new if new else 0.0
        acct = self.acct
        acct["compute"] += compute * (1 - share)
        acct["recompute"] += compute * share
        extra = env._now - t_swap - compute  # streaming that compute did not hide
        acct["exposed_transfer"] += (t_swap - t0) + (extra if extra > 1e-9 * compute else 0.0)

    def _compute_done(self, compute: float):
        """The event of the iteration's compute ending (memsim.sim.virtual_engines: through the
        pipeline's stages)."""
        return self.env.timeout(compute)

    def _routed_share(self, new: int) -> float:
        """Share of the weight bytes an iteration of ``new`` tokens reads (1 unless MoE)."""
        tc = self.tc
        if not tc.routed_expert_bytes or not tc.weight_bytes or self.plan.expert_fetch == "layer":
            return 1.0
        return weight_bytes_read(tc, new) / tc.weight_bytes

    def _compute_time(self, new: int, ctx: int, kv_read: int, decode: bool) -> float:
        """Roofline of one iteration: dense part, attention part, a launch per layer and part
        (``Compute.op_time`` with the unit's rates looked up once per phase)."""
        tc = self.tc
        dense_rate, attn_rate, bw, launch = self._rates[decode]
        dense = max(new * tc.flops_per_token / dense_rate,
                    (tc.weight_bytes * self._routed_share(new) + new * tc.activation_bytes_per_token) / bw
                    ) + launch
        attn = max(ctx * tc.attn_flops_per_token_ctx / attn_rate,
                   (kv_read + new) * tc.kv_bytes_per_token / bw) + launch
        if tc.pp > 1 or tc.tp > 1:  # one GPU's share of each stage, stages one after another
            return tc.pp * (dense + attn + self.launches + tp_comm_seconds(self.sys, tc, new))
        return dense + attn + self.launches

    # -- result ---------------------------------------------------------------------------------

    def _result(self, wall_s: float) -> Result:
        clock = self.clock
        makespan = self.env.now
        n = len(self.trace.requests)
        gen = self.generated_total
        meta = self.trace.meta
        flops = float(meta.get("flops_per_step") or 0.0)
        peak = peak_flops(self.unit, self.dtype)
        block_on_tier = int(self.block_bytes * self.kv_frac.get(self.kv_pool_tier, 1.0))
        stats = ServingStats(
            requests=n, completed=self.completed,
            ttft_s=_quantiles([(v, 1) for v in self.ttft]), tbt_s=_quantiles(self.tbt),
            throughput_tokens_per_s=gen / makespan if makespan > 0 else 0.0,
            kv_utilization=(self.kv_area / (self.total_blocks * makespan)
                            if makespan > 0 and self.total_blocks else 0.0),
            kv_fragmentation=(1 - self.kv_tokens_area / self.kv_slots_area
                              if self.kv_slots_area > 0 else 0.0),
            preemptions=self.preemptions, dropped=self.dropped,
            kv_pool_blocks=self.total_blocks, kv_block_tokens=self.policy.block_size,
            kv_blocks=self.total_blocks, kv_pool_bytes=self.total_blocks * block_on_tier,
            kv_block_bytes=block_on_tier,
            kv_pool_tier=self.kv_pool_tier, largest_request_tokens=self.max_len,
            swap_seconds=self.swap_stats.seconds, swap_bytes=self.swap_stats.bytes,
            swap_copies=self.swap_stats.copies,
            prefix_hit_rate=self.store.hit_rate if self.store is not None else 0.0,
            prefix_hits_by_tier=dict(self.store.hits_by_tier) if self.store is not None else {})
        if self.at_last is not None:
            first_t, last_t, done, queued = self.at_last
            stats.overloaded, stats.overload_reason = overload_verdict(
                n - self.dropped, first_t, last_t, done, queued, self.preemptions)
        return Result(
            feasible=clock.oom is None and self.dropped == 0,
            step_time_s=makespan,
            tokens_per_s=stats.throughput_tokens_per_s,
            tokens_per_step=gen,
            mfu=flops / (makespan * peak) if makespan > 0 and peak > 0 else 0.0,
            breakdown={k: self.acct[k] for k in sorted(self.acct)},
            oom=clock.oom, serving=stats, events=clock.events, wall_s=wall_s,
            notes=list(self.trace.meta.get("workload_notes") or []) + sorted(set(self.notes + clock.notes)),
            timeline=clock.recorder.finish() if clock.recorder is not None else None,
            **common_fields(clock, makespan),
        )


def _quantiles(samples: list[tuple[float, int]]) -> dict[str, float]:
    """p50/p90/p99 (nearest rank) and mean of weighted samples ``(value, count)``; a run of
    100,000 requests has about a million TBT samples, so the sort is numpy's."""
    if not samples:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0}
    arr = np.array(samples, dtype=float)
    order = np.argsort(arr[:, 0], kind="stable")
    values, counts = arr[order, 0], arr[order, 1].astype(np.int64)
    cum = np.cumsum(counts)
    total = int(cum[-1])
    out = {}
    for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
        rank = max(1, math.ceil(q * total))
        out[name] = float(values[int(np.searchsorted(cum, rank, side="left"))])
    out["mean"] = math.fsum((values * counts).tolist()) / total
    return out


def simulate_serving(system: System, trace: Trace, plan: Plan, *, timeline: bool = False) -> Result:
    if trace.requests is None or len(trace.requests) == 0:
        raise ValueError(f"serving trace {trace.name!r} has no requests")
    from memsim.sim.virtual_engines import pipelined, serve_virtual_engines

    if pipelined(trace):  # vLLM's virtual engines: one scheduler per pipeline stage
        return serve_virtual_engines(system, trace, plan, timeline)
    return ServingEngine(system, trace, plan, timeline).run()
