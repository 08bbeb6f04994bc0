"""A prefix cache of KV blocks kept after their request, in the HBM pool left free.

vLLM's automatic prefix caching (docs: "Automatic Prefix Caching", design/v1/prefix_caching):
every full block of a prompt is named by a hash chained over the blocks before it; a block
a request no longer needs stays cached (still counted as free) until the allocator needs the
room, then the least recently used one is evicted; a new request skips the prefill of its
leading blocks that are cached. Blocks of running requests are referenced (never evicted) and
shared: a second request with the same prefix hits them too.

Names are the trace's ``hash_ids`` (Mooncake's format: one id per ``block_tokens`` = 512
tokens, prefix-chained, so a hit on block *i* implies the blocks before it were the same).
Capacity is counted in the scheduler's paged blocks: an evictable cached block costs
``ceil(block_tokens / block_size)`` of them, and the evictable set never exceeds the pool's free
blocks. Simplification: a request that hits a block another running request holds still
allocates its own copy in the paged pool (memory is counted as without sharing).

Lower tiers (``serving.kv_cache.tiers``, e.g. DRAM then NVMe, as LMCache's local CPU and disk
backends or Mooncake's store) form an exclusive LRU chain: a block evicted from HBM is demoted to
the first lower tier, whose own LRU victim goes to the next, and the last one drops it. A hit in
a lower tier promotes the block back (it leaves that tier) and its bytes are copied to HBM before
the iteration that uses them, like a swap-in (no layer-wise overlap with prefill yet). The whole
chain behaves as one LRU stack, so more capacity in any tier never lowers the hit rate.

Which evictable HBM block goes first (``serving.kv_cache.eviction``):
- ``lru``: the least recently released.
- ``lfu``: the one hit least often (ties: least recent), which keeps a shared system prompt that
  a burst of one-off prompts would flush out of an LRU.
- ``ttl``: Continuum's time-to-live (Lin et al., "Continuum: Efficient and Robust Multi-Turn LLM
  Agent Scheduling with KV Cache Time-to-Live", 2025): a finished request's blocks stay *pinned*
  in HBM for ``ttl_s`` — not evictable, and not free for other requests — betting that the same
  session comes back (an agent's tool call returns) before then; at expiry they become LRU
  blocks. The bet costs pool space that waiting requests cannot use.
- ``predict``: one bit of prediction per released block, "will a later request use it again",
  as in Antoniadis et al., "Paging with Succinct Predictions" (ICML 2023): blocks predicted dead
  go first (least recent first), then the rest by LRU. The bits come from the trace itself (a
  block's last use), each flipped with probability ``prediction_error`` (seeded), so the
  policy's value can be read as a function of the predictor's accuracy.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import OrderedDict
from collections.abc import Sequence
from itertools import groupby

EVICTIONS = ("lru", "lfu", "ttl", "predict")


class _Ranked:
    """Evictable blocks ordered by a key, smallest evicted first (a heap with lazy deletion); the
    same few operations as the OrderedDict an LRU uses."""

    def __init__(self) -> None:
        self.key: dict[int, tuple] = {}
        self.heap: list[tuple[tuple, int]] = []

    def __contains__(self, h: int) -> bool:
        return h in self.key

    def __len__(self) -> int:
        return len(self.key)

    def __delitem__(self, h: int) -> None:
        del self.key[h]

    def put(self, h: int, key: tuple) -> None:
        self.key[h] = key
        heapq.heappush(self.heap, (key, h))
        if len(self.heap) > 4 * len(self.key) + 64:  # drop stale entries now and then
            self.heap = [(k, b) for b, k in self.key.items()]
            heapq.heapify(self.heap)

    def popitem(self, last: bool = False) -> tuple[int, None]:
        heap, key = self.heap, self.key
        while True:
            k, h = heapq.heappop(heap)
            if key.get(h) == k:
                del key[h]
                return h, None


class PrefixStore:
    """Referenced blocks (held by running requests) plus evictable ones in LRU order."""

    def __init__(self, block_tokens: int, block_size: int, tier: str,
                 lower: Sequence[tuple[str, int]] = (), eviction: str = "lru", ttl_s: float = 0.0,
                 last_use: dict[int, int] | None = None, prediction_error: float = 0.0,
                 seed: int = 0):
        if eviction not in EVICTIONS:
            raise ValueError(f"eviction {eviction!r} is not one of {', '.join(EVICTIONS)}")
        self.block_tokens, self.tier, self.eviction = block_tokens, tier, eviction
        self.cost = math.ceil(block_tokens / block_size)  # paged blocks per cached block
        self.refs: dict[int, int] = {}
        # evictable HBM blocks, first to go first: an OrderedDict for LRU, else ranked by a key
        self.lru: OrderedDict[int, None] | _Ranked = OrderedDict() if eviction in ("lru", "ttl") \
            else _Ranked()
        self.seq = 0  # release counter: recency
        self.freq: dict[int, int] = {}  # lfu: uses of each block
        self.ttl_s = ttl_s
        self.pinned: dict[int, tuple[float, int]] = {}  # ttl: block → (expiry, paged blocks held)
        self.expiry: list[tuple[float, int]] = []  # heap of (expiry, block), lazily deleted
        self.unpinned = 0  # paged blocks unpinned by a hit since the caller last looked
        self.last_use = last_use or {}  # predict: block → index of the last request using it
        self.rng = random.Random(seed)
        self.prediction_error = prediction_error
        # lower tiers, fastest first: (tier, capacity in cached blocks, its LRU)
        self.lower = [(t, cap, OrderedDict()) for t, cap in lower]
        self.hits_by_tier: dict[str, int] = {tier: 0, **{t: 0 for t, _ in lower}}
        self.hit_tokens = 0
        self.prompt_tokens = 0
        self.epoch = 0  # bumped by every change, so a lookup can be reused while it holds
        # where each cached block is: 0 in HBM (referenced, evictable or pinned), i + 1 in lower
        # tier i (one dict, so a lookup is one membership test per block)
        self.where: dict[int, int] = {}
        self.lower_names = [tier, *(t for t, _ in lower)]

    def lookup(self, hashes: Sequence[int], prompt: int) -> tuple[int, int]:
        """(leading cached blocks of ``hashes``, prompt tokens they hold), without touching them;
        at most ``prompt - 1`` tokens: the last prompt token is always computed, as vLLM does."""
        found = list(map(self.where.__contains__, hashes))  # (C-speed: prompts are long)
        hit = found.index(False) if False in found else len(found)
        return hit, min(hit * self.block_tokens, prompt - 1)

    def runs(self, hashes: Sequence[int]) -> list[list]:
        """Where the leading cached blocks of ``hashes`` are, as runs ``[tier, blocks]`` in order
        (one pass; stops at the first block cached nowhere)."""
        names = self.lower_names
        out: list[list] = []
        for t, group in groupby(map(self.where.get, hashes)):
            if t is None:
                break
            out.append([names[t], len(list(group))])
        return out

    def acquire(self, hashes: Sequence[int], tokens: int) -> dict[str, int]:
        """Reference the hit blocks holding ``tokens`` prompt tokens, promoting those found in a
        lower tier; returns the tokens served from each tier (lower ones must be copied in)."""
        self.epoch += 1
        where, names, pinned, bt = self.where, self.lower_names, self.pinned, self.block_tokens
        served = dict.fromkeys(self.hits_by_tier, 0)
        lower = 0  # tokens served from lower tiers; the rest came from HBM
        for i, h in enumerate(hashes):
            if pinned and h in pinned:  # the session came back within its time-to-live
                self.unpinned += pinned.pop(h)[1]
                continue
            t = where.get(h)
            if t:  # promoted from lower tier t - 1
                del self.lower[t - 1][2][h]
                where[h] = 0
                n = min(bt, max(0, tokens - i * bt))
                served[names[t]] += n
                lower += n
        served[self.tier] += min(max(0, tokens), len(hashes) * bt) - lower
        self.register(hashes)
        return served

    def count(self, served: dict[str, int], prompt: int) -> None:
        """A request's first admission: its prompt and the part of it served from each tier."""
        for tier, n in served.items():
            self.hits_by_tier[tier] += n
            self.hit_tokens += n
        self.prompt_tokens += prompt

    def register(self, hashes: Sequence[int]) -> None:
        """A request holds these blocks (hit or computed): reference them, off the LRU list."""
        self.epoch += 1
        refs, lru, where = self.refs, self.lru, self.where
        if self.eviction == "lfu":
            freq = self.freq
            for h in hashes:
                freq[h] = freq.get(h, 0) + 1
        for h in hashes:
            if h in refs:
                refs[h] += 1
            else:
                if h in lru:
                    del lru[h]
                elif h in self.pinned:
                    self.unpinned += self.pinned.pop(h)[1]
                else:  # computed anew: drop a stale lower-tier copy, the chain stays exclusive
                    t = where.get(h)
                    if t:
                        del self.lower[t - 1][2][h]
                refs[h] = 1
                where[h] = 0

    def release(self, hashes: Sequence[int], now: float | None = None, rid: int = -1,
                blocks: int = 0) -> int:
        """The request (index ``rid``) let go of its blocks: unreferenced ones become evictable,
        the chain's tail first in line (vLLM frees a request's blocks in reverse so the shared
        root lasts), or, when it finished at ``now``, pinned until ``now + ttl_s`` (a preempted
        request's are not: it comes back itself), holding at most the request's ``blocks``
        paged blocks. Returns the paged blocks pinned."""
        refs, lru, ev = self.refs, self.lru, self.eviction
        self.epoch += 1
        pinned = 0
        for h in reversed(hashes):
            n = refs.get(h, 0) - 1
            if n > 0:
                refs[h] = n
                continue
            if n < 0:
                continue
            del refs[h]
            self.seq += 1
            if ev == "lru":
                lru[h] = None
            elif ev == "ttl":
                c = min(self.cost, blocks - pinned)
                if self.ttl_s > 0 and now is not None and c > 0:
                    t = now + self.ttl_s
                    self.pinned[h] = (t, c)
                    heapq.heappush(self.expiry, (t, h))
                    pinned += c
                else:
                    lru[h] = None
            elif ev == "lfu":
                lru.put(h, (self.freq.get(h, 1), self.seq))
            else:  # predict: dead blocks (bit 0) sort first
                alive = self.last_use.get(h, -1) > rid
                if self.prediction_error and self.rng.random() < self.prediction_error:
                    alive = not alive
                lru.put(h, (int(alive), self.seq))
        return pinned

    def expire(self, now: float) -> int:
        """Unpin the blocks whose time-to-live has passed (they turn LRU-evictable); returns the
        paged blocks given back to the free pool."""
        heap, pinned, lru = self.expiry, self.pinned, self.lru
        back = 0
        while heap and heap[0][0] <= now:
            t, h = heapq.heappop(heap)
            got = pinned.get(h)
            if got is not None and got[0] == t:
                del pinned[h]
                lru[h] = None
                back += got[1]
                self.epoch += 1
        return back

    def next_expiry(self) -> float | None:
        """When the earliest pinned block turns evictable (None: nothing pinned)."""
        heap, pinned = self.expiry, self.pinned
        while heap and pinned.get(heap[0][1], (None,))[0] != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def fit(self, free_blocks: int) -> None:
        """Evict least recently used blocks until the evictable set fits the free pool."""
        lru, where = self.lru, self.where
        n = len(lru) - max(0, free_blocks) // self.cost
        if n <= 0:
            return
        self.epoch += n
        chain = [(i, cap, lv) for i, (_, cap, lv) in enumerate(self.lower, 1) if cap > 0]
        for _ in range(n):
            h, _ = lru.popitem(last=False)
            for i, cap, lv in chain:  # demote down the chain; the last tier drops it
                lv[h] = None
                where[h] = i
                if len(lv) <= cap:
                    break
                h, _ = lv.popitem(last=False)
            else:
                del where[h]

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
