"""Batched generation → Trace: prefill the prompt, then decode token by token.

Tensors: ``L{layer}.weight`` (the layer's weights in the inference dtype, every expert of an MoE
layer), ``L{layer}.kv`` (the layer's KV cache for the whole batch at prompt_len + gen_len tokens,
at ``kv_bits``), plain ``embed.weight`` / ``head.weight`` (final norm and an untied LM head), and
the reused activation buffers ``hidden`` (the residual stream), ``act`` (the largest set of a
layer's intermediates alive at once) and ``logits`` (fp32, last position only, as vLLM and
FlexGen compute them), all sized for the prefill, which decode reuses.

Blocks: ``embed``, ``prefill`` (templated; with ``prefill_chunk`` both run once per chunk, at
the mean context of the chunks, chunk·(chunks+1)/2), ``head`` (the first generated token), ``decode``
(templated, ``iterations = gen_len - 1``) and ``decode_head`` (embedding and LM head of those
same iterations; the simulator sums per-iteration time, so running them after the layers changes
no total). Decode costs are those of a step at the **mean** context length of the decode steps,
prompt_len + 1 + gen_len/2 (step t of 1..gen_len-1 attends over prompt_len + t + 1 tokens), so
``iterations ×`` one step equals the sum over the real steps for FLOPs and KV bytes read.
Attention is fused (FlashAttention / FlashDecoding): no score matrix goes through memory.
"""

from __future__ import annotations

from memsim.errors import SpecError
from memsim.workloads import accounting as acc
from memsim.workloads import moe
from memsim.workloads.builder import L, TraceBuilder, op
from memsim.workloads.dequant import DEQUANT_DTYPE, table_dequant_bytes
from memsim.workloads.kernels import Kernel, head_kernels, layer_kernels
from memsim.workloads.models import Architecture
from memsim.workloads.param_tensors import layer_param_tensors
from memsim.workloads.spec import Workload
from memsim.workloads.trace import Op, TokenCosts, Trace

KV_DTYPE = {16: "fp16", 8: "int8", 4: "int4", 2: "int2"}


def kv_dtype_name(job) -> str:
    """The KV tensor's dtype label: vLLM's fp8 formats by name (``fp8`` is e4m3 in vLLM), else
    by bits."""
    name = getattr(job, "kv_cache_dtype", None)
    if name and name != "auto":
        return "fp8_e4m3" if name == "fp8" else name
    return KV_DTYPE[job.kv_bits]


ROUTED_KERNELS = ("mlp_up", "mlp_down")  # the kernels that multiply by the routed experts


def act_bytes(arch: Architecture, tokens: int, e: int) -> int:
    """Intermediates of one layer alive at once for ``tokens`` new tokens: the norm output with the
    QKV output, or the MLP input with its up/gate outputs and activation output (k experts)."""
    k = arch.experts_per_token
    mlp = arch.hidden + k * ((2 if arch.gated_mlp else 1) * arch.intermediate + arch.intermediate)
    return tokens * e * max(arch.hidden + arch.qkv_dim + arch.q_dim, mlp)


