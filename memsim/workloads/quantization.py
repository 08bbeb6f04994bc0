"""Weight bytes of quantized checkpoints, from a config's ``quantization_config``.

Only the linear (matmul) weights of the layers are quantized; embeddings, the LM head, norms and
biases stay in the model dtype (2 bytes), as GPTQ/AWQ/bitsandbytes/FP8 checkpoints ship them.
For ``n`` quantized elements (``Architecture.linear_elems``), groups of ``g`` along the input
dimension and ``b`` bits (sources: AutoGPTQ/AutoAWQ packing, bitsandbytes ``Linear4bit`` /
``Linear8bitLt``, DeepSeek-V3's ``weight_scale_inv`` per 128×128 block):

* GPTQ:  n·b/8 (qweight) + n/g·2 (fp16 scales) + n/g·b/8 (packed qzeros) + in·4 (int32 g_idx)
* AWQ:   n·b/8 + n/g·2 + n/g·b/8 (no g_idx)
* bnb 8-bit (LLM.int8): n + out·4 (fp32 row scales, SCB)
* bnb 4-bit (nf4/fp4, blocksize 64): n/2 + n/64·4 (fp32 absmax); with double quantization the
  absmax is 8-bit with an fp32 scale per 256 blocks: n/2 + n/64 + n/(64·256)·4
* FP8: n (e4m3) + one fp32 scale per tensor, or per 128×128 block: ⌈in/128⌉·⌈out/128⌉·4
* DeepSpeed (``quant_method: deepspeed``, memsim's name for ZeRO-Inference's ds_config
  ``weight_quantization.quantized_initialization``, asymmetric, groups of g along the input
  dimension): n·b/8 + n/g·2 (fp16 scale) + n/g·2 (fp16 minimum), the three concatenated into one
  fp16-typed tensor (deepspeed/inference/quantization/utils.py, ``Quantizer.quantize`` and
  ``concat_to_compat_param``). Unlike the checkpoint formats it packs every ``nn.Linear`` *and*
  ``nn.Embedding`` weight (``WEIGHT_QUANTIZATION_LAYERS``), so the token table and the LM head
  are packed too (``WeightQuant.embeddings``), and its Linear has no fused kernel: each forward
  dequantizes the whole weight into a temporary fp16 tensor that the GEMM then reads
  (``wrap_quantized_functional``, ``DeQuantizer.dequantize``: ``WeightQuant.materializes``;
  priced in memsim.workloads.dequant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from memsim.errors import SpecError

if TYPE_CHECKING:
    from memsim.workloads.models import Architecture


@dataclass(frozen=True)
class WeightQuant:
    method: str  # gptq | awq | bnb8 | bnb4 | fp8
    bits: int = 16
    group_size: int = 128
    double_quant: bool = False
    block: tuple[int, int] | None = None  # FP8 block scales

    @property
    def embeddings(self) -> bool:
        """Whether the embedding table and the LM head are packed too (DeepSpeed's)."""
        return self.method == "deepspeed"

    @property
    def materializes(self) -> bool:
        """Whether a matmul dequantizes its whole weight into fp16 memory before a plain GEMM
        reads it (DeepSpeed's), instead of dequantizing tiles inside a fused kernel."""
        return self.method == "deepspeed"


def parse_quantization(q: dict | None, *, file: str | None = None) -> WeightQuant | None:
    if not q:
        return None
    method = str(q.get("quant_method", "")).lower()
    if method in ("gptq", "awq"):
        bits, group = q.get("bits", q.get("w_bit")), q.get("group_size", q.get("q_group_size", 128))
        if bits not in (2, 3, 4, 8):
            raise SpecError(f"{method} bits must be 2, 3, 4 or 8, got {bits!r}", file=file,
                            key="quantization_config.bits")
        return WeightQuant(method, bits, group)
    if method == "bitsandbytes":
        if q.get("load_in_4bit"):
            return WeightQuant("bnb4", 4, 64, bool(q.get("bnb_4bit_use_double_quant")))
        if q.get("load_in_8bit"):
            return WeightQuant("bnb8", 8)
    if method == "deepspeed":
        bits, group = q.get("bits", q.get("num_bits")), q.get("group_size", 64)
        if bits not in (4, 8):  # DeepSpeed's Quantizer asserts INT4 or INT8
            raise SpecError(f"deepspeed bits must be 4 or 8, got {bits!r}", file=file,
                            key="quantization_config.bits")
        return WeightQuant("deepspeed", bits, int(group))
    if method == "fp8":
        block = q.get("weight_block_size")
        return WeightQuant("fp8", 8, block=tuple(block) if block else None)
    raise SpecError(f"unsupported quant_method {method!r}; supported: gptq, awq, bitsandbytes, fp8, "
                    "deepspeed",
                    file=file, key="quantization_config.quant_method")


def linear_bytes(q: WeightQuant, shapes: list[tuple[int, int, int]]) -> int:
    """Bytes of quantized linears given as (in, out, copies) triples."""
    total = 0
    for d_in, d_out, copies in shapes:
        n = d_in * d_out
        if q.method in ("gptq", "awq"):
            groups = math.ceil(d_in / q.group_size) * d_out
            one = math.ceil(n * q.bits / 8) + groups * 2 + math.ceil(groups * q.bits / 8)
            one += d_in * 4 if q.method == "gptq" else 0
        elif q.method == "deepspeed":  # packed values, fp16 scale and fp16 minimum per group
            groups = math.ceil(d_in / q.group_size) * d_out
            one = math.ceil(n * q.bits / 8) + groups * 2 * 2
        elif q.method == "bnb8":
            one = n + d_out * 4
        elif q.method == "bnb4":
            blocks = math.ceil(n / 64)
            one = math.ceil(n / 2) + (blocks + math.ceil(blocks / 256) * 4 if q.double_quant else blocks * 4)
        elif q.block:
            one = n + math.ceil(d_in / q.block[0]) * math.ceil(d_out / q.block[1]) * 4
        else:
            one = n + 4
        total += copies * one
    return total


def quantized(arch: Architecture, weights: dict, *, file: str | None = None) -> Architecture:
    """``arch`` with a workload's ``weights: {bits, group_size, method}`` override, read as the
    ``quantization_config`` such a checkpoint ships (one code path for both)."""
    config = {"quant_method": weights.get("method", "gptq"), "bits": weights["bits"],
              "group_size": weights.get("group_size", 128)}
    quant = parse_quantization(config, file=file)
    note = (f"weights quantized by the workload: {config['quant_method']} {config['bits']}-bit, "
            f"group {config['group_size']}")
    return replace(arch, quant=quant, notes=(*arch.notes, note))
