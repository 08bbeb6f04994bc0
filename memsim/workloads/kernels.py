"""The kernels of one transformer layer: FLOPs, bytes through memory and shape of each.

Shared by the training, inference and serving builders, which attach tensor names to them. A
kernel's bytes are what a real implementation moves through DRAM/HBM: its weights, the
activations it reads and those it writes. Conventions (stated once, used everywhere):

* matmul FLOPs are 2·m·k·n; shape (m, k, n) with batch and routed experts folded into m.
* attention FLOPs are 4·b·a·q·kv·d (QKᵀ and AV), the full q×kv rectangle (no causal halving, the
  Megatron/PaLM model-FLOPs convention); with flash attention no score matrix touches memory,
  without it the b·a·q·kv scores are written and read back twice (scores, probabilities).
* norms ≈ 4 FLOPs/element (RMS) or 5 (LayerNorm); residual adds 1; SiLU·mul ≈ 5, GeLU ≈ 8.
* MoE: FLOPs of the ``experts_per_token`` routed experts only; weight bytes read are those of the
  experts the batch is expected to touch, E·(1-(1-k/E)^tokens) (all of them once tokens ≫ E).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from memsim.workloads.arch_flops import mean_layer, uniform
from memsim.workloads.dequant import dequant_flops, materialized_dequant, packed_bytes
from memsim.workloads.models import Architecture
from memsim.workloads.moe import touched_experts
from memsim.workloads.quantization import linear_bytes

QUANTIZED = ("qkv", "out_proj", "mlp_up", "mlp_down")  # the matmuls a checkpoint packs


@dataclass(frozen=True)
class Kernel:
    key: str  # attn_norm, qkv, attention, out_proj, attn_residual, mlp_norm, router, mlp_up, mlp_act, ...
    kind: str  # matmul | attention | elementwise
    flops: float
    weight_bytes: int  # bytes of weights read
    read: int  # activation bytes read
    written: int  # activation bytes written
    shape: tuple[int, ...]
    params: int = 0  # parameters this kernel owns (for weight-gradient bytes)
    adapter_flops: float = 0.0  # LoRA share of ``flops``
    adapter_params: int = 0  # LoRA share of ``params``


def _lora(targets: dict[str, tuple[int, int]], rank: int, names: tuple[str, ...],
          m: int) -> tuple[float, int]:
    """(FLOPs, params) of the LoRA adapters on ``names`` for ``m`` tokens."""
    params = sum(rank * sum(targets[n]) for n in names if n in targets)
    return 2.0 * m * params, params


def layer_kernels(arch: Architecture, b: int, q_len: int, kv_len: float, e: int, w_e: int, *,
                  flash: bool = True, kv_e: float | None = None, lora_rank: int = 0,
                  lora_targets: tuple[str, ...] = (), dequant: bool = False) -> list[Kernel]:
    """The forward kernels of one layer for ``b`` sequences of ``q_len`` new tokens attending
    over ``kv_len`` tokens. ``e``: activation bytes/element, ``w_e``: weight bytes/element,
    ``kv_e``: KV-cache bytes/element (defaults to ``e``). A quantized model's matmuls read their
    packed bytes; with ``dequant`` a ``dequant`` kernel carries their dequantization work
    (memsim.workloads.dequant)."""
    h, f, a, d = arch.hidden, arch.intermediate, arch.heads, arch.head_dim
    m = b * q_len
    kv_e = e if kv_e is None else kv_e
    k = arch.experts_per_token
    shapes = arch.lora_shapes()
    targets = {t: shapes[t] for t in lora_targets}
    norm_flops = 4 if arch.norm == "rms" else 5
    act_flops = 5 if arch.gated_mlp else 8 if "gelu" in arch.activation else 1
    touched = touched_experts(arch.experts, k, m) if arch.is_moe else 1
    up_cols = (2 if arch.gated_mlp else 1) * f
    up_params = arch.experts * (h * up_cols + (up_cols if arch.linear_bias else 0))
    down_params = arch.experts * (f * h + (h if arch.linear_bias else 0))
    expert_share = touched / arch.experts
    quantized: list[tuple[float, int, int]] = []  # (weights, rows, packed bytes) per quantized matmul
    materializes = arch.quant is not None and arch.quant.materializes

    def norm(key: str) -> Kernel:
        return Kernel(key, "elementwise", norm_flops * m * h, arch.norm_params * w_e, m * h * e, m * h * e,
                      (m * h,), arch.norm_params)

    def residual(key: str) -> Kernel:
        return Kernel(key, "elementwise", m * h, 0, 2 * m * h * e, m * h * e, (m * h,))

    def matmul(key: str, rows: int, k_dim: int, n: int, params: int, lora: tuple[str, ...],
               w_bytes: int | None = None) -> Kernel:
        lf, lp = _lora(targets, lora_rank, lora, rows)
        if arch.is_moe and key in ("mlp_up", "mlp_down"):  # adapters per expert, k experts per token
            lp *= arch.experts
        weights = params * w_e if w_bytes is None else w_bytes
        if arch.quant is not None and key in QUANTIZED:
            routed = key in ("mlp_up", "mlp_down")
            copies = touched if routed else 1  # matrices read: the touched experts'
            share = copies / arch.experts if routed else 1
            bias = (params - k_dim * n * (arch.experts if routed else 1)) * share
            packed = packed_bytes(arch, k_dim, n, copies, w_e)
            # a materialised dequant leaves the GEMM a plain weight of w_e bytes per element
            weights = (int(k_dim * n * copies * w_e) if materializes else packed) + int(bias * w_e)
            # each touched expert multiplies its share of the routed rows
            quantized.append((k_dim * n * copies, math.ceil(rows / copies), packed))
        return Kernel(key, "matmul", 2.0 * rows * k_dim * n + lf, weights + lp * w_e, rows * k_dim * e,
                      rows * n * e, (rows, k_dim, n), params + lp, lf, lp)

    scores = b * a * q_len * kv_len
    attn_read = m * arch.q_dim * e + int(b * arch.kv_layer_mean_elems(kv_len) * kv_e)
    attn_written = m * arch.q_dim * e
    if not flash:
        attn_read += 2 * scores * e
        attn_written += 2 * scores * e
    kernels = [
        norm("attn_norm"),
        matmul("qkv", m, h, arch.qkv_dim, arch.qkv_params, ("q", "k", "v")),
        Kernel("attention", "attention", 4.0 * scores * d, 0, attn_read, attn_written,
               (b, a, q_len, round(kv_len), d)),
        matmul("out_proj", m, arch.q_dim, h, arch.out_params, ("o",)),
        residual("attn_residual"),
        norm("mlp_norm"),
    ]
    if arch.is_moe:
        kernels.append(matmul("router", m, h, arch.experts, arch.router_params, ()))
    kernels += [
        matmul("mlp_up", m * k, h, up_cols, up_params, ("gate", "up"), int(up_params * w_e * expert_share)),
        Kernel("mlp_act", "elementwise", act_flops * m * k * f, 0,
               (2 if arch.gated_mlp else 1) * m * k * f * e, m * k * f * e, (m * k * f,)),
        matmul("mlp_down", m * k, f, h, down_params, ("down",), int(down_params * w_e * expert_share)),
        residual("mlp_residual"),
    ]
    if not uniform(arch):  # layers differ (window, MLA, SSM, dense/MoE/shared): the mean layer
        kernels = _mean_kernels(arch, kernels, b, q_len, kv_len, touched, w_e)
    if dequant and quantized:
        count = int(sum(n for n, _, _ in quantized))
        if materializes:  # whole weights into fp16 memory: reads the packed, writes the plain
            work, packed, written = materialized_dequant(count, sum(p for _, _, p in quantized), w_e)
            kernels.append(Kernel("dequant", "elementwise", work, packed, 0, written, (count,)))
        else:
            work = sum(dequant_flops(n, rows) for n, rows, _ in quantized)
            kernels.append(Kernel("dequant", "elementwise", work, 0, 0, 0, (count,)))
    return kernels


def _mean_kernels(arch: Architecture, kernels: list[Kernel], b: int, q_len: int, kv_len: float,
                  touched: float, w_e: int) -> list[Kernel]:
    """``kernels`` with the FLOPs and weight reads of the mean layer (memsim.workloads.arch_flops);
    a quantized model's weight reads keep their packed-to-plain ratio."""
    means = mean_layer(arch, b, q_len, kv_len, touched)
    h = arch.hidden
    packed = (linear_bytes(arch.quant, [(h, h, 1)]) / (h * h * w_e)) \
        if arch.quant is not None and not arch.quant.materializes else 1.0
    out = []
    for k in kernels:
        if k.key in means:
            flops, weights = means[k.key]
            ratio = packed if k.key in QUANTIZED else 1.0
            k = replace(k, flops=flops + k.adapter_flops, weight_bytes=int(weights * w_e * ratio))
        out.append(k)
    return out


def head_kernels(arch: Architecture, tokens: int, e: int, w_e: int) -> list[Kernel]:
    """Final norm and LM head for ``tokens`` positions (logits written in fp32 for the loss)."""
    h, v = arch.hidden, arch.vocab
    norm_flops = 4 if arch.norm == "rms" else 5
    return [
        Kernel("final_norm", "elementwise", norm_flops * tokens * h, arch.norm_params * w_e, tokens * h * e,
               tokens * h * e, (tokens * h,), arch.norm_params),
        Kernel("lm_head", "matmul", 2.0 * tokens * h * v, v * h * w_e, tokens * h * e, tokens * v * 4,
               (tokens, h, v), 0 if arch.tied_embeddings else v * h),
    ]
