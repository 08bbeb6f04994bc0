"""What swapping a preempted request's KV costs: how many copies, how many bytes, and whether the
forward pass waits for them (``serving.swap``).

vLLM's cache engine (``CacheEngine.swap_out``/``swap_in`` → ``ops.swap_blocks``, csrc
cache_kernels.cu) copies a swapped request block by block: for every layer, K and V apart, one
``cudaMemcpyAsync`` of one block (16 tokens × KV heads × head_dim × 2 B: 32 KiB for Llama-3-8B),
and the iteration computes only once every swap has landed. Each copy pays the route's per-copy
latency, so small blocks leave PCIe idle: vLLM PR #11531 measured its per-block loop at
3.1 GB/s on an A100-40GB-SXM where one kernel gathering the same 1,250 pages reached 12.6 GB/s.
FastSwitch (Shen et al., "FastSwitch", arXiv 2411.18424) copies contiguous block groups, issues
the copies on a swap thread that overlaps the forward pass, and keeps a resumed request's host
copy so its next swap-out copies only the blocks it added since (its KV reuse).

A swap of ``n`` blocks of one request is ``copies(n) = 2 × layers × runs(n)`` transfers with
``runs(n)`` = n (``block``), ceil(n / group_blocks) (``group``) or 1 (``request``: its blocks
contiguous in each layer's K and V tensors), so one iteration's swaps in one direction take
``Σ copies × latency + bytes / bandwidth`` on that link direction's copy engine — the shape
``Copier.copy(copies=...)`` already gives weight fetches (``Plan.weight_copies``). With
``overlap`` the iteration waits for the first layer's share only and the rest streams beside the
compute, as a layer-wise load does (``memsim.sim.kvload``); a GPU block a swap-out frees is taken
within the same iteration, which FastSwitch orders by layer too. ``switch_overhead`` is scheduler
time per preempted or resumed request that the iteration waits for either way.

``submit`` is how those copies reach the copy engine, apart from how many there are:
``call`` (vLLM's loop: one ``cudaMemcpyAsync`` each, every one paying the route's ``latency``),
``batch`` (one ``cuMemcpyBatchAsync`` of all of them: ``latency`` once, then the route's
``descriptor_latency`` per further descriptor: 1.1 us on an H100's PCIe 5 link, fitted to vLLM
PR #48434's 8,192 × 8 KiB descriptors in 10.3 ms unmerged vs 1.49 ms merged in runs of 16) or
``kernel`` (one gather/scatter kernel launch moves every block, as vLLM PR #11531's swap_blocks
kernel does: ``latency`` once, then bandwidth-bound). With ``n`` copies of one direction the
submission costs ``n·L``, ``L + (n-1)·d`` or ``L``: never more for ``batch`` than ``call``
(``d ≤ L``), never more for ``kernel`` than ``batch``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_GROUP_BLOCKS = 8
KV_PLANES = 2  # K and V: vLLM allocates (and swaps) them as separate tensors per layer


@dataclass(frozen=True)
class SwapCost:
    """The swap mechanism of a serving run (``meta["swap"]``, from ``serving.swap``)."""

    layers: int = 1
    granularity: str = "block"
    group_blocks: int = DEFAULT_GROUP_BLOCKS
    overlap: bool = False
    reuse: bool = False
    switch_overhead: float = 0.0
    submit: str = "call"

    @classmethod
    def from_meta(cls, meta: dict | None, layers: int) -> SwapCost:
        m = dict(meta or {})
        return cls(layers=max(1, layers), granularity=str(m.get("granularity") or "block"),
                   group_blocks=int(m.get("group_blocks") or DEFAULT_GROUP_BLOCKS),
                   overlap=bool(m.get("overlap")), reuse=bool(m.get("reuse")),
                   switch_overhead=float(m.get("switch_overhead") or 0.0),
                   submit=str(m.get("submit") or "call"))

    def runs(self, blocks: int) -> int:
        """Contiguous runs one request's ``blocks`` are copied as, per layer and K/V tensor."""
        if blocks <= 0:
            return 0
        if self.granularity == "request":
            return 1
        if self.granularity == "group":
            return math.ceil(blocks / self.group_blocks)
        return blocks

    def copies(self, per_request: list[int]) -> int:
        """Transfers one direction's swaps take: ``per_request`` holds each request's blocks."""
        return KV_PLANES * self.layers * sum(self.runs(n) for n in per_request)


    def setup(self, copier, src: str, dst: str, copies: int) -> float | None:
        """Seconds submitting ``copies`` copies from ``src`` to ``dst`` costs before their bytes
        move; None: one call each (the copier's ``copies · latency``)."""
        if self.submit == "call" or copies <= 0:
            return None
        launch = copier.latency(src, dst)
        if self.submit == "kernel":
            return launch
        return launch + (copies - 1) * descriptor_latency(copier, src, dst)


def descriptor_latency(copier, src: str, dst: str) -> float:
    """Per-descriptor cost of a batched submission along the route (each hop's
    ``descriptor_latency``, its ``latency`` where unset)."""
    hops = copier.topo.route(src, dst).hops
    return sum(h.link.latency if h.link.descriptor_latency is None else h.link.descriptor_latency
               for h in hops)


@dataclass
class SwapStats:
    """Totals over a run: seconds of context switching (per iteration with swaps, from its start,
    switch overhead included, to its last swap landing), bytes and copies both ways."""

    seconds: float = 0.0
    bytes: int = 0
    copies: int = 0


def start_swaps(env, copier, cost: SwapCost, stats: SwapStats, fast: str, tier: str,
                block_bytes: int, out_runs: list[int], in_runs: list[int], out_alloc: int,
                switches: int) -> tuple[list, list]:
    """Issue one iteration's swaps: (events the compute waits for, events that may overlap it).
    ``out_runs``/``in_runs``: blocks copied per request each way; ``out_alloc``: swap-tier bytes
    the swap-out books as it starts (the engine books them itself under ``reuse``)."""
    t0 = env._now
    head, rest = [], []
    after = None  # the scheduler's work for the switches comes first, then the copies
    if switches and cost.switch_overhead > 0:
        after = env.timeout(switches * cost.switch_overhead)
        head.append(after)
    for src, dst, runs, key, op, alloc in ((fast, tier, out_runs, "kv swap", "swap out", out_alloc),
                                           (tier, fast, in_runs, "kv swap in", "swap in", 0)):
        blocks = sum(runs)
        if not blocks:
            continue
        nbytes, copies = blocks * block_bytes, cost.copies(runs)
        stats.bytes += nbytes
        stats.copies += copies
        if not cost.overlap or cost.layers == 1:
            head.append(copier.copy(src, dst, nbytes, key, op, alloc=alloc, after=after,
                                    copies=copies, setup=cost.setup(copier, src, dst, copies)))
            continue
        first, first_copies = nbytes // cost.layers, max(1, copies // cost.layers)
        share = alloc // cost.layers
        head.append(copier.copy(src, dst, first, key, op, alloc=share, after=after,
                                copies=first_copies,
                                setup=cost.setup(copier, src, dst, first_copies)))
        more = copies - first_copies  # FIFO: after it; a submission of its own
        rest.append(copier.copy(src, dst, nbytes - first, key, op, alloc=alloc - share,
                                after=after, copies=more, setup=cost.setup(copier, src, dst, more)))
    if len(head) + len(rest) > (after is not None):
        env.process(_timed(env, head + rest, t0, stats))
    return head, rest


def _timed(env, events: list, t0: float, stats: SwapStats):
    yield env.all_of(events)
    stats.seconds += env._now - t0
