"""KIVI's quantised KV cache as it is laid out in memory (Liu et al., ICML 2024, sect. 3.3-3.4).

Beside the packed ``kv_bits`` values, KIVI keeps a scale and a zero point (``scale_bits`` each,
fp16) per group of ``group_size`` elements — keys grouped along tokens per channel, values along
channels per token — and recent tokens in full precision. Its reference implementation
(``LlamaAttention_KIVI`` in KIVI's models/llama_kivi.py) keeps them differently for K and V:

* keys: quantised in blocks of ``residual`` tokens; the tokens since the last full block stay in
  fp16, so n tokens hold ``n mod residual`` fp16 keys (the prefill quantises its whole blocks);
* values: quantised one token at a time once more than ``residual`` are held, so the last
  ``min(n, residual)`` values stay in fp16.

Attention reads the packed values with their scales and zero points through a fused kernel and
dequantises on the fly: two FLOPs (a multiply and an add) per cached element it reads.
"""

from __future__ import annotations

from memsim.errors import SpecError
from memsim.workloads.models import Architecture
from memsim.workloads.spec import KVQuant

DEQUANT_FLOPS_PER_ELEM = 2.0


def seq_layer_bytes(arch: Architecture, tokens: float, bits: int, q: KVQuant) -> float:
    """KV bytes of one sequence in one layer holding ``tokens`` tokens under KIVI's layout."""
    n = float(tokens)
    r = q.residual
    full_k = n % r if r else 0.0
    full_v = min(n, r)
    quant = (n - full_k) + (n - full_v)
    per_elem = bits + 2 * q.scale_bits / q.group_size
    return arch.kv_dim * (quant * per_elem + (full_k + full_v) * 16) / 8


def layout(arch: Architecture, batch: int, context: int, mean_prefill: float, mean_decode: float,
           bits: int, q: KVQuant, file: str | None) -> dict[str, float]:
    """Per-layer KV tensor bytes for ``batch`` sequences of ``context`` tokens, and the bytes per
    cached element that attention reads at the prefill's and the decode's mean contexts."""
    if set(arch.mixers) != {"attn"}:
        raise SpecError("inference.kv_quant models full-attention layers only", file=file,
                        key="inference.kv_quant")
    if bits >= 16:
        raise SpecError("inference.kv_quant needs a quantised cache: set kv_bits to 8, 4 or 2",
                        file=file, key="inference.kv_quant")

    def per_elem(ctx: float) -> float:
        return seq_layer_bytes(arch, ctx, bits, q) / (2 * arch.kv_dim * ctx)

    return {"layer_bytes": batch * seq_layer_bytes(arch, context, bits, q),
            "prefill_e": per_elem(mean_prefill), "decode_e": per_elem(mean_decode)}


def concat_held_bytes(arch: Architecture, prompt: int, gen: int, bits: int, q: KVQuant | None) -> float:
    """Bytes of one sequence's previous-step cache still held when a concatenating decode step
    ends (``inference.kv_growth: concat``), at the step where they are most, over all layers.

    16-bit: the whole previous cache. KIVI's code (models/llama_kivi.py) re-creates each step its
    fp16 keys since the last block, its quantised values and their fp16 residual, but passes its
    quantised keys through unchanged except at a step that fills a block of ``residual`` keys."""
    if q is None:
        return arch.layers * arch.kv_dim * 2 * (bits / 8) * (prompt + gen - 1)
    r, per_elem = q.residual, bits + 2 * q.scale_bits / q.group_size
    most = 0.0
    for n in range(prompt + 1, prompt + gen + 1):  # the step that grows n - 1 tokens to n
        m = n - 1
        full_k = m % r if r else 0
        full_v = min(m, r)
        held = (full_k + full_v) * 16 + (m - full_v) * per_elem
        if r and n % r == 0:
            held += (m - full_k) * per_elem
        most = max(most, held)
    return arch.layers * arch.kv_dim * most / 8
