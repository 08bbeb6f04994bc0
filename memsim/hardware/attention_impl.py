"""The bytes an attention implementation moves, where it differs from the fused kernel the trace
prices (each KV head's cache read once, at the KV dtype: FlashAttention / FlashDecoding).

Two facts of the frameworks people run change that, both priced by the unit's memory side of the
roofline (``Compute.bandwidth``), so a copy the implementation makes costs what it moves:

* **CPU attention computes in fp32.** PyTorch has no fast fp16 CPU matmul, so both CPU attention
  paths stream an fp32 cache: FlexGen ``.float()``s its fp16 cache before ``torch.bmm``
  (FMInference/FlexGen ``flexgen/pytorch_backend.py``, ``mha_gen``), and ZeRO-Inference's
  transformers fork allocates the host KV buffer with ``torch.empty`` in the default dtype
  (fp32) and upcasts the query (``query_states.float().to('cpu')``) before its matmuls
  (tjruwase/transformers, branch ``kvcache-offload-cpu``, ``models/llama/modeling_llama.py`` and
  ``models/opt/modeling_opt.py``). A CPU decode attention therefore reads 4 bytes per cached
  element, whatever the GPU-side KV dtype.
* **GQA expansion** (``Plan.gqa_expand``). HF transformers' eager attention calls ``repeat_kv``
  before its matmuls: ``expand`` then ``reshape`` of the cache to every query head, a real copy
  (same fork, ``LlamaAttention.forward``; the copy is skipped when ``n_rep == 1``). Each step
  and layer it reads the cache once, writes ``group = heads / kv_heads`` copies of it, and the
  matmuls then read those copies instead of the cache: ``1 + 2·group`` times the cache bytes.
  Multi-head attention (group 1) is unaffected. On the CPU those copies are fresh allocations
  every step (PyTorch's CPU allocator hands blocks this large to glibc, which maps and unmaps
  them), so their writes run at the unit's ``first_touch_bw``: ``fresh_scale`` counts each such
  byte as ``bandwidth / first_touch_bw`` streamed ones. (On a GPU the caching allocator reuses
  its blocks: no first touch.)

The fp32 host cache is also a footprint: the fork's buffer (``OPTDecoder.forward``:
``torch.empty([layers, 2, batch, heads, prompt + gen - 1, head_dim], pin_memory=False)``, the
same in its LLaMA model) holds 4 bytes per element in DRAM where an fp16 cache would hold 2.
``Plan.host_kv_bits`` says so and ``host_kv_homes`` books it (FlexGen keeps its host cache in
fp16 and ``.float()``s it per step: no such plan key).
"""

from __future__ import annotations

from memsim.hardware.spec import Compute
from memsim.workloads.trace import Op, Trace

CPU_ATTENTION_ELEMENT_BYTES = 4  # fp32: what PyTorch's CPU attention streams (see above)


def query_group(op: Op, trace: Trace) -> int:
    """Query heads per KV head of an attention op (1: multi-head attention or unknown)."""
    shape = op.shape or ()
    kv_heads = int(trace.meta.get("kv_heads") or 0)
    if op.kind != "attention" or len(shape) < 5 or kv_heads <= 0:
        return 1
    return max(1, int(shape[1]) // kv_heads)


def fresh_scale(unit: Compute | None, phase: str = "decode") -> float:
    """Streamed bytes one byte written into fresh memory costs on ``unit`` (1: no penalty)."""
    if unit is None or not unit.first_touch_bw:
        return 1.0
    return max(1.0, unit.bandwidth("attention", phase) / unit.first_touch_bw)


def attention_bytes(op: Op, trace: Trace, *, on_cpu: bool, gqa_expand: bool,
                    fresh: float = 1.0) -> float:
    """Bytes an attention op moves through memory under the implementation: the trace's fused
    figure, with the cache read in fp32 on the CPU and ``1 + 2·group`` times over when
    ``gqa_expand`` materialises it per query head, the ``group`` copies written counted
    ``fresh`` times (``fresh_scale``). Other ops (training attention included: its bytes are not
    a cache read): their trace bytes."""
    nbytes = float(op.bytes_read + op.bytes_written)
    if op.kind != "attention" or op.phase not in ("prefill", "decode") or not (on_cpu or gqa_expand):
        return nbytes
    cache = float(op.bytes_read - op.bytes_written)  # the query read and the output written cancel
    if cache <= 0:
        return nbytes
    streamed = cache
    kv_bits = trace.meta.get("kv_bits")
    if on_cpu and kv_bits:
        streamed = cache * CPU_ATTENTION_ELEMENT_BYTES / (float(kv_bits) / 8)
    group = query_group(op, trace)
    if gqa_expand and group > 1:  # read the cache, write group copies, the matmuls read them
        streamed *= 1 + group + group * (fresh if on_cpu else 1.0)
    return nbytes - cache + streamed


def host_kv_homes(homes: dict[str, int], fast: str, kv_bits: float | None,
                  host_bits: int | None) -> dict[str, int]:
    """A KV tensor's bytes per tier, the share outside the compute tier ``fast`` held at
    ``host_bits`` per element instead of the workload's ``kv_bits`` (``Plan.host_kv_bits``)."""
    if not host_bits or not kv_bits or host_bits == kv_bits:
        return homes
    scale = host_bits / float(kv_bits)
    return {tier: b if tier == fast else int(b * scale) for tier, b in homes.items()}
