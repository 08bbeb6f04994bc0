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
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence


class PrefixStore:
    """Referenced blocks (held by running requests) plus evictable ones in LRU order."""

    def __init__(self, block_tokens: int, block_size: int, tier: str,
                 lower: Sequence[tuple[str, int]] = ()):
        self.block_tokens, self.tier = block_tokens, tier
        self.cost = math.ceil(block_tokens / block_size)  # paged blocks per cached block
        self.refs: dict[int, int] = {}
        self.lru: OrderedDict[int, None] = OrderedDict()  # least recently used first
        # lower tiers, fastest first: (tier, capacity in cached blocks, its LRU)
        self.lower = [(t, cap, OrderedDict()) for t, cap in lower]
        self.hits_by_tier: dict[str, int] = {tier: 0, **{t: 0 for t, _ in lower}}
        self.hit_tokens = 0
        self.prompt_tokens = 0

    def lookup(self, hashes: Sequence[int], prompt: int) -> tuple[int, int]:
        """(leading cached blocks of ``hashes``, prompt tokens they hold), without touching them;
        at most ``prompt - 1`` tokens: the last prompt token is always computed, as vLLM does."""
        refs, lru = self.refs, self.lru
        hit = 0
        lower = [lv for _, _, lv in self.lower]
        for h in hashes:
            if h not in refs and h not in lru and not any(h in lv for lv in lower):
                break
            hit += 1
        return hit, min(hit * self.block_tokens, prompt - 1)

    def acquire(self, hashes: Sequence[int], tokens: int) -> dict[str, int]:
        """Reference the hit blocks holding ``tokens`` prompt tokens, promoting those found in a
        lower tier; returns the tokens served from each tier (lower ones must be copied in)."""
        served = dict.fromkeys(self.hits_by_tier, 0)
        left = tokens
        for h in hashes:
            n = min(self.block_tokens, left)
            left -= n
            tier = self.tier
            if h not in self.refs and h not in self.lru:
                for t, _, lv in self.lower:
                    if h in lv:
                        del lv[h]
                        tier = t
                        break
            served[tier] += n
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
        refs, lru = self.refs, self.lru
        for h in hashes:
            if h in refs:
                refs[h] += 1
            else:
                if h in lru:
                    del lru[h]
                else:  # computed anew: drop a stale lower-tier copy, the chain stays exclusive
                    for _, _, lv in self.lower:
                        lv.pop(h, None)
                refs[h] = 1

    def release(self, hashes: Sequence[int]) -> None:
        """The request let go of its blocks: unreferenced ones become evictable, the chain's tail
        first in line (vLLM frees a request's blocks in reverse so the shared root lasts)."""
        refs, lru = self.refs, self.lru
        for h in reversed(hashes):
            n = refs.get(h, 0) - 1
            if n > 0:
                refs[h] = n
            elif n == 0:
                del refs[h]
                lru[h] = None

    def fit(self, free_blocks: int) -> None:
        """Evict least recently used blocks until the evictable set fits the free pool."""
        lru, keep = self.lru, max(0, free_blocks) // self.cost
        while len(lru) > keep:
            h, _ = lru.popitem(last=False)
            for _, cap, lv in self.lower:  # demote down the chain; the last tier drops it
                if cap <= 0:
                    continue
                lv[h] = None
                if len(lv) <= cap:
                    break
                h, _ = lv.popitem(last=False)

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
