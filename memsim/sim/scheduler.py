"""The serving scheduler's policy: queues and free KV blocks in, one iteration's batch out.

vLLM's continuous batching (V1, chunked prefill) under ``max_num_batched_tokens`` and
``max_num_seqs``: running requests first, oldest first (one token per decoding request, the next
prompt chunk for a prefilling one); when one needs a block and none is free, the most recently
admitted request is preempted (LIFO) by *swap* while the swap tier has room, else by *recompute*;
then swapped-out requests come back; then waiting ones, first come first served. Nothing is
admitted in an iteration that preempted, as vLLM does.

No clock, no simpy, no pool bytes: ``schedule`` moves requests between the queues, sets each
batched request's tokens (``Req.k``) and blocks, and returns what the iteration computes and
copies. The engine (``memsim.sim.serving``) times it, books pool bytes and tells the prefix
cache; the prefix cache is consulted through ``Prefix`` (looked up before a waiting request is
admitted, told when it is) so admission sees hits in the order the cache changes. A new
scheduler is a new module with this function's signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from memsim.contracts.plan import ServingPolicy


class Request(Protocol):  # memsim.sim.serving.Req
    prompt: int
    output: int
    computed: int  # tokens whose KV is cached
    generated: int
    blocks: int  # KV blocks held on the pool
    swapped: int  # blocks held on the swap tier while swapped out
    k: int  # tokens scheduled in this iteration
    # swap reuse only (Swap.reuse): swap-tier blocks its kept host copy holds while it runs, and
    # how many leading blocks of that copy are still current
    host: int
    valid: int


class Prefix(Protocol):
    """The prefix cache as admission sees it."""

    def lookup(self, r: Request) -> int:
        """Set ``r.computed`` to the prompt tokens the cache holds for it; return its hit blocks."""

    def admit(self, r: Request, hit: int) -> None:
        """``r`` was admitted with its ``hit`` leading blocks from the cache: reference them."""


@dataclass
class Queues:
    """The scheduler's state between iterations."""

    running: list  # in admission order: preemption takes from the end
    waiting: list  # FIFO from index ``head``
    head: int
    swapped: list
    free: int  # free KV blocks of the pool
    live: int  # Σ computed tokens over running
    swap_used: int = 0  # blocks held on the swap tier
    retained: list = field(default_factory=list)  # running requests keeping a host copy (reuse)


@dataclass
class Swap:
    """Where a preempted request's blocks may go: ``block_bytes`` each, ``limit_bytes`` in all
    (``ServingPolicy.swap_bytes``); no tier (``enabled`` false): every preemption recomputes."""

    enabled: bool
    block_bytes: int
    limit_bytes: int
    reuse: bool = False  # a resumed request keeps its host copy (memsim.sim.swap, FastSwitch)


@dataclass
class Batch:
    """One iteration: ``running[:size]`` and ``running[admitted_from:]`` are the batched requests
    (each with ``Req.k`` tokens); token and KV sums for the iteration's timing; blocks given back
    and taken; blocks swapped out and in; the requests preempted, in order."""

    size: int = 0
    admitted_from: int = 0
    new: int = 0  # tokens computed
    ctx: int = 0  # Σ over new tokens of the context each attends to
    kv_read: int = 0  # KV tokens read
    redo: int = 0  # tokens recomputed after a preemption by recompute
    decode: bool = True  # every batched request decodes one token
    given: int = 0
    taken: int = 0
    swap_out: int = 0
    swap_in: int = 0
    preempted: list = field(default_factory=list)
    swap_out_runs: list = field(default_factory=list)  # blocks copied out, per request
    swap_in_runs: list = field(default_factory=list)  # blocks copied in, per request

    def requests(self, running: list) -> list:
        """The batched requests, in order."""
        i, n1 = self.size, self.admitted_from
        return running[:i] + running[n1:] if n1 < len(running) else running[:i]


NO_CAP = 1 << 62  # no KV budget: every token's KV is kept


def attended(k: int, c: int, cap: int) -> int:
    """Σ over ``k`` new tokens after ``c`` cached ones of the context each attends to, when at
    most ``cap`` tokens of KV are kept: k·c + k(k+1)/2 while the context fits."""
    if c + k <= cap:
        return k * c + k * (k + 1) // 2
    m = max(0, cap - c)  # tokens before the context reaches the cap
    return m * c + m * (m + 1) // 2 + (k - m) * cap


def preempt(r: Request, q: Queues, swap: Swap) -> int:
    """Swap ``r`` out (returns the blocks to copy) or drop its cache for recompute (returns 0).
    Its blocks return to the free list."""
    blocks = r.blocks
    q.free += blocks
    r.blocks = 0
    if swap.reuse:
        return _preempt_reusing(r, q, swap, blocks)
    if swap.enabled and (q.swap_used + blocks) * swap.block_bytes <= swap.limit_bytes:
        r.swapped = blocks
        q.swap_used += blocks
        q.swapped.append(r)
        return blocks
    r.computed = 0  # prompt and generated tokens are prefilled again
    q.waiting.insert(q.head, r)
    return 0


def _preempt_reusing(r, q: Queues, swap: Swap, blocks: int) -> int:
    """``preempt`` with FastSwitch's KV reuse: ``r.host`` blocks of swap space are still held by
    its host copy, whose first ``r.valid`` (whole) blocks are unchanged, so only the rest is
    copied; other requests' kept copies make room, oldest kept first, when the tier is full."""
    held, valid = r.host, r.valid
    if held:
        q.retained = [x for x in q.retained if x is not r]
    extra = max(0, blocks - held)
    limit = swap.limit_bytes // swap.block_bytes if swap.enabled else -1
    while q.swap_used + extra > limit and q.retained:
        x = q.retained.pop(0)
        q.swap_used -= x.host
        x.host = x.valid = 0
    r.host = r.valid = 0
    if swap.enabled and q.swap_used + extra <= limit:
        r.swapped = max(blocks, held)
        q.swap_used += extra
        q.swapped.append(r)
        return blocks - min(valid, blocks)
    q.swap_used -= held  # no room: its copy goes too, and it recomputes
    r.computed = 0
    q.waiting.insert(q.head, r)
    return 0


