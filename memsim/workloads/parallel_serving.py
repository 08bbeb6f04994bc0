"""Serving under tensor and pipeline parallelism: one GPU's share of the per-token costs.

vLLM shards a model as Megatron does (its ``tensor_parallel_size`` splits heads, KV heads and MLP
columns; ``pipeline_parallel_size`` splits the layers), and every GPU sizes its own KV pool from
what ``gpu_memory_utilization`` of its memory leaves after its weights and its profile-run
activations (vllm/worker: determine_num_available_blocks, the minimum over workers). So the
serving simulator runs one GPU: :class:`TokenCosts` become that GPU's weights, KV bytes per
token and FLOPs, and each layer adds two all-reduces of the new tokens' hidden states over the
TP group (``tp_comm_bytes_per_token``). Pipeline stages of one batch run one after another
(the iteration takes ``pp`` stage times), and vLLM's virtual engines keep ``pp`` batches in
flight across the stages (memsim.sim.virtual_engines).
"""

from __future__ import annotations

from dataclasses import replace

from memsim.workloads.models import Architecture
from memsim.workloads.parallel import Layout, kv_bytes_per_gpu, stage_params, validate_layout
from memsim.workloads.parallel_work import sharded_arch
from memsim.workloads.trace import TokenCosts


def serving_layout(arch: Architecture, tensor: int, pipeline: int, file: str | None) -> Layout:
    lay = Layout(tensor=tensor, pipeline=pipeline)
    validate_layout(arch, lay, file=file, prefix="serving.parallel")
    return lay


def shard_costs(arch: Architecture, costs: TokenCosts, lay: Layout, e: int, kv_bits: int) -> TokenCosts:
    """The per-token costs one GPU of the layout carries (its busiest pipeline stage)."""
    if lay.tensor == 1 and lay.pipeline == 1:
        return costs
    from memsim.workloads.inference import act_bytes

    shares = [stage_params(arch, lay, i).total for i in range(lay.pipeline)]
    weight = int(costs.weight_bytes * max(shares) / arch.params)
    split = lay.tensor * lay.pipeline
    # a GPU holds the same share of every expert as of the other weights (TP splits each expert)
    routed = int(costs.routed_expert_bytes * weight / costs.weight_bytes) if costs.weight_bytes else 0
    return replace(costs, weight_bytes=weight, routed_expert_bytes=routed,
                   flops_per_token=costs.flops_per_token / split,
                   attn_flops_per_token_ctx=costs.attn_flops_per_token_ctx / split,
                   kv_bytes_per_token=kv_bytes_per_gpu(arch, lay, 1, kv_bits),
                   activation_bytes_per_token=act_bytes(sharded_arch(arch, lay.tensor), 1, e),
                   layers=arch.layers // lay.pipeline, tp=lay.tensor, pp=lay.pipeline,
                   tp_comm_bytes_per_token=arch.hidden * e if lay.tensor > 1 else 0)


def tp_comm_seconds(system, costs: TokenCosts, new_tokens: int) -> float:
    """One stage's TP all-reduces for ``new_tokens``: two per layer, on NVLink within a node."""
    if costs.tp <= 1 or new_tokens <= 0:
        return 0.0
    from memsim.hardware.collectives import collective_time

    nbytes = new_tokens * costs.tp_comm_bytes_per_token
    return 2 * costs.layers * collective_time(system, "all_reduce", nbytes, costs.tp)


def held_allreduce_bytes(costs: TokenCosts, tokens: int) -> int:
    """What a forward of ``tokens`` new tokens keeps reserved when every TP all-reduce's input
    is held until the forward's synchronisation (``serving.scheduler.nccl_record_streams``).

    PyTorch's ProcessGroupNCCL calls ``record_stream`` on a collective's tensors, and the caching
    allocator reuses such a block only once the NCCL stream's work is seen complete from the host;
    the host enqueues the whole forward ahead of the GPU, so none is. vLLM's comment where it
    later set ``TORCH_NCCL_AVOID_RECORD_STREAMS=1`` (0.2.7, vllm/worker/worker.py): "all_reduce
    does not free the input tensor until the synchronization point. This causes the memory usage
    to grow as the number of all_reduce calls increases" (vLLM issue #2248). A Llama-style layer
    all-reduces twice (attention's and the MLP's row-parallel outputs), the vocabulary-parallel
    embedding once: each the new tokens' hidden states. vLLM 0.2.5's profile (total minus free
    device memory after the profile run, PR #2031) charged them all to the KV pool."""
    if costs.tp <= 1 or tokens <= 0:
        return 0
    return (2 * costs.layers + 1) * tokens * costs.tp_comm_bytes_per_token
