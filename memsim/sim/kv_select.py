"""Kept and fetched KV in a program (``inference.kv_budget`` / ``kv_prefetch``,
memsim.workloads.kv_budget).

Two things the engine must do differently, decided here:

* the share of ``L{layer}.kv`` each op touches: the cache holds ``kept`` tokens per sequence at
  the end, so decode step t reads min(prompt + t + 1, cap) of them — and attention only the
  ``top_k`` a selector chose — and writes one token's slot (a kept token evicted or not, the
  bytes written are one token's);
* homes: the selector copy ``L{layer}.kv_selector`` stays on the compute tier whatever the
  plan's KV placement (it is what decides which tokens to fetch), and the cache's reads from
  its home come in pieces of one row (a head's or a layer's K or V of one token), so a tier
  with a ``read_size_curve`` prices the scattered gathers.
"""

from __future__ import annotations

from memsim.sim.program import POp, TInfo
from memsim.workloads.kv_budget import held

SELECTOR = ".kv_selector"


def ctx_frac(sel: dict, op: POp, prompt: int, reading: bool) -> float:
    """Fraction of a KV tensor's bytes ``op`` reads or writes (``prompt``: the prompt tokens,
    plus the decode steps a folded window starts after)."""
    layer = op.layer or 0  # (every op touching KV is a layer's)
    kept, cap, top_k = sel["kept"][layer], sel["caps"][layer], sel["top_k"]
    if op.phase == "prefill":
        return min(prompt, cap) / kept  # (prefill: ``prompt`` is the prompt)
    if op.phase == "decode":
        if not reading:
            return 1.0 / kept
        n = held(sel["prompt"], prompt + op.iteration + 1, cap, sel["keep_generated"])
        if top_k and ".attention" in op.name:
            n = min(n, top_k)
        return min(1.0, n / kept)
    return 1.0


def home(tensors: dict[str, TInfo], sel: dict, fast: str) -> None:
    """The selector copy on the compute tier; the cache read in rows (see the module docstring)."""
    for name, info in tensors.items():
        if info.cls != "kv":
            continue
        if SELECTOR in name:
            info.home = {fast: info.bytes}
        elif sel["top_k"]:
            info.chunk = int(sel["read_bytes"])
