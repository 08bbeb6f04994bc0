"""Exact byte accounting: model states (ZeRO), activations (Korthikanti et al.) and KV cache.

Every figure memsim derives about memory comes from the formulas here, each with its source, so
they can be checked against the papers by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from memsim.workloads.models import Architecture

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

#: bitsandbytes' block-wise 8-bit optimizers keep one fp32 absmax per 2048 values per state
#: (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization", §2.1 block size 2048).
ADAM8BIT_BLOCK = 2048


def shard(nbytes: int, nd: int) -> int:
    """One rank's share of ``nbytes`` split over ``nd`` ranks (the last rank pads, as ZeRO does)."""
    return -(-nbytes // nd)


def zero_table1_bytes(params: int, stage: int, nd: int, k: int = 12) -> int:
    """Per-device model-state bytes of mixed-precision Adam under ZeRO (Rajbhandari et al. 2020,
    Table 1; shared/reference/published.yaml): baseline (2+2+K)Ψ, stage 1 4Ψ+KΨ/Nd, stage 2
    2Ψ+(2+K)Ψ/Nd, stage 3 (4+K)Ψ/Nd. Ψ=7.5e9, Nd=64 → 120, 31.4, 16.6, 1.9 GB."""
    weights = 2 * params if stage < 3 else shard(2 * params, nd)
    grads = 2 * params if stage < 2 else shard(2 * params, nd)
    states = k * params if stage < 1 else shard(k * params, nd)
    return weights + grads + states


def optimizer_bytes(params: int, precision: str, optimizer: str) -> int:
    """Optimizer-state bytes of ``params`` trainable parameters.

    Mixed precision (bf16/fp16) keeps an fp32 master copy (4 B) beside the states: Adam/AdamW
    4+4+4 = 12 B/param (ZeRO's K=12), SGD with momentum 4+4 = 8, 8-bit Adam 4+1+1 plus its
    block-wise absmax statistics. In fp32 the weights are the master copy: Adam 8, SGD 4, 8-bit
    Adam 2 (+ statistics).
    """
    master = 4 * params if precision != "fp32" else 0
    if optimizer in ("adam", "adamw"):
        return master + 8 * params
    if optimizer == "sgd":
        return master + 4 * params
    if optimizer == "adam8bit":
        return master + 2 * params + 2 * 4 * math.ceil(params / ADAM8BIT_BLOCK)
    raise ValueError(f"unknown optimizer {optimizer!r}")


def optimizer_flops_per_param(optimizer: str) -> int:
    """Arithmetic of one update, counted from torch.optim's update equations: AdamW ~ 2 (m) +
    3 (v) + 2 (bias corrections) + 3 (sqrt, add eps, divide) + 2 (lr, decay) + 1 (update) = 13;
    SGD with momentum 2 (buffer) + 2 (update) = 4; 8-bit Adam adds de/quantisation ~ 6."""
    return {"adam": 13, "adamw": 13, "sgd": 4, "adam8bit": 19}[optimizer]


@dataclass(frozen=True)
class LayerActivations:
    """Bytes one layer saves for its backward, itemised (Korthikanti et al. 2022, §4.1)."""

    input: int  # the layer's input (the first norm's saved input): the checkpoint under recompute
    attn: int  # everything else of the attention block
    scores: int  # a·s² softmax / dropout tensors (0 with flash attention)
    mlp: int  # everything of the MLP block, its norm included

    @property
    def total(self) -> int:
        return self.input + self.attn + self.scores + self.mlp


def layer_activations(arch: Architecture, b: int, s: int, e: int, flash: bool) -> LayerActivations:
    """Saved activations of one transformer layer for micro-batch ``b``, sequence ``s``, ``e``
    bytes per element (masks 1 byte per element).

    Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
    §4.1) count sbh(34 + 5as/h) bytes for a GPT layer (16-bit, MHA, 4h GeLU MLP, dropout):
    LayerNorm inputs 2+2; QKV input 2; Q and K 4; V 2; softmax output 2as/h; its dropout mask
    as/h and output 2as/h; out-proj input 2; attention dropout mask 1; MLP inputs 2 and 8; GeLU
    input 8; MLP dropout mask 1. This function counts the same tensors, generalised:

    * GQA: Q is s·b·a·d, K and V are s·b·kv·d (not sbh each).
    * Gated MLP (SwiGLU): gate output, SiLU output, up output and their product (the down
      input): 4·sbf; a two-matrix MLP keeps its activation's input and the fc2 input (2·sbf),
      or one tensor for ReLU, which backpropagates from its output.
    * MoE: router probabilities (fp32, s·b·E), and per routed token copy (k per token): the
      dispatched input, the 4 (or 2) expert intermediates and the expert output.
    * Dropout tensors only when the config has dropout (Llama-family configs do not).
    * Flash attention (Dao et al.) keeps no a·s² tensors, only the fp32 log-sum-exp (4·b·a·s);
      it regenerates the dropout mask from the RNG state.
    """
    h, f, a = arch.hidden, arch.intermediate, arch.heads
    tokens = b * s
    drop = arch.dropout
    attn = (tokens * h * e  # QKV input (norm output)
            + tokens * (arch.q_dim + arch.kv_dim) * e  # Q, K for QK^T
            + tokens * arch.kv_dim * e  # V for AV
            + tokens * arch.q_dim * e  # out-proj input (attention output O)
            + (tokens * h if drop else 0))  # dropout mask after out-proj
    if flash:
        attn += 4 * b * a * s  # log-sum-exp, fp32
        scores = 0
    else:
        scores = b * a * s * s * e + ((b * a * s * s + b * a * s * s * e) if drop else 0)
    per_token_mlp = (4 if arch.gated_mlp else 1 if arch.activation == "relu" else 2) * f * e
    mlp = tokens * h * e + tokens * h * e + (tokens * h if drop else 0)  # norm input, MLP input, mask
    if arch.is_moe:
        k = arch.experts_per_token
        mlp += tokens * arch.experts * 4 + tokens * k * (2 * h * e + per_token_mlp)
    else:
        mlp += tokens * per_token_mlp
    return LayerActivations(input=tokens * h * e, attn=attn, scores=scores, mlp=mlp)


def kv_bytes(arch: Architecture, tokens: int, kv_bits: int = 16, layers: int | None = None,
             context: int | None = None) -> int:
    """KV-cache bytes: 2 (K and V) × layers × kv_heads × head_dim × bits/8 × tokens.
    Llama-3-8B at 2**20 tokens in 16 bits: 2·32·8·128·2·2**20 = 128 GiB exactly. Quantised KV
    (KIVI) counts the packed values only, not its per-group scales.

    Models whose layers cache differently (sliding window, MLA latent, SSM state: see
    ``Architecture.kv_elems``) are counted per layer kind; given ``context`` (tokens per
    sequence, ``tokens`` a multiple of it) the window cap and the fixed SSM state are exact, and
    ``layers`` counts mean layers (the trace's templated layer)."""
    layers = arch.layers if layers is None else layers
    if set(arch.mixers) == {"attn"}:
        return -(-(2 * layers * arch.kv_dim * kv_bits * tokens) // 8)
    if context is None:
        return math.ceil(layers * arch.kv_token_elems * kv_bits * tokens / 8)
    seqs = tokens / context
    return math.ceil(arch.kv_seq_bytes(context, kv_bits) * seqs * layers / arch.layers)


def lora_params(arch: Architecture, rank: int, targets: list[str]) -> int:
    """Adapter parameters of one layer: r·(d_in + d_out) per adapted linear (×experts for MLP
    linears of an MoE layer, each expert has its own adapter)."""
    shapes = arch.lora_shapes()
    total = 0
    for t in targets:
        d_in, d_out = shapes[t]
        copies = arch.experts if t in ("gate", "up", "down") else 1
        total += copies * rank * (d_in + d_out)
    return total
