"""Sharding accounting of a parallel layout: what one rank holds under TP, PP, CP, EP and ZeRO.

A layout is Megatron-LM's 5-D grid (Shoeybi et al. 2019; Narayanan et al. 2021, "Efficient
Large-Scale Language Model Training on GPU Clusters"; Korthikanti et al. 2022 for sequence
parallelism): ``tensor`` splits every attention head group and MLP column/row across ranks of a
node, ``pipeline`` splits the layers into stages, ``context`` splits the sequence (ring
attention), ``data`` replicates the rest, and ``expert`` places MoE experts across ranks carved
out of the data×context ranks (Megatron-Core's expert-parallel group). The GPU count is
tensor × pipeline × context × data.

The figures here are exact byte counts per rank, built on :mod:`memsim.workloads.accounting`,
so they can be checked by hand (tests/test_parallel_accounting.py does).
"""

from __future__ import annotations

from dataclasses import dataclass

from memsim.errors import SpecError
from memsim.workloads.accounting import DTYPE_BYTES, kv_bytes, layer_activations, optimizer_bytes, shard
from memsim.workloads.models import Architecture

DEGREES = ("tensor", "pipeline", "data", "context", "expert")


@dataclass(frozen=True)
class Layout:
    """Degrees of each kind of parallelism (1: none) and Megatron's sequence parallelism."""

    tensor: int = 1
    pipeline: int = 1
    data: int = 1
    context: int = 1
    expert: int = 1
    sequence_parallel: bool = False
    first_layers: int = 0  # layers of the first pipeline stage (0: an even split)
    last_layers: int = 0  # layers of the last pipeline stage (0: an even split)

    def stage_layers(self, layers: int) -> list[int]:
        """Layers per pipeline stage: an even split, or Megatron-Core's uneven one
        (decoder_first/last_pipeline_num_layers) with the rest even over the middle stages."""
        p = self.pipeline
        if p == 1 or not (self.first_layers or self.last_layers):
            return [layers // p] * p
        middle = (layers - self.first_layers - self.last_layers) // max(1, p - 2)
        return [self.first_layers or middle] + [middle] * (p - 2) + [self.last_layers or middle]

    @property
    def gpus(self) -> int:
        """Expert parallelism reuses data×context ranks, so it does not multiply the count."""
        return self.tensor * self.pipeline * self.data * self.context

    @property
    def dense_dp(self) -> int:
        """Ranks holding the same dense parameters: Megatron's distributed optimizer shards over
        data × context (context ranks hold the same weights)."""
        return self.data * self.context

    @property
    def expert_dp(self) -> int:
        """Ranks holding the same experts: the dense DP group divided among expert groups."""
        return self.dense_dp // self.expert


def validate_layout(arch: Architecture, layout: Layout, *, nodes: int | None = None,
                    gpus_per_node: int | None = None,
                    seq_len: int | None = None, file: str | None = None,
                    prefix: str = "training.parallel") -> None:
    """Exit-2 errors naming the key when the layout cannot shard this model on this cluster
    (the GPU count is checked only when ``nodes`` and ``gpus_per_node`` are given)."""
    for name in DEGREES:
        if getattr(layout, name) < 1:
            raise SpecError(f"must be ≥ 1, got {getattr(layout, name)}", file=file, key=f"{prefix}.{name}")
    t = layout.tensor
    if arch.heads % t:
        raise SpecError(f"tensor={t} must divide the {arch.name} attention heads ({arch.heads})",
                        file=file, key=f"{prefix}.tensor")
    # GQA: each rank needs whole KV heads, or t a multiple of them (KV heads replicated, as vLLM
    # and Megatron-Core do when tensor > num_key_value_heads).
    if arch.kv_heads % t and t % arch.kv_heads:
        raise SpecError(f"tensor={t} and the {arch.kv_heads} KV heads of {arch.name} must divide one "
                        "another", file=file, key=f"{prefix}.tensor")
    if layout.first_layers or layout.last_layers:
        p, ends = layout.pipeline, layout.first_layers + layout.last_layers
        rest = arch.layers - ends
        if p < 2 or rest < 0 or (p > 2 and (rest % (p - 2) or rest == 0)) or (p == 2 and rest):
            raise SpecError(f"pipeline_first_layers + pipeline_last_layers ({ends}) must leave the other "
                            f"{p - 2} stages an even share of the {arch.layers} layers of {arch.name}",
                            file=file, key="training.pipeline_first_layers")
    elif arch.layers % layout.pipeline:
        raise SpecError(f"pipeline={layout.pipeline} must divide the {arch.layers} layers of {arch.name}",
                        file=file, key=f"{prefix}.pipeline")
    if layout.expert > 1:
        if not arch.is_moe or arch.experts % layout.expert:
            raise SpecError(f"expert={layout.expert} must divide the experts of {arch.name} "
                            f"({arch.experts})", file=file, key=f"{prefix}.expert")
        if layout.dense_dp % layout.expert:
            raise SpecError(f"expert={layout.expert} must divide data×context ({layout.dense_dp}): "
                            "expert ranks are carved out of them", file=file, key=f"{prefix}.expert")
    if seq_len is not None and seq_len % layout.context:
        raise SpecError(f"context={layout.context} must divide seq_len ({seq_len})",
                        file=file, key=f"{prefix}.context")
    if nodes is None or gpus_per_node is None:
        return
    have = nodes * gpus_per_node
    if layout.gpus > have:
        raise SpecError(f"tensor×pipeline×context×data = {layout.gpus} GPUs, but the system has "
                        f"{nodes} node(s) × {gpus_per_node} GPUs = {have}", file=file,
                        key=f"{prefix}.data" if layout.data > 1 else f"{prefix}.tensor")


@dataclass(frozen=True)
class StageParams:
    """Parameters one rank of a pipeline stage holds, split by which DP group shards them."""

    dense: int  # replicated across data×context ranks
    expert: int  # replicated across data×context/expert ranks

    @property
    def total(self) -> int:
        return self.dense + self.expert


def stage_params(arch: Architecture, layout: Layout, stage: int) -> StageParams:
    """Parameters on one rank of pipeline stage ``stage``.

    Megatron's tensor parallelism splits QKV and the MLP by columns and the out/down projections
    by rows (biases of row-parallel layers and all norms stay replicated); the embedding and LM
    head are vocab-parallel. The embedding lives on the first stage, the final norm and head on
    the last. Experts are spread over ``expert`` ranks, each expert's MLP also split by ``tensor``.
    """
    t, p = layout.tensor, layout.pipeline
    per_stage = layout.stage_layers(arch.layers)[stage]
    attn = shard(arch.qkv_params + arch.out_params, t)
    norms = 2 * arch.norm_params + arch.router_params
    if arch.is_moe:
        expert_layer = (arch.experts // layout.expert) * shard(arch.expert_params, t)
        dense_layer = attn + norms
    else:
        dense_layer, expert_layer = attn + norms + shard(arch.expert_params, t), 0
    dense = per_stage * dense_layer
    if stage == 0:
        dense += shard(arch.embed_params, t)
    if stage == p - 1:
        head = arch.head_params - arch.norm_params
        dense += arch.norm_params + shard(head, t)
    return StageParams(dense=dense, expert=per_stage * expert_layer)


@dataclass(frozen=True)
class RankStates:
    """Model-state bytes of one rank (weights, gradients, optimizer states)."""

    weights: int
    grads: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer


def rank_states(arch: Architecture, layout: Layout, stage: int, *, zero_stage: int = 0,
                precision: str = "bf16", optimizer: str = "adamw", trainable: bool = True) -> RankStates:
    """Model states of one rank of ``stage`` under ZeRO ``zero_stage`` (Rajbhandari et al. 2020):
    stage 1 shards the optimizer states over the DP group, 2 also gradients, 3 also weights.
    Dense parameters shard over data×context, expert parameters over data×context/expert.
    ``trainable=False`` (frozen base weights, e.g. under LoRA) keeps no gradients or states."""
    sp = stage_params(arch, layout, stage)
    e = DTYPE_BYTES[precision]
    out = [0, 0, 0]
    for params, dp in ((sp.dense, layout.dense_dp), (sp.expert, layout.expert_dp)):
        w = params * e
        g, o = (params * e, optimizer_bytes(params, precision, optimizer)) if trainable else (0, 0)
        out[0] += shard(w, dp) if zero_stage >= 3 else w
        out[1] += shard(g, dp) if zero_stage >= 2 else g
        out[2] += shard(o, dp) if zero_stage >= 1 else o
    return RankStates(*out)


def busiest_stage(arch: Architecture, layout: Layout, **kw) -> tuple[int, RankStates]:
    """The pipeline stage whose rank holds the most model-state bytes (first one on ties)."""
    states = [rank_states(arch, layout, i, **kw) for i in range(layout.pipeline)]
    best = max(range(layout.pipeline), key=lambda i: (states[i].total, -i))
    return best, states[best]


def layer_activation_bytes(arch: Architecture, layout: Layout, b: int, s: int, e: int,
                           flash: bool = True) -> int:
    """Saved activations of one layer on one rank (Korthikanti et al. 2022, Eq. 2 and §4.2.2).

    Context parallelism splits the sequence: each rank saves its s/context tokens. Tensor
    parallelism splits everything inside the attention and MLP blocks by t, but the norm
    inputs, the QKV and MLP inputs and the dropout masks (10·sbh of the paper's 34·sbh) stay
    replicated; sequence parallelism splits those along the sequence too, so the whole layer
    divides by t.
    """
    s_local = -(-s // layout.context)
    acts = layer_activations(arch, b, s_local, e, flash)
    t = layout.tensor
    if layout.sequence_parallel or t == 1:
        return shard(acts.total, t)
    tokens_h = b * s_local * arch.hidden
    replicated = 4 * tokens_h * e + (2 * tokens_h if arch.dropout else 0)
    return replicated + shard(acts.total - replicated, t)


def inflight_microbatches(layout: Layout, stage: int, microbatches: int, schedule: str = "1f1b") -> int:
    """Micro-batches whose activations stage ``stage`` holds at its peak under 1F1B: P − stage
    (Narayanan et al. 2021, §2.2.1), never more than the step has. GPipe holds all of them."""
    if schedule == "gpipe":
        return microbatches
    return min(layout.pipeline - stage, microbatches)


def stage_activation_bytes(arch: Architecture, layout: Layout, stage: int, *, b: int, s: int,
                           microbatches: int, e: int = 2, flash: bool = True) -> int:
    """Peak activation bytes of one rank of ``stage``: its layers × in-flight micro-batches."""
    per_stage = layout.stage_layers(arch.layers)[stage]
    held = inflight_microbatches(layout, stage, microbatches)
    return held * per_stage * layer_activation_bytes(arch, layout, b, s, e, flash)


def kv_bytes_per_gpu(arch: Architecture, layout: Layout, tokens: int, kv_bits: int = 16) -> int:
    """KV-cache bytes one GPU holds for ``tokens`` tokens: its layers (PP) and its KV heads
    (TP; when tensor > kv_heads each rank keeps one replicated head, as vLLM does)."""
    heads_here = max(1, arch.kv_heads // layout.tensor)
    per_head = kv_bytes(arch, tokens, kv_bits, layers=arch.layers // layout.pipeline) // arch.kv_heads
    return heads_here * per_head


def groups(layout: Layout) -> dict[str, tuple[int, int]]:
    """Each parallel group's (size, rank stride) in Megatron-LM's rank order, tensor innermost,
    then context, data and pipeline (megatron/core/parallel_state.py, order "tp-cp-ep-dp-pp"):
    TP stays inside a node as long as tensor ≤ GPUs per node."""
    t, c, d = layout.tensor, layout.context, layout.data
    return {"tensor": (t, 1), "context": (c, t), "data": (d, t * c), "pipeline": (layout.pipeline, t * c * d),
            "expert": (layout.expert, t)}


def layout_of(t) -> Layout:
    """The :class:`Layout` of a ``training`` spec (``memsim.workloads.spec.Training``)."""
    p = t.parallel
    return Layout(tensor=p.tensor, pipeline=p.pipeline, data=p.data, context=p.context, expert=p.expert,
                  sequence_parallel=t.sequence_parallel, first_layers=t.pipeline_first_layers,
                  last_layers=t.pipeline_last_layers)


def training_layout_summary(arch: Architecture, t, file: str | None = None) -> dict:
    """Validate a training spec's layout and account its busiest rank (the trace's ``parallel``
    metadata): per-GPU model states and activations of the stage that holds the most, and which.

    Beyond data parallelism the summary carries ``work``: one rank's kernels and collectives per
    pipeline stage (memsim.workloads.parallel_work), which memsim.sim.parallel schedules. LoRA
    adapters' own states are left out here (the trace counts them)."""
    lay = layout_of(t)
    validate_layout(arch, lay, seq_len=t.seq_len, file=file)
    e = DTYPE_BYTES[t.precision]
    per_stage = []
    for i in range(lay.pipeline):
        states = rank_states(arch, lay, i, zero_stage=t.zero_stage, precision=t.precision,
                             optimizer=t.optimizer, trainable=t.lora is None)
        acts = stage_activation_bytes(arch, lay, i, b=t.micro_batch, s=t.seq_len,
                                      microbatches=t.grad_accum, e=e, flash=t.flash_attention)
        per_stage.append({"stage": i, "weights": states.weights, "grads": states.grads,
                          "optimizer": states.optimizer, "activations": acts,
                          "total": states.total + acts})
    busiest = max(per_stage, key=lambda r: (r["total"], -r["stage"]))
    if t.tp_comm_overlap and not (t.sequence_parallel and lay.tensor > 1):
        # megatron/training/arguments.py: "Tensor parallel communication/GEMM overlap can happen
        # only when sequence parallelism is enabled"
        raise SpecError("tp_comm_overlap needs sequence_parallel: true and tensor > 1", file=file,
                        key="training.tp_comm_overlap")
    # Megatron-Core splits each stage's layers evenly over its chunks, uneven stages included
    # (transformer_block.get_num_layers_to_build): every stage's count must divide by them
    counts = lay.stage_layers(arch.layers)
    if t.pipeline_schedule == "interleaved" and any(n % t.virtual_stages for n in counts):
        raise SpecError(f"virtual_stages={t.virtual_stages} must divide every pipeline stage's layers "
                        f"({', '.join(map(str, sorted(set(counts))))} of {arch.name}'s {arch.layers})",
                        file=file, key="training.virtual_stages")
    out = {"tensor": lay.tensor, "pipeline": lay.pipeline, "data": lay.data, "context": lay.context,
           "expert": lay.expert, "sequence_parallel": lay.sequence_parallel,
           "pipeline_schedule": t.pipeline_schedule, "virtual_stages": t.virtual_stages, "gpus": lay.gpus,
           "busiest_rank": {"stage": busiest["stage"], "bytes": busiest["total"]},
           "per_stage": per_stage, "scheduled": True}
    # inputs of the rank work that the trace holds nowhere else: in the trace itself, so traces
    # built without work (a pure data-parallel run, given its work only when simulated across
    # nodes) differ too, and the simulation memo (memsim/sim/memo.py) tells them apart
    if t.zero3_gather != "layer":
        out["zero3_gather"] = t.zero3_gather
    if t.overlap_grad_reduce:
        out["overlap_grad_reduce"] = True
    if lay.gpus != lay.data or lay.expert > 1:  # beyond data parallelism: memsim.sim.parallel runs it
        from memsim.workloads.parallel_work import rank_work

        out["work"] = rank_work(arch, lay, micro_batch=t.micro_batch, seq_len=t.seq_len,
                                microbatches=t.grad_accum, precision=t.precision, optimizer=t.optimizer,
                                zero_stage=t.zero_stage, flash=t.flash_attention, trainable=t.lora is None)
        out["work"]["overlap_grad_reduce"] = t.overlap_grad_reduce
        if t.zero3_gather == "tensor":
            from memsim.workloads.parallel_work import gather_per_tensor

            gather_per_tensor(out["work"], arch)
        if t.tp_comm_overlap:
            from memsim.workloads.parallel_work import overlap_tp_comm

            overlap_tp_comm(out["work"])
    return out