def declare_model(tb: TraceBuilder, arch: Architecture, dtype: str, e: int) -> None:
    layer_bytes = arch.layer_params * e
    embed, head = arch.table_bytes(e)
    if arch.quant is not None:  # packed linears: the templated layer carries the mean layer bytes
        layer_bytes = -(-(arch.weight_bytes(e) - embed - head) // arch.layers)
    if arch.is_moe:  # routed experts apart: a step reads only those its tokens route to (moe.py)
        experts = -(-moe.routed_expert_bytes(arch, e) // arch.layers)
        tb.tensor(L + moe.EXPERTS, experts, "weight", dtype)
        layer_bytes -= experts
    tb.tensor(L + "weight", layer_bytes, "weight", dtype)
    tb.tensor("embed.weight", embed, "weight", dtype)
    tb.tensor("head.weight", head, "weight", dtype)


def layer_ops(kernels: list[Kernel], phase: str, kv_write: int, dtype: str, *,
              experts: bool = False) -> list[Op]:
    """One layer's ops over the ``hidden``/``act`` buffers; QKV appends to and attention reads
    ``L{layer}.kv``; with ``experts`` the routed MLP reads ``L{layer}.experts``."""
    W, kv = L + "weight", L + "kv"
    ops = []
    for k in kernels:
        w = L + moe.EXPERTS if experts and k.key in ROUTED_KERNELS else W
        ins: tuple[str, ...] = ("act", w) if k.weight_bytes else ("act",)
        outs: tuple[str, ...] = ("act",)
        written = k.written
        if k.key in ("attn_norm", "mlp_norm"):
            ins = ("hidden", W)
        elif k.key in ("attn_residual", "mlp_residual"):
            ins, outs = ("hidden", "act"), ("hidden",)
        elif k.key == "qkv":
            outs, written = ("act", kv), written + kv_write
        elif k.key == "attention":
            ins = ("act", kv)
        ops.append(op(L + k.key, k.kind, phase, k.flops, k.weight_bytes + k.read, written, ins, outs,
                      dtype=DEQUANT_DTYPE if k.key == "dequant" else dtype, shape=k.shape))
    return ops


def head_ops(arch: Architecture, batch: int, e: int, phase: str, dtype: str, prefix: str = "") -> list[Op]:
    """Final norm, LM head (last position of each sequence) and sampling."""
    norm, lm = head_kernels(arch, batch, e, e)
    lm_w = "embed.weight" if arch.tied_embeddings else "head.weight"
    return [
        op(prefix + "final_norm", "elementwise", phase, norm.flops, norm.weight_bytes + norm.read,
           norm.written,
           ("hidden", "head.weight"), ("act",), dtype=dtype, shape=norm.shape),
        op(prefix + "lm_head", "matmul", phase, lm.flops,
           lm.weight_bytes + lm.read + table_dequant_bytes(arch, e), lm.written, ("act", lm_w),
           ("logits",), dtype=dtype, shape=lm.shape),
        op(prefix + "sample", "elementwise", phase, 5 * batch * arch.vocab, batch * arch.vocab * 4, batch * 8,
           ("logits",), (), dtype="fp32", shape=(batch * arch.vocab,)),
    ]


def embed_op(arch: Architecture, tokens: int, e: int, phase: str, dtype: str, name: str = "embed") -> Op:
    pos = 2 if arch.learned_positions else 1
    return op(name, "embedding", phase, tokens * arch.hidden * (pos - 1),
              tokens * arch.hidden * e * pos + table_dequant_bytes(arch, e), tokens * arch.hidden * e,
              ("embed.weight",), ("hidden",), dtype=dtype, shape=(tokens * arch.hidden,))


def token_costs(arch: Architecture, e: int, kv_bits: int) -> TokenCosts:
    """Per-token costs for a batching scheduler: 2 FLOPs per active matmul weight (LM head
    included, embedding lookup not), 4·a·d per (new token × context token) per layer."""
    matmul_params = arch.layers * (arch.layer_active_params - 2 * arch.norm_params) + arch.vocab * arch.hidden
    return TokenCosts(
        weight_bytes=arch.weight_bytes(e), flops_per_token=2.0 * matmul_params,
        attn_flops_per_token_ctx=4.0 * arch.heads * arch.head_dim * arch.layers,
        kv_bytes_per_token=acc.kv_bytes(arch, 1, kv_bits), activation_bytes_per_token=act_bytes(arch, 1, e),
        layers=arch.layers, routed_expert_bytes=moe.routed_expert_bytes(arch, e),
        experts=arch.experts if arch.is_moe else 0,
        experts_per_token=arch.experts_per_token if arch.is_moe else 0)


KV_PREVIOUS = "kv.previous"  # inference.kv_growth concat: the cache the step is replacing


def build_inference(w: Workload, arch: Architecture) -> Trace:
    from dataclasses import asdict, replace

    inf = w.inference
    e, dt = acc.DTYPE_BYTES[inf.dtype], inf.dtype
    kv_e = inf.kv_bits / 8
    auto = inf.batch_size == "auto"  # memsim plan searches it (memsim/planners/batch.py); the
    b, p, g = 1 if auto else inf.batch_size, inf.prompt_len, inf.gen_len  # trace is batch 1
    tb = TraceBuilder(w.name, "inference", arch.layers)
    declare_model(tb, arch, dt, e)
    per_layer_kv = acc.kv_bytes(arch, b * (p + g), inf.kv_bits, layers=1, context=p + g)
    chunk = inf.prefill_chunk or p
    if p % chunk:
        raise SpecError(f"prefill_chunk {chunk} does not divide prompt_len {p}", file=w._source,
                        key="inference.prefill_chunk")
    chunks = p // chunk
    kv_read = {"prefill_e": kv_e, "decode_e": kv_e}  # bytes per cached element attention reads
    if inf.kv_quant is not None:  # KIVI's scales, zero points and fp16 residual (kvquant.py)
        from memsim.workloads.kvquant import layout

        kv_read = layout(arch, b, p + g, chunk * (chunks + 1) / 2, p + 1 + g / 2, inf.kv_bits,
                         inf.kv_quant, w._source)
        per_layer_kv = int(kv_read["layer_bytes"])
    tb.tensor(L + "kv", per_layer_kv, "kv", kv_dtype_name(inf))
    if inf.kv_growth == "concat":  # the previous step's cache, held through each decode step
        from memsim.workloads.kvquant import concat_held_bytes

        held = b * concat_held_bytes(arch, p, g, inf.kv_bits, inf.kv_quant)
        tb.tensor(KV_PREVIOUS, int(held), "activation", kv_dtype_name(inf))
    tb.tensor("hidden", b * chunk * arch.hidden * e, "activation", dt)
    tb.tensor("act", act_bytes(arch, b * chunk, e), "activation", dt)
    tb.tensor("logits", b * arch.vocab * 4, "activation", "fp32")

    # chunk i (0-based) attends over (i+1)·chunk tokens: the mean is chunk·(chunks+1)/2
    prefill = layer_kernels(arch, b, chunk, chunk * (chunks + 1) / 2, e, e, kv_e=kv_read["prefill_e"],
                            dequant=True)
    kv_chunk = int(b * chunk * arch.kv_token_elems * kv_e)
    tb.block("embed", [embed_op(arch, b * chunk, e, "prefill", dt)], iterations=chunks)
    tb.block("prefill", layer_ops(prefill, "prefill", kv_chunk, dt, experts=arch.is_moe), templated=True,
             iterations=chunks)
    tb.block("head", head_ops(arch, b, e, "prefill", dt))
    steps = g - 1
    mean_ctx = p + 1 + g / 2
    decode = layer_kernels(arch, b, 1, mean_ctx, e, e, kv_e=kv_read["decode_e"], dequant=True)
    if inf.kv_quant is not None:  # decode dequantises every cached element attention reads
        from memsim.workloads.kvquant import DEQUANT_FLOPS_PER_ELEM  # (the prefill's are fresh)

        extra = DEQUANT_FLOPS_PER_ELEM * b * arch.kv_layer_mean_elems(mean_ctx)
        decode = [replace(k, flops=k.flops + extra) if k.key == "attention" else k for k in decode]
    tb.block("decode", layer_ops(decode, "decode", int(b * arch.kv_token_elems * kv_e), dt,
                                 experts=arch.is_moe), templated=True, iterations=steps)
    tail = [embed_op(arch, b, e, "decode", dt, "decode_embed"),
            *head_ops(arch, b, e, "decode", dt, "decode_")]
    if inf.kv_growth == "concat":  # alive from the first decode step's start to the last's end
        tail = [replace(o, inputs=(*o.inputs, KV_PREVIOUS))
                if o.name in ("decode_embed", "decode_sample") else o for o in tail]
    tb.block("decode_head", tail, iterations=steps)

    trace = tb.trace({})
    trace.meta.update({
        "kind": "inference", "model": arch.name, "params": arch.params, "active_params": arch.active_params,
        "layers": arch.layers, "dtype": dt, "tokens_per_step": b * g, "flops_per_step": trace.flops,
        "per_device_bytes": tb.per_device_bytes(), "data_parallel": 1, "batch_size": b, "prompt_len": p,
        "gen_len": g, "kv_bits": inf.kv_bits, "decode_mean_context": mean_ctx, "prefill_chunk": chunk,
        "prefill_chunks": chunks, "kv_heads": arch.kv_heads,
        "token_costs": asdict(token_costs(arch, e, inf.kv_bits)),
    })
    tensors = layer_param_tensors(arch)
    if tensors is not None:  # what a per-parameter fetch (ZeRO-3) copies, one tensor at a time
        trace.meta.update({"hidden": arch.hidden, "layer_param_tensors": tensors})
    if auto:
        trace.meta["batch_size_auto"] = {"max_latency_s": inf.max_latency_s}
        trace.meta["workload_notes"] = [*trace.meta.get("workload_notes", []), (
            "batch_size auto: memsim plan searches the batch; these figures are batch 1's")]
    if arch.is_moe:
        trace.meta["routed_experts"] = moe.trace_meta(arch, {"prefill": b * chunk, "decode": b})
    if inf.kv_budget is not None or inf.kv_prefetch is not None:  # kept and fetched KV
        from memsim.workloads.kv_budget import apply

        apply(trace, arch, inf, e, dt, w._source)
    if inf.sparsity is not None:
        from memsim.workloads.sparsity import sparsify

        sparsify(trace, arch, inf.sparsity, e, dt, w._source)
    return trace
