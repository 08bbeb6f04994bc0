"""FLOPs and weight reads of the mean layer of a model whose layers differ.

The trace's layer is a template (one per layer index, same costs), so a model mixing layer kinds
gets the *mean* over its layers of each kernel's FLOPs and weights read; ``iterations × layers ×``
the mean equals the sum over the real layers. Per layer kind (HF modules; 2 FLOPs per MAC):

* full attention: q, k, v and o projections; attention 4·b·a·q·kv·d (QKᵀ and AV).
* sliding window: the same, over min(kv, window) keys.
* MLA (DeepSeek-V2/V3), as HF and the paper's prefill run it (latent expanded to per-head keys and
  values): projections q (through q_lora_rank), kv down to kv_lora_rank + rope, kv up to per-head
  nope keys and values, o; attention 2·b·a·q·kv·(nope+rope) + 2·b·a·q·kv·v_head.
* SSM (Mamba): in_proj, x_proj, dt_proj, out_proj; the depthwise conv 2·d_inner·d_conv per token;
  the selective scan 9·d_inner·d_state per token plus d_inner for the D skip (the count of
  state-spaces/mamba issue #110, as its FLOP counters use) — independent of the context.
* MLP: dense layers their width (``first_k_dense_replace`` ones at ``intermediate_size``), MoE
  layers the k routed experts and the shared ones per token (FLOPs) and the touched routed
  experts plus the shared ones (weights read), Mamba blocks none.
"""

from __future__ import annotations

from memsim.workloads.models import Architecture


def uniform(arch: Architecture) -> bool:
    """Every layer full attention with the same MLP: the plain per-layer kernels are exact."""
    return set(arch.mixers) == {"attn"} and len(set(arch.mlps)) == 1 and not arch.shared_intermediate


def _mixer(arch: Architecture, i: int, b: int, q_len: int, kv_len: float) -> tuple[int, int, float]:
    """(input-projection weights, output-projection weights, attention/scan FLOPs) of layer i."""
    h, a = arch.hidden, arch.heads
    kind = arch.mixers[i]
    m = b * q_len
    if kind == "ssm":
        d, n, r = arch.ssm_inner, arch.ssm_state, arch.ssm_dt_rank
        scan = m * (2 * d * arch.ssm_conv + 9 * d * n + d)
        return h * 2 * d + d * (r + 2 * n) + r * d, d * h, scan
    if kind == "mla":
        qk = arch.qk_nope_head_dim + arch.qk_rope_head_dim
        q = h * arch.q_lora_rank + arch.q_lora_rank * a * qk if arch.q_lora_rank else h * a * qk
        kv = (h * (arch.kv_lora_rank + arch.qk_rope_head_dim)
              + arch.kv_lora_rank * a * (arch.qk_nope_head_dim + arch.v_head_dim))
        attn = 2.0 * b * a * q_len * kv_len * (qk + arch.v_head_dim)
        return q + kv, a * arch.v_head_dim * h, attn
    keys = min(kv_len, arch.sliding_window) if kind == "local" else kv_len
    return h * arch.qkv_dim, arch.q_dim * h, 4.0 * b * a * q_len * keys * arch.head_dim


def _mlp(arch: Architecture, i: int, touched: float) -> tuple[int, int, float, float]:
    """(up+gate weights per token, down weights per token, up+gate weights read, down weights
    read) of layer i's MLP."""
    h, g = arch.hidden, 2 if arch.gated_mlp else 1
    kind = arch.mlps[i]
    if kind == "none":
        return 0, 0, 0.0, 0.0
    if kind == "dense":
        f = arch.dense_intermediate or arch.intermediate
        return g * h * f, f * h, float(g * h * f), float(f * h)
    f, s, k = arch.intermediate, arch.shared_intermediate, arch.experts_per_token
    per_token = k * f + s
    read = touched * f + s
    return g * h * per_token, per_token * h, float(g * h * read), float(read * h)


def mean_layer(arch: Architecture, b: int, q_len: int, kv_len: float, touched: float) -> dict[str, tuple]:
    """Mean over layers, per kernel key: (FLOPs, weights read in elements)."""
    m = b * q_len
    keys = ("qkv", "attention", "out_proj", "mlp_up", "mlp_act", "mlp_down", "router")
    sums = dict.fromkeys(keys, (0.0, 0.0))

    def add(key: str, flops: float, weights: float) -> None:
        f0, w0 = sums[key]
        sums[key] = (f0 + flops, w0 + weights)

    act = 5 if arch.gated_mlp else 8 if "gelu" in arch.activation else 1
    for i in range(arch.layers):
        w_in, w_out, attn = _mixer(arch, i, b, q_len, kv_len)
        add("qkv", 2.0 * m * w_in, w_in)
        add("attention", attn, 0)
        add("out_proj", 2.0 * m * w_out, w_out)
        up, down, up_read, down_read = _mlp(arch, i, touched)
        add("mlp_up", 2.0 * m * up, up_read)
        add("mlp_down", 2.0 * m * down, down_read)
        add("mlp_act", act * m * (down // arch.hidden), 0)
        if arch.mlps[i] == "moe":
            add("router", 2.0 * m * arch.hidden * arch.experts, arch.hidden * arch.experts)
    return {k: (f / arch.layers, w / arch.layers) for k, (f, w) in sums.items()}
