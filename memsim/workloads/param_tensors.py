"""The parameter tensors of one decoder layer, as the Hugging Face module holds them.

A framework that fetches weights parameter by parameter (DeepSpeed ZeRO-3: each sub-module's
``param.ds_tensor.to(device)``, one host-to-GPU copy per parameter) issues one copy per tensor
listed here, where memsim's layer tensor ``L{layer}.weight`` is one copy (memsim.sim.flows: each
copy pays its route's per-transfer latency). Element counts, in module order: the attention
projections q, k, v, o (each with its bias where the config has one), the MLP matrices, the
norms (weight, and bias for LayerNorm) and the q/k norms. Layers that are not a uniform
attention + dense MLP block (MoE, MLA, SSM, mixed layer kinds) return None: the layer is then
fetched as one copy.
"""

from __future__ import annotations

from memsim.workloads.models import Architecture


def layer_param_tensors(arch: Architecture) -> list[int] | None:
    """Element counts of one decoder layer's parameter tensors, or None when layers differ."""
    if set(arch.mixers) - {"attn", "local"} or set(arch.mlps) != {"dense"} or arch.is_moe:
        return None
    h, q, kv = arch.hidden, arch.q_dim, arch.kv_dim
    f = arch.dense_intermediate or arch.intermediate
    out: list[int] = []
    for width in (q, kv, kv):  # q, k, v: hidden -> width
        out.append(h * width)
        if arch.qkv_bias:
            out.append(width)
    out.append(q * h)  # o: q_dim -> hidden
    if arch.linear_bias:
        out.append(h)
    mats = [(h, f), (h, f), (f, h)] if arch.gated_mlp else [(h, f), (f, h)]
    for fan_in, fan_out in mats:
        out.append(fan_in * fan_out)
        if arch.linear_bias:
            out.append(fan_out)
    per_norm = {"rms": 1, "layer": 2, "none": 0}[arch.norm]
    out += [h] * (per_norm * arch.norms_per_layer)
    if arch.qk_norm:
        out += [arch.qk_norm // 2] * 2
    return out


# DeepSpeed's default stage3_param_persistence_threshold (DeepSpeedZeroConfig.param_persistence_threshold,
# 1e5 elements): a parameter of at most this many elements stays on the GPU and is not fetched.
PERSISTENCE_DEFAULT = 100_000


def fetched_copies(meta: dict, threshold: float) -> int | None:
    """Copies ZeRO-3 issues to fetch one layer: its parameter tensors above ``threshold``
    elements (``stage3_param_persistence_threshold``; smaller ones persist on the GPU). None
    when the trace does not list its layer's tensors."""
    tensors = meta.get("layer_param_tensors")
    if not tensors:
        return None
    return max(1, sum(1 for n in tensors if n > threshold))


# Share of a layer's elements persistent tensors may hold while memsim still streams the whole
# layer (biases and norms: 0.01% of an OPT-30B layer); above it they would be GPU-resident weights.
PERSISTENT_SHARE_MAX = 0.01


def threshold_for(meta: dict, copies: int) -> int | None:
    """The smallest persistence threshold under which ZeRO-3 fetches ``copies`` tensors a layer
    (the inverse of ``fetched_copies``) and keeps no more than ``PERSISTENT_SHARE_MAX`` of the
    layer resident, or None when no such threshold exists."""
    tensors = sorted(meta.get("layer_param_tensors") or [])
    for threshold in [0, *tensors]:
        kept = sum(n for n in tensors if n <= threshold)
        if kept > PERSISTENT_SHARE_MAX * sum(tensors):
            break
        if fetched_copies(meta, threshold) == copies:
            return threshold
    return None
