"""One rank's work under a parallel layout: the kernels and collectives of a micro-batch.

The trace of a layout with tensor, pipeline, context or expert parallelism carries, in
``meta["parallel"]["work"]``, what one rank of each pipeline stage does per micro-batch: the
layer's kernels with their FLOPs and bytes divided as Megatron-LM divides them, and the
collectives each parallel dimension implies, each tagged with its group and how it overlaps
compute. :mod:`memsim.sim.parallel` costs them on a System and schedules them; this module
only counts, so the sharding is checkable by hand.

Collectives per layer (Shoeybi et al. 2019; Korthikanti et al. 2022; Narayanan et al. 2021):

* tensor: two all-reduces of the layer's output (after attention and after the MLP) in the
  forward and two in the backward; with sequence parallelism each becomes an all-gather before
  the column-parallel matmul and a reduce-scatter after the row-parallel one (same bus bytes).
  Blocking: the next kernel needs the result (``mode: sync``).
* context: ring attention passes the K/V chunks around the ring while each chunk's attention
  runs (``mode: overlap`` with the attention kernel); the backward passes K/V and dK/dV.
* expert: an all-to-all dispatching tokens to their experts and one combining them, forward and
  backward (``sync``).
* ZeRO-3: the layer's parameters are all-gathered over the data-parallel group before its
  forward and again before its backward, prefetched one layer ahead (``mode: prefetch``).
* data: gradients are all-reduced (ZeRO 0) or reduce-scattered (ZeRO ≥ 1) on the last
  micro-batch (ZeRO 0–1) or on each (ZeRO 2–3, which keeps no full gradients between them),
  bucketed behind each layer's backward under ``overlap_grad_reduce`` (``mode: async``), else
  once after the backward.
* pipeline: the activations of a micro-batch go to the next stage and their gradients come
  back (``p2p_bytes``; with sequence parallelism each TP rank sends its sequence shard).
"""

from __future__ import annotations

from dataclasses import replace

from memsim.workloads import accounting as acc
from memsim.workloads.kernels import Kernel, head_kernels, layer_kernels
from memsim.workloads.models import Architecture
from memsim.workloads.parallel import Layout, layer_activation_bytes, rank_states, stage_params


def sharded_arch(arch: Architecture, t: int) -> Architecture:
    """The layer one tensor-parallel rank computes: heads, KV heads (one replicated head when
    t > kv_heads) and MLP columns divided by ``t``; hidden size and vocabulary unchanged."""
    if t == 1:
        return arch
    return replace(arch, heads=arch.heads // t, kv_heads=max(1, arch.kv_heads // t),
                   intermediate=acc.shard(arch.intermediate, t),
                   shared_intermediate=acc.shard(arch.shared_intermediate, t),
                   dense_intermediate=acc.shard(arch.dense_intermediate, t))


def _gpu(k: Kernel, phase: str, flops: float, nbytes: float) -> dict:
    return {"unit": "gpu", "name": k.key if phase == "forward" else k.key + "_bwd", "kind": k.kind,
            "phase": phase, "flops": float(flops), "bytes": float(nbytes),
            "rows": int(k.shape[0]) if k.kind == "matmul" else 0,
            "shape": tuple(int(x) for x in k.shape) if k.kind == "matmul" else None}


def _comm(name: str, coll: str, nbytes: float, group: str, mode: str) -> dict:
    return {"unit": "comm", "name": name, "coll": coll, "bytes": float(nbytes), "group": group,
            "mode": mode}


def _backward(k: Kernel, flash: bool, frozen: bool) -> dict:
    """The kernel's backward, as training.py costs it (dX and dW: 2×; flash attention 2.5×)."""
    if k.kind == "matmul":
        flops = (1 if frozen else 2) * k.flops
    elif k.kind == "attention":
        flops = (2.5 if flash else 2.0) * k.flops
    else:
        flops = 2 * k.flops
    return _gpu(k, "backward", flops, k.written + 2 * k.read + k.weight_bytes)


def _tp_pair(layout: Layout, name: str, nbytes: int) -> tuple[list, list]:
    """(before, after) collectives of one TP region: all-reduce after, or SP's all-gather before
    and reduce-scatter after."""
    if layout.tensor == 1:
        return [], []
    if layout.sequence_parallel:
        return ([_comm(name + "_ag", "all_gather", nbytes, "tensor", "sync")],
                [_comm(name + "_rs", "reduce_scatter", nbytes, "tensor", "sync")])
    return [], [_comm(name + "_ar", "all_reduce", nbytes, "tensor", "sync")]


