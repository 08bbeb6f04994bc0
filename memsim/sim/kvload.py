"""What loading a cached prefix from a lower tier costs, and whether it beats recomputing it.

LMCache (docs.lmcache.ai; Liu et al., "LMCache", 2025) moves KV between its CPU/disk store and
the GPU in chunks of ``chunk_size`` = 256 tokens, and can load layer by layer so layer *l+1*'s KV
arrives while layer *l*'s attention runs; CachedAttention (Gao et al., ATC'24) pipelines the same
way. Each chunk of each layer is its own transfer and pays the route's latency; the bytes go at
the route's bottleneck. Loading pays off only when that is quicker than the prefill compute the
hit saves, so each request takes the cut of its cached prefix that costs least: blocks in HBM
are free, a lower-tier block costs its load, and everything after the cut is recomputed at the
prefill roofline (dense FLOPs per token plus attention over the growing context).

With ``load: layerwise`` the iteration waits for the first layer's share of the load, then
computes while the rest streams (the longer of the two); ``load: blocking`` copies everything
before the iteration computes, as a swap-in does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from memsim.hardware.topology import Topology
from memsim.workloads.trace import TokenCosts

LMCACHE_CHUNK_TOKENS = 256  # LMCache's default chunk_size (docs.lmcache.ai, configuration)


class PrefixLoader:
    """Load-time and recompute-time estimates for the cached prefix of one request."""

    def __init__(self, topo: Topology, fast: str, tc: TokenCosts, layers: int,
                 prefill_rates: tuple[float, float], layerwise: bool, chunk_tokens: int):
        self.topo, self.fast, self.tc = topo, fast, tc
        self.layers, self.layerwise, self.chunk = layers, layerwise, chunk_tokens
        self.dense_rate, self.attn_rate = prefill_rates
        self._link: dict[str, tuple[float, float]] = {}

    def link(self, tier: str) -> tuple[float, float]:
        """(latency per transfer, bytes/s) from ``tier`` to the compute tier."""
        got = self._link.get(tier)
        if got is None:
            lat = self.topo.route(tier, self.fast).latency + self.topo.system.tiers[tier].latency
            got = self._link[tier] = (lat, self.topo.bottleneck(tier, self.fast))
        return got

    def transfers(self, tokens: int) -> int:
        """Copies a load of ``tokens`` takes: one per chunk, per layer when loading layer-wise."""
        return math.ceil(tokens / self.chunk) * (self.layers if self.layerwise else 1)

    def load_time(self, tier: str, tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        lat, bw = self.link(tier)
        return self.transfers(tokens) * lat + tokens * self.tc.kv_bytes_per_token / bw

    def recompute_time(self, start: int, tokens: int) -> float:
        """Prefill compute of prompt tokens ``start .. start + tokens`` (the roofline's compute
        side: the weights are read once per iteration anyway)."""
        if tokens <= 0:
            return 0.0
        ctx = tokens * start + tokens * (tokens + 1) / 2
        return (tokens * self.tc.flops_per_token / self.dense_rate
                + ctx * self.tc.attn_flops_per_token_ctx / self.attn_rate)

    def best_cut(self, runs: Sequence[Sequence], block_tokens: int, hit_tokens: int) -> int:
        """How many leading hit blocks to use (``runs``: ``[tier, blocks]`` in order, as
        ``PrefixStore.runs`` gives): the cut with the least load time of the lower-tier blocks
        before it plus recompute time after it. Within a run of lower-tier blocks the load grows
        linearly and the recompute of the rest is concave in the cut, so the best cut is at an
        end of a run: only those are tried."""
        total = sum(n for _, n in runs)
        if all(t == self.fast for t, _ in runs):
            return total
        best_j, best = 0, self.recompute_time(0, hit_tokens)
        loads: dict[str, int] = {}
        j = 0
        for tier, n in runs:
            lo = min(j * block_tokens, hit_tokens)
            j += n
            used = min(j * block_tokens, hit_tokens)
            if tier != self.fast:
                loads[tier] = loads.get(tier, 0) + used - lo
            cost = (sum(self.load_time(t, k) for t, k in loads.items())
                    + self.recompute_time(used, hit_tokens - used))
            if cost <= best:
                best_j, best = j, cost
        return best_j

    def start(self, env, copier, tier: str, tokens: int) -> tuple:
        """Start loading ``tokens`` from ``tier``: (event the iteration must wait for before it
        computes, event that may overlap its compute or None). Each copy pays the route latency
        once; the other transfers' latencies follow it."""
        lat, _ = self.link(tier)
        nbytes = tokens * self.tc.kv_bytes_per_token
        chunks = math.ceil(tokens / self.chunk)
        if not self.layerwise or self.layers == 1:
            return _chain(env, copier, tier, self.fast, nbytes, (chunks - 1) * lat), None
        first = nbytes // self.layers
        head = _chain(env, copier, tier, self.fast, first, (chunks - 1) * lat)
        rest = _chain(env, copier, tier, self.fast, nbytes - first,
                      (chunks * (self.layers - 1) - 1) * lat, after=head)
        return head, rest


def _chain(env, copier, src: str, dst: str, nbytes: int, extra_s: float, after=None):
    """A copy followed by ``extra_s`` of per-transfer latency; an event that fires at the end."""
    done = env.event()

    def run():
        if after is not None:
            yield after
        yield copier.copy(src, dst, nbytes, "kv cache load", "prefix cache load", alloc=0)
        if extra_s > 0:
            yield env.timeout(extra_s)
        done.succeed()

    env.process(run())
    return done
