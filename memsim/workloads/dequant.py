"""What a weight-only quantized GEMM costs besides its matmul: packed bytes and dequantization.

A W4A16 kernel (GPTQ/AWQ through Marlin or ExLlama, bitsandbytes' 4-bit, FP8 weights on a
GPU without FP8 tensor cores) reads the packed weights, then turns each weight back into the
activation dtype on the CUDA cores before the tensor-core MMA: w = s·(q − z). vLLM's Marlin
kernel (csrc/quantization/marlin/dequant.h, after FasterTransformer's interleaved conversion)
does it for four int4 weights with two LOP3 bit operations, one HSUB2 and one HFMA2, and applies
the group scale with one HMUL2 per pair: about 1.5 instructions per weight. memsim counts
``DEQUANT_FLOPS_PER_WEIGHT`` = 2 (the subtract and multiply of w = s·(q − z), one pair of
operations per weight) and bills them at the CUDA-core rate (the ``fp32`` peak of the compute
unit, not its tensor-core rate). A thread block dequantizes the weight tile it loads once for up
to ``DEQUANT_TILE_ROWS`` = 64 activation rows (Marlin's largest m-tile: 4 × 16), so a decode
step (few rows) dequantizes every weight once and a prefill of m rows ⌈m/64⌉ times.

The op is fused into the GEMM in real kernels and overlaps its loads; memsim runs it as its own
op beside the GEMM (one per layer), so its time is an upper bound of what dequantization adds:
negligible while the GEMM is bound by reading weights (decode), comparable to the MMA once the
batch makes it compute bound (the reason W4A16 loses to FP16 at large batch; Frantar et al.
2024, "MARLIN", arXiv:2408.11743 §3).

DeepSpeed's int4/int8 Linear (``WeightQuant.materializes``) has no fused kernel: every forward
dequantizes the whole weight into a temporary fp16 tensor (``dequantize_int4_to_half_experimental``)
and hands it to a plain ``F.linear`` (deepspeed/inference/quantization/utils.py,
``wrap_quantized_functional``). Its dequant op therefore reads the packed bytes and writes
``w_e`` bytes per weight, once per forward whatever the rows, and the GEMM reads those ``w_e``
bytes instead of the packed ones: 0.5625 + 2 + 2 bytes of GPU memory traffic per int4 weight
(group 64) where a fused kernel reads 0.5625. Its QuantizedEmbedding dequantizes the whole token
table to look up a few rows, and the tied LM head dequantizes it again (``table_dequant_bytes``).
"""

from __future__ import annotations

import math

from memsim.workloads.models import Architecture
from memsim.workloads.quantization import linear_bytes

DEQUANT_FLOPS_PER_WEIGHT = 2
DEQUANT_TILE_ROWS = 64
DEQUANT_DTYPE = "fp32"  # billed at the CUDA-core (non-tensor) rate


def packed_bytes(arch: Architecture, d_in: int, d_out: int, copies: float, w_e: int) -> int:
    """Bytes a quantized linear of (d_in, d_out) × copies reads (``w_e`` per weight unquantized)."""
    if arch.quant is None:
        return int(d_in * d_out * copies * w_e)
    return int(linear_bytes(arch.quant, [(d_in, d_out, 1)]) * copies)


def dequant_flops(weights: float, rows: int) -> float:
    """Dequantization operations of a GEMM over ``weights`` quantized weights and ``rows`` rows."""
    return DEQUANT_FLOPS_PER_WEIGHT * weights * math.ceil(max(rows, 1) / DEQUANT_TILE_ROWS)


def materialized_dequant(weights: float, packed: int, w_e: int) -> tuple[float, int, int]:
    """(FLOPs, bytes read, bytes written) of dequantizing ``weights`` weights of ``packed`` bytes
    whole into a temporary tensor of ``w_e`` bytes per weight (DeepSpeed): once per forward."""
    return DEQUANT_FLOPS_PER_WEIGHT * weights, packed, int(weights * w_e)


def table_dequant_bytes(arch: Architecture, e: int) -> int:
    """Bytes one lookup of a packed token table (or one LM head over it) moves dequantizing the
    whole table first (DeepSpeed's QuantizedEmbedding / quantized F.linear); 0 otherwise."""
    q = arch.quant
    if q is None or not (q.embeddings and q.materializes):
        return 0
    table = arch.vocab * arch.hidden
    return linear_bytes(q, [(arch.hidden, arch.vocab, 1)]) + table * e
