"""Why a serving run left requests unserved: its KV pool holds fewer blocks than they need.

A request's KV must fit the pool whole (paged blocks of ``block_size`` tokens for its prompt plus
output), else the scheduler can never run it. No tier overflows then, so the per-tier diagnosis
has nothing to say; this one names the pool, the longest request and the bytes the pool's tier
lacks.
"""

from __future__ import annotations

from memsim import units
from memsim.contracts.result import Result
from memsim.errors import Diagnosis, Shortfall


def kv_pool_diagnosis(result: Result) -> Diagnosis | None:
    """The diagnosis of a serving run that dropped requests, or None when it dropped none."""
    s = result.serving
    if s is None or not s.dropped:
        return None
    tokens = s.largest_request_tokens
    need = -(-tokens // s.kv_block_tokens) if s.kv_block_tokens else 0
    which = "no request" if s.dropped >= s.requests else f"{s.dropped} of {s.requests} requests"
    if need <= s.kv_pool_blocks or s.kv_pool_tier is None:
        return Diagnosis(f"{s.dropped} of {s.requests} requests could not get their KV blocks "
                         f"from a pool of {s.kv_pool_blocks:,} blocks: dropped (see the notes)")
    tier = s.kv_pool_tier
    pool = s.kv_pool_blocks * s.kv_block_bytes
    short = (need - s.kv_pool_blocks) * s.kv_block_bytes
    cap = result.capacity_bytes.get(tier, 0)
    summary = (f"{which} fits the KV pool: the pool of {units.fmt_bytes(pool)} on {tier} "
               f"({s.kv_pool_blocks:,} blocks of {s.kv_block_tokens} tokens, what is left after "
               f"weights and workspace) holds fewer blocks than one request of {tokens:,} tokens "
               f"needs ({need:,}); {s.dropped} of {s.requests} requests never scheduled")
    longest = s.kv_pool_blocks * s.kv_block_tokens
    return Diagnosis(summary, [Shortfall(tier, cap + short, cap)],
                     [f"{tier} with at least {units.fmt_bytes(cap + short)} (+{units.fmt_bytes(short)})",
                      f"or requests of at most {longest:,} tokens (prompt + output)"])