def _with_attention_dropout(kernels: list[Kernel], scores: int, e: int) -> list[Kernel]:
    """Attention-probability dropout as its own kernel after attention (unfused, as in Megatron's
    2021 softmax → dropout → AV): it reads the probabilities and writes them with a one-byte
    mask (Korthikanti et al. 2022 count the mask's a·s² bytes in the saved activations)."""
    out = []
    for k in kernels:
        out.append(k)
        if k.key == "attention":
            out.append(Kernel("attn_dropout", "elementwise", float(scores), 0, scores * e, scores * (e + 1),
                              (scores,)))
    return out


def layer_weight_bytes(arch: Architecture, layout: Layout, e: int) -> int:
    """One layer's parameters on one rank, in bytes of the training dtype."""
    t = layout.tensor
    mlp = ((arch.experts // layout.expert) * acc.shard(arch.expert_params, t) if arch.is_moe
           else acc.shard(arch.expert_params, t))
    return (acc.shard(arch.qkv_params + arch.out_params, t) + mlp + 2 * arch.norm_params
            + arch.router_params) * e


def layer_ops(arch: Architecture, layout: Layout, *, b: int, s: int, e: int, flash: bool,
              zero_stage: int, frozen: bool = False) -> tuple[list[dict], list[dict]]:
    """(forward, backward) ops of one layer on one rank, collectives in place."""
    t, c = layout.tensor, layout.context
    s_local = -(-s // c)
    m = b * s_local
    rank_arch = sharded_arch(arch, t)
    kernels = layer_kernels(rank_arch, b, s_local, s, e, e, flash=flash)
    if arch.dropout and not flash:  # training without a fused kernel: dropout on the probabilities
        kernels = _with_attention_dropout(kernels, b * rank_arch.heads * s_local * s, e)
    x_bytes = m * arch.hidden * e  # the (full-sequence-shard) hidden states TP reduces
    kv_chunk = b * s_local * 2 * rank_arch.kv_dim * e
    ring = kv_chunk * c  # all K/V of the sequence, as an all-gather over the context group
    a2a = m * arch.experts_per_token * arch.hidden * e
    layer_w = layer_weight_bytes(arch, layout, e)
    gather = ([_comm("zero3_gather", "all_gather", layer_w, "data", "prefetch")]
              if zero_stage >= 3 and layout.dense_dp > 1 else [])
    attn_before, attn_after = _tp_pair(layout, "tp_attn", x_bytes)
    mlp_before, mlp_after = _tp_pair(layout, "tp_mlp", x_bytes)
    fwd: list[dict] = list(gather)
    bwd_rev: list[dict] = []  # built in forward order, reversed at the end
    for k in kernels:
        pre, post = [], []
        if k.key == "qkv":
            pre = attn_before
        elif k.key == "out_proj":
            post = attn_after
        elif k.key == ("router" if arch.is_moe else "mlp_up"):
            pre = mlp_before
        elif k.key == "mlp_down":
            post = mlp_after
        if k.key == "attention" and c > 1:
            pre = [_comm("cp_ring_kv", "all_gather", ring, "context", "overlap")]
        if arch.is_moe and layout.expert > 1 and k.key == "mlp_up":
            pre = [*pre, _comm("ep_dispatch", "all_to_all", a2a, "expert", "sync")]
        if arch.is_moe and layout.expert > 1 and k.key == "mlp_down":
            post = [_comm("ep_combine", "all_to_all", a2a, "expert", "sync"), *post]
        fwd += [*pre, _gpu(k, "forward", k.flops, k.weight_bytes + k.read + k.written), *post]
        if k.key in ("attn_residual", "mlp_residual"):
            continue
        # backward mirrors: the gradient of a TP "after" collective is the "before" one's kind
        back_pre = [dict(o, name=o["name"] + "_bwd") for o in post]
        back_post = [dict(o, name=o["name"] + "_bwd") for o in pre]
        if k.key == "attention" and c > 1:  # K/V again and dK/dV back around the ring
            back_post = [_comm("cp_ring_dkv_bwd", "all_gather", 2 * ring, "context", "overlap")]
        bwd_rev.append((back_pre, _backward(k, flash, frozen), back_post))
    bwd: list[dict] = [dict(o, name=o["name"] + "_bwd") for o in gather]
    for back_pre, kernel, back_post in reversed(bwd_rev):
        # a "before" comm of the backward kernel overlaps it when the forward one did
        bwd += back_pre + ([*back_post, kernel] if back_post and back_post[0]["mode"] == "overlap"
                           else [kernel, *back_post])
    return fwd, bwd


def grad_sync(params_bytes: int, layout: Layout, zero_stage: int, group: str = "data",
              dp: int | None = None) -> dict | None:
    """The data-parallel gradient collective of ``params_bytes`` of gradients (per layer)."""
    dp = layout.dense_dp if dp is None else dp
    if dp <= 1:
        return None
    # sharded optimizer states (ZeRO ≥ 1, Megatron's distributed optimizer): each rank needs only
    # its shard of the reduced gradients, and gathers the updated weights after the step
    coll = "reduce_scatter" if zero_stage >= 1 else "all_reduce"
    return _comm("dp_" + coll, coll, params_bytes, group, "async")


def rank_work(arch: Architecture, layout: Layout, *, micro_batch: int, seq_len: int,
              microbatches: int, precision: str, optimizer: str, zero_stage: int, flash: bool,
              trainable: bool = True) -> dict:
    """Everything :mod:`memsim.sim.parallel` needs about one rank of each pipeline stage."""
    e = acc.DTYPE_BYTES[precision]
    t, p = layout.tensor, layout.pipeline
    b, s = micro_batch, seq_len
    s_local = -(-s // layout.context)
    m = b * s_local
    fwd, bwd = layer_ops(arch, layout, b=b, s=s, e=e, flash=flash, zero_stage=zero_stage,
                         frozen=not trainable)
    rank_arch = sharded_arch(arch, t)
    norm, lm = head_kernels(replace(rank_arch, vocab=acc.shard(arch.vocab, t)), m, e, e)
    v_local = acc.shard(arch.vocab, t)
    loss = Kernel("loss", "elementwise", 5.0 * m * v_local, 0, m * v_local * 4, m * 4, (m * v_local,))
    head_fwd = [_gpu(norm, "forward", norm.flops, norm.read + norm.written + norm.weight_bytes),
                *([_comm("tp_head_ag", "all_gather", m * arch.hidden * e, "tensor", "sync")]
                  if layout.sequence_parallel and t > 1 else []),
                _gpu(lm, "forward", lm.flops, lm.weight_bytes + lm.read + lm.written),
                _gpu(loss, "forward", loss.flops, loss.read + loss.written),
                *([_comm("tp_vocab_loss_ar", "all_reduce", 3 * m * 4, "tensor", "sync")] if t > 1 else [])]
    x = m * arch.hidden * e
    head_bwd = [_gpu(loss, "backward", 2 * loss.flops, 2 * loss.read),
                _backward(lm, flash, not trainable),
                *([_comm("tp_head_bwd_ar", "all_reduce", x, "tensor", "sync")] if t > 1 else []),
                _backward(norm, flash, not trainable)]
    embed = Kernel("embed", "elementwise", 0.0, 0, x, x, (m * arch.hidden,))
    embed_fwd = [_gpu(embed, "forward", 0.0, embed.read + embed.written),
                 *([_comm("tp_embed_ar", "all_reduce", x, "tensor", "sync")] if t > 1 else [])]
    embed_bwd = [_gpu(embed, "backward", m * arch.hidden, 2 * embed.read)]
    counts = layout.stage_layers(arch.layers)
    stages = []
    for i in range(p):
        sp = stage_params(arch, layout, i)
        states = rank_states(arch, layout, i, zero_stage=zero_stage, precision=precision,
                             optimizer=optimizer, trainable=trainable)
        local = sp.total
        opt_params = acc.shard(local, layout.dense_dp) if zero_stage >= 1 else local
        per_stage = counts[i]
        syncs = [x for x in (grad_sync(sp.dense * e // per_stage, layout, zero_stage),
                             grad_sync(sp.expert * e // per_stage, layout, zero_stage, "expert_data",
                                       layout.expert_dp) if sp.expert else None) if x] if trainable else []
        stages.append({
            "stage": i, "layers": per_stage, "params": local, "weights": states.weights,
            "grads": states.grads, "optimizer": states.optimizer,
            "grad_sync": syncs,  # per layer, behind each layer's backward
            "opt_flops": float(acc.optimizer_flops_per_param(optimizer) * opt_params) if trainable else 0.0,
            "opt_bytes": float(states.optimizer + 2 * opt_params * e) if trainable else 0.0,
            "param_gather": (float(local * e) if trainable and zero_stage in (1, 2) and layout.dense_dp > 1
                             else 0.0),
        })
    act = layer_activation_bytes(arch, layout, b, s, e, flash)
    seq_shard = layout.sequence_parallel and t > 1
    return {
        "microbatches": microbatches, "dtype": precision, "zero_stage": zero_stage,
        "layer_fwd": fwd, "layer_bwd": bwd, "head_fwd": head_fwd, "head_bwd": head_bwd,
        "embed_fwd": embed_fwd, "embed_bwd": embed_bwd, "stages": stages,
        # each TP rank sends its 1/t of the activations: the sequence shard under SP, else
        # Megatron's scatter/gather optimisation (Narayanan et al. 2021 §4.1), re-gathered on NVLink
        "p2p_bytes": float(acc.shard(m * arch.hidden * e, t)),
        "p2p_gather_bytes": 0.0 if seq_shard or t == 1 else float(m * arch.hidden * e),
        "layer_activation_bytes": act,
        # under full recompute a layer keeps only its input (sequence-sharded under SP)
        "layer_input_bytes": acc.shard(m * arch.hidden * e, t) if seq_shard else m * arch.hidden * e,
        "logits_bytes": m * v_local * 4,
        "layer_weight_bytes": layer_weight_bytes(arch, layout, e),
        "sp_buffer_bytes": m * arch.hidden * e if seq_shard else 0,
    }


#: families whose attention projects Q, K and V with one fused matrix (GPT-2's c_attn, Megatron's
#: query_key_value, GPT-NeoX, BLOOM, Falcon); the others keep q_proj, k_proj, v_proj apart
FUSED_QKV = frozenset({"gpt2", "gpt_neox", "bloom", "falcon"})


def layer_param_tensors(arch: Architecture) -> int:
    """How many parameter tensors one dense decoder layer holds: its weight matrices, their
    biases and the norms' weights (and LayerNorm biases). A MoE layer counts each expert's."""
    qkv = 1 if arch.family in FUSED_QKV else 3
    mlp = 3 if arch.gated_mlp else 2
    experts = arch.experts if arch.is_moe else 1
    weights = qkv + 1 + experts * mlp + (1 if arch.is_moe else 0)
    biases = (qkv if arch.qkv_bias else 0) + ((1 + experts * mlp) if arch.linear_bias else 0)
    norms = arch.norms_per_layer * (2 if arch.norm == "layer" else 1)
    return weights + biases + norms


def gather_per_tensor(work: dict, arch: Architecture) -> dict:
    """ZeRO-3 as DeepSpeed 0.3.x ran it: each parameter tensor its own all-gather
    (``Init._allgather_param``, one ``torch.distributed.all_gather`` per parameter, in
    deepspeed/runtime/zero/partition_parameters.py at v0.3.13), so a layer's gather pays the
    ring's latency once per tensor; the bytes are the same. The collective count goes on each
    gather as ``calls`` (memsim.sim.parallel costs ``calls`` collectives of bytes/calls)."""
    n = layer_param_tensors(arch)
    for key in ("layer_fwd", "layer_bwd"):
        work[key] = [dict(o, calls=n) if o.get("name", "").startswith("zero3_gather") else o
                     for o in work[key]]
    return work


def _overlapped(ops: list[dict]) -> list[dict]:
    """One pass's ops with each sequence-parallel collective beside a GEMM: one that a matmul
    follows runs with it (the all-gather feeding it); otherwise one that a matmul precedes
    moves ahead of it and runs with it (the reduce-scatter its chunks stream into)."""
    def sp(op: dict) -> bool:
        return (op["unit"] == "comm" and op["group"] == "tensor" and op["mode"] == "sync"
                and op["coll"] in ("all_gather", "reduce_scatter"))

    out: list[dict] = []
    for i, op in enumerate(ops):
        if not sp(op):
            out.append(op)
        elif i + 1 < len(ops) and ops[i + 1].get("kind") == "matmul":
            out.append(dict(op, mode="overlap"))
        elif (out and out[-1].get("kind") == "matmul"
              and not (len(out) > 1 and out[-2].get("mode") == "overlap")):  # one per GEMM
            out.insert(len(out) - 1, dict(op, mode="overlap"))
        else:
            out.append(op)
    return out


def overlap_tp_comm(work: dict) -> dict:
    """Tensor-parallel communication overlapped with the GEMMs (Megatron-Core's
    ``--tp-comm-overlap``: Transformer Engine splits each GEMM into chunks and pipelines the
    sequence-parallel all-gather before it and the reduce-scatter after it with them), so a
    collective costs only what its GEMM does not hide."""
    for key in ("layer_fwd", "layer_bwd"):
        work[key] = _overlapped(work[key])
    return work


def with_work(trace, workload, arch: Architecture | None = None):
    """Make sure a training trace carries its rank work: a layout within data parallelism has
    none by default (the single-rank engine runs it), but one spanning nodes, or one the layout
    search compares with others, is run by memsim.sim.parallel like every other layout."""
    par = trace.meta["parallel"]
    if "work" not in par:
        from memsim.workloads import workload_architecture
        from memsim.workloads.parallel import layout_of

        t = workload.training
        arch = arch if arch is not None else workload_architecture(workload)
        par["work"] = rank_work(arch, layout_of(t), micro_batch=t.micro_batch, seq_len=t.seq_len,
                                microbatches=t.grad_accum, precision=t.precision, optimizer=t.optimizer,
                                zero_stage=t.zero_stage, flash=t.flash_attention, trainable=t.lora is None)
        par["work"]["overlap_grad_reduce"] = t.overlap_grad_reduce
        if t.zero3_gather == "tensor":
            gather_per_tensor(par["work"], arch)
        if t.tp_comm_overlap:
            overlap_tp_comm(par["work"])
    trace.workload_spec = workload
    return trace