def schedule(q: Queues, pol: ServingPolicy, swap: Swap, prefix: Prefix | None = None,
             kv_cap: int | None = None) -> Batch:
    """Build one iteration's batch from ``q`` (updated in place). Hot: one pass over the running
    requests, so the per-request work is kept to local variables. ``kv_cap``: tokens of KV a
    request keeps at most (``serving.kv_budget``, StreamingLLM): it holds the blocks of that
    many and attends over them."""
    cap = kv_cap if kv_cap is not None else NO_CAP
    running, waiting, swapped = q.running, q.waiting, q.swapped
    bs, max_seqs, budget = pol.block_size, pol.max_num_seqs, pol.max_num_batched_tokens
    free, live, head = q.free, q.live, q.head
    new = ctx = kv_read = redo = 0
    decode = True
    given = taken = swap_out = swap_in = 0
    victims: list = []
    out_runs: list = []
    in_runs: list = []
    # 1. running requests, oldest first; preempt the newest when blocks run out
    i = 0
    n_run = len(running)  # refreshed whenever a preemption shortens running
    while i < n_run and budget > 0:
        r = running[i]
        c = r.computed
        pg = r.prompt + r.generated
        rem = pg - c
        if rem == 1:  # decoding (or a prompt's last token): the common case, same sums
            kept = pg if pg < cap else cap
            need = -(-kept // bs) - r.blocks
            if need <= 0 or need <= free:
                if need > 0:
                    free -= need
                    taken += need
                    r.blocks += need
                r.k = 1
                budget -= 1
                new += 1
                ctx += kept  # k·c + k(k+1)/2 with k = 1
                kv_read += kept
                if c < r.prompt:
                    decode = False
                i += 1
                continue
        k = rem if rem < budget else budget
        need = -(-min(c + k, cap) // bs) - r.blocks
        if need > free:
            q.free = free
            while need > q.free and len(running) - 1 > i:
                victim = running.pop()
                given += victim.blocks
                live -= victim.computed
                copied = preempt(victim, q, swap)
                if copied:
                    swap_out += copied
                    out_runs.append(copied)
                victims.append(victim)
            if need > q.free:  # r itself must go
                running.pop(i)
                given += r.blocks
                live -= c
                copied = preempt(r, q, swap)
                if copied:
                    swap_out += copied
                    out_runs.append(copied)
                victims.append(r)
                free = q.free
                n_run = len(running)
                continue
            free = q.free
            n_run = len(running)
        if need > 0:
            free -= need
            taken += need
            r.blocks += need
        r.k = k
        budget -= k
        new += k
        ctx += attended(k, c, cap)
        kv_read += min(c + k, cap)
        if k != 1 or c < r.prompt:
            decode = False
        if r.generated and c < pg - 1:
            redo += min(k, pg - 1 - c)
        i += 1
    preempted = bool(victims)
    # the batch so far is running[:i] (preemption only takes requests after i); what phases 2
    # and 3 admit is appended to running after n1
    n1 = len(running)
    # 2. swapped-out requests come back first (none preempted this iteration)
    while swapped and not preempted and len(running) < max_seqs and budget > 0:
        r = swapped[0]
        c = r.computed
        k = min(r.prompt + r.generated - c, budget)
        need = max(r.swapped, -(-min(c + k, cap) // bs))
        if need > free:
            break
        swapped.pop(0)
        free -= need
        taken += need
        swap_in += r.swapped
        in_runs.append(r.swapped)
        if swap.reuse:  # the host copy stays, its whole blocks reusable at the next swap-out
            r.host, r.valid = r.swapped, min(r.swapped, c // bs)
            q.retained.append(r)
        else:
            q.swap_used -= r.swapped
        r.blocks, r.swapped = need, 0
        running.append(r)
        live += c
        r.k = k
        budget -= k
        new += k
        ctx += attended(k, c, cap)
        kv_read += min(c + k, cap)
        decode = decode and k == 1 and c >= r.prompt
    # 3. waiting requests, first come first served (none after a preemption, as vLLM)
    while (head < len(waiting) and not swapped and not preempted
           and len(running) < max_seqs and budget > 0):
        r = waiting[head]
        hit = 0
        if prefix is not None and r.computed == 0:
            hit = prefix.lookup(r)
        c = r.computed
        k = min(r.prompt + r.generated - c, budget)
        need = -(-min(c + k, cap) // bs) - r.blocks
        if need > free:
            r.computed = 0
            break
        head += 1
        if prefix is not None:
            prefix.admit(r, hit)
        free -= need
        taken += need
        r.blocks += need
        running.append(r)
        live += c
        r.k = k
        budget -= k
        new += k
        ctx += attended(k, c, cap)
        kv_read += min(c + k, cap)
        decode = decode and k == 1 and c >= r.prompt  # a decode instance's handed-off request
        if r.generated:
            redo += min(k, r.prompt + r.generated - 1 - c)
    q.free, q.live, q.head = free, live, head
    return Batch(i, n1, new, ctx, kv_read, redo, decode, given, taken, swap_out, swap_in, victims,
                 out_runs, in_runs)
