"""The Workload schema: a model plus one job (training, inference or serving).

Every field has a description (the help text and the "what was expected" of errors); unknown keys
are rejected with a did-you-mean by :mod:`memsim.specio`. Exactly one of ``training``,
``inference`` and ``serving`` is given: that key picks the kind.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from memsim.contracts.spec import Spec
from memsim.kinds import workload_kinds
from memsim.units import parse_bytes, parse_time

# Upper bound on any token count or batch (2^24 = 16.7M): published context windows stop near 10M
# tokens (Llama 4 Scout). Beyond it the sizes overflow what the MIP solver can represent (an
# IndexError inside pulp for seq_len 1e20), so it is an input error, said up front.
MAX_TOKENS = 1 << 24

Precision = Literal["fp32", "bf16", "fp16"]
Optimizer = Literal["adam", "adamw", "sgd", "adam8bit"]
OffloadDevice = Literal["none", "cpu", "nvme"]


class LoRA(Spec):
    """Low-rank adapters (Hu et al. 2021): only adapter parameters get gradients and states."""

    rank: int = Field(16, ge=1, description="adapter rank r: a d_in×d_out linear gains r·(d_in+d_out) params")
    alpha: float = Field(32.0, gt=0, description="scaling numerator (alpha/rank); no effect on bytes")
    targets: list[str] = Field(["q", "k", "v", "o"], min_length=1, description=(
        "linears to adapt: q, k, v, o, gate, up, down (HF names q_proj, o_proj, fc1, ... also accepted)"))


class Offload(Spec):
    """Where DeepSpeed would offload (a hint for the planner's ZeRO baselines, not a placement)."""

    optimizer: OffloadDevice = Field("none", description="zero_optimization.offload_optimizer.device")
    param: OffloadDevice = Field("none", description="zero_optimization.offload_param.device")


class Parallel(Spec):
    """Megatron-style parallel degrees (memsim.workloads.parallel); GPUs = tensor·pipeline·context·data."""

    tensor: int = Field(1, ge=1, description="tensor-parallel degree (divides heads; within a node)")
    pipeline: int = Field(1, ge=1, description="pipeline stages (divides layers)")
    data: int = Field(1, ge=1, description="data-parallel degree (alias: training.data_parallel)")
    context: int = Field(1, ge=1, description="context-parallel degree (splits the sequence)")
    expert: int = Field(1, ge=1, description="expert-parallel degree (divides experts and data×context)")


class Training(Spec):
    """One training step: grad_accum micro-batches forward and backward, then the optimizer."""

    micro_batch: int = Field(1, ge=1, le=MAX_TOKENS, description="sequences per micro-batch per device")
    seq_len: int = Field(2048, ge=1, le=MAX_TOKENS, description="tokens per sequence")
    precision: Precision = Field("bf16", description=(
        "fp32, or bf16/fp16 mixed precision with fp32 master weights"))
    optimizer: Optimizer = Field("adamw", description="adam/adamw (fp32 m and v), sgd (momentum), adam8bit")
    zero_stage: int = Field(0, ge=0, le=3, description="ZeRO stage: 1 shards optimizer states, 2 also "
                                                       "gradients, 3 also parameters")
    data_parallel: int = Field(1, ge=1, le=MAX_TOKENS,
                               description="data-parallel degree Nd (ranks sharing the ZeRO shards)")
    grad_accum: int = Field(1, ge=1, le=MAX_TOKENS, description="micro-batches per optimizer step")
    flash_attention: bool = Field(True, description="fused attention: no a·s² score matrices are kept")
    lora: LoRA | None = Field(None, description="LoRA adapters; base weights frozen")
    offload: Offload = Field(default_factory=Offload, description="DeepSpeed offload hints")
    deepspeed: str | None = Field(None, description="path to a DeepSpeed ds_config.json (relative to this "
                                                    "file); its values fill keys not set here")
    parallel: Parallel = Field(default_factory=Parallel, description="tensor, pipeline, data, context, "
                                                                    "expert degrees")
    pipeline_schedule: Literal["1f1b", "interleaved"] = Field("1f1b", description=(
        "pipeline schedule: 1f1b, or interleaved with virtual_stages chunks per stage"))
    virtual_stages: int = Field(1, ge=1, description="model chunks per pipeline stage (interleaved)")
    sequence_parallel: bool = Field(False, description="Megatron sequence parallelism (splits the "
                                                       "activations TP keeps whole)")
    overlap_grad_reduce: bool = Field(False, description=(
        "reduce each layer's gradients over the data-parallel group while the backward goes on "
        "(Megatron-LM's --overlap-grad-reduce, off by default there; DeepSpeed's overlap_comm, "
        "FSDP's default); off: one reduction after the backward"))
    tp_comm_overlap: bool = Field(False, description=(
        "overlap the sequence-parallel all-gathers and reduce-scatters with the GEMMs they feed "
        "or follow (Megatron-Core's --tp-comm-overlap, Transformer Engine's userbuffers; needs "
        "sequence_parallel)"))
    zero3_gather: Literal["layer", "tensor"] = Field("layer", description=(
        "how ZeRO-3 all-gathers a layer's parameters: layer (one collective per layer: FSDP's flat "
        "parameter, DeepSpeed's coalesced fetch) or tensor (one collective per parameter tensor, "
        "each paying the ring's latency: DeepSpeed 0.3.x's _allgather_param)"))
    pipeline_first_layers: int = Field(0, ge=0, description=(
        "layers of the first pipeline stage, the rest even over the others (Megatron-Core's "
        "decoder_first_pipeline_num_layers; 0: an even split)"))
    pipeline_last_layers: int = Field(0, ge=0, description=(
        "layers of the last pipeline stage (decoder_last_pipeline_num_layers; 0: an even split)"))

    @model_validator(mode="after")
    def _data_alias(self) -> Training:
        """``data_parallel`` and ``parallel.data`` are one value: either key sets both."""
        dp, pd = self.data_parallel, self.parallel.data
        if dp != pd:
            if dp != 1 and pd != 1:
                raise ValueError(f"data_parallel ({dp}) and parallel.data ({pd}) disagree; give one")
            value = max(dp, pd)
            object.__setattr__(self, "data_parallel", value)
            object.__setattr__(self.parallel, "data", value)
        return self


KVCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]
_KV_DTYPE_DESC = ("vLLM's --kv-cache-dtype: auto (the model dtype, 16 bits) or fp8 / fp8_e4m3 / "
                  "fp8_e5m2 (1 byte per element); sets kv_bits")


def _kv_cache_dtype(job: Inference | Serving) -> None:
    """``kv_cache_dtype`` sets ``kv_bits`` (over the default 16 a spec may spell out); a
    quantised kv_bits (8, 4, 2) given beside it must agree."""
    if job.kv_cache_dtype is None:
        return
    bits = 16 if job.kv_cache_dtype == "auto" else 8
    if "kv_bits" in job.model_fields_set and job.kv_bits not in (16, bits):
        raise ValueError(f"kv_cache_dtype {job.kv_cache_dtype} is {bits} bits but kv_bits is "
                         f"{job.kv_bits}; give one")
    object.__setattr__(job, "kv_bits", bits)


class Weights(Spec):
    """Weight-only quantization of the model's linears, as a GPTQ/AWQ checkpoint packs them
    (the same bytes as a config's ``quantization_config``: memsim.workloads.quantization)."""

    bits: Literal[2, 3, 4, 8] = Field(description="bits per quantized weight")
    group_size: int = Field(128, ge=1, le=1 << 20, description=(
        "weights sharing one fp16 scale and one packed zero point, along the input dimension"))
    method: Literal["gptq", "awq"] = Field("gptq", description=(
        "packing: gptq (qweight, scales, qzeros, int32 g_idx) or awq (no g_idx)"))


class Sparsity(Spec):
    """Activation sparsity with a neuron cache, as LLM in a flash runs it (Alizadeh et al. 2023,
    arXiv 2312.11514, sect. 3): a low-rank predictor picks the FFN neurons a token activates; the
    neurons active in the last ``window`` tokens stay resident (the plan's weight placement); the
    rest of the FFN lives on the plan's ``neuron_tier`` and each decode token reads from there
    only its newly active neurons. memsim.workloads.sparsity builds it into the trace."""

    active_fraction: float = Field(gt=0, le=1, description=(
        "FFN neurons the predictor marks active per token: the decode FFN matmuls compute and "
        "read only these"))
    window: int = Field(0, ge=0, description=(
        "k: neurons active in the last k tokens stay resident (windowing); 0: none beyond the "
        "token's own"))
    window_fraction: float | None = Field(None, ge=0, le=1, description=(
        "measured share of FFN neurons active in the last k tokens (resident); default: "
        "independent activations, 1-(1-active_fraction)^k"))
    load_fraction: float | None = Field(None, ge=0, le=1, description=(
        "measured share of FFN neurons a token activates that the window lacks (read per "
        "token); default: independent activations, active_fraction·(1-active_fraction)^k"))
    bundling: bool = Field(False, description=(
        "row-column bundling: a neuron's up-projection column and down-projection row are stored "
        "together and read as one 2·d_model·bytes chunk, instead of two d_model·bytes reads"))
    predictor_fraction: float = Field(0.0, ge=0, lt=1, description=(
        "the predictors' bytes as a share of the model's weights (resident, read every token)"))


class KVQuant(Spec):
    """KIVI's quantised-KV layout (memsim.workloads.kvquant): what kv_bits < 16 holds besides the
    packed values, and the dequantisation attention pays."""

    group_size: int = Field(32, ge=1, description="elements per scale and zero point (KIVI: 32)")
    residual: int = Field(128, ge=0, description=(
        "recent tokens kept in full precision (KIVI's R: keys quantised in blocks of R, values "
        "token by token past the last R)"))
    scale_bits: int = Field(16, ge=1, description="bits of each scale and zero point (fp16: 16)")


class KVBudget(Spec):
    """Which KV stays in the cache (memsim.workloads.kv_budget): attention sinks, a recent window
    and a budget of tokens chosen by score — StreamingLLM (arXiv 2309.17453: sinks + window),
    SnapKV (2404.14469), Scissorhands (2305.17118), CAKE (2503.12491): a budget per layer/head."""

    sink: int = Field(4, ge=0, description="first tokens always kept (attention sinks; StreamingLLM: 4)")
    window: int = Field(1024, ge=0, description="most recent tokens always kept")
    budget: int | list[int] | None = Field(None, description=(
        "tokens kept per sequence, sinks and window included (the rest chosen by attention "
        "score, SnapKV-style); a list: one budget per layer (CAKE's layer-wise allocation); "
        "default sink + window (StreamingLLM)"))
    per: Literal["layer", "head"] = Field("layer", description=(
        "layer: a layer's KV heads keep one token set; head: each KV head keeps its own (the "
        "same bytes; selection scores per head)"))
    observation: int = Field(32, ge=1, description=(
        "SnapKV's observation window: last prompt queries whose attention scores the prompt"))
    keep_generated: bool = Field(False, description=(
        "the budget bounds the prompt's KV only and every generated token is kept besides "
        "(SnapKV compresses at prefill); false: the whole cache stays within it (StreamingLLM, H2O)"))

    @model_validator(mode="after")
    def _fits(self) -> KVBudget:
        floor = self.sink + self.window
        given = [] if self.budget is None else (
            self.budget if isinstance(self.budget, list) else [self.budget])
        if isinstance(self.budget, list) and not self.budget:
            raise ValueError("budget: give one budget per layer, or a single number")
        for b in given:
            if b < max(floor, 1):
                raise ValueError(f"budget ({b}) is below sink + window ({floor})" if b >= 1
                                 else f"budget ({b}) keeps no token")
        if self.budget is None and floor < 1:
            raise ValueError("give sink, window or budget: the cache would keep no token")
        return self

    def caps(self, layers: int) -> list[int]:
        """Tokens of KV one sequence keeps at most, per layer."""
        if self.budget is None:
            return [self.sink + self.window] * layers
        if isinstance(self.budget, list):
            if len(self.budget) != layers:
                raise ValueError(f"{len(self.budget)} per-layer budgets for {layers} layers")
            return list(self.budget)
        return [self.budget] * layers


class KVPrefetch(Spec):
    """Token-selective KV fetch from a host tier (memsim.workloads.kv_budget): a small on-GPU
    copy of the keys scores the context each decode step and only the top_k tokens' KV is
    fetched from where the plan homes the cache — InfiniGen (arXiv 2406.19707: partial keys),
    SpeCache (2503.16163: low-bit keys)."""

    top_k: int = Field(ge=1, description="tokens whose KV each decode step fetches, per sequence and layer")
    selector_bits: int = Field(4, ge=1, le=16, description="bits per element of the on-GPU key copy")
    selector_channels: float = Field(1.0, gt=0, le=1, description=(
        "share of each key's channels the copy keeps (InfiniGen's partial key; 1: every channel)"))
    selector_values: bool = Field(False, description=(
        "the copy holds low-bit values too (SpeCache's low-bit KV copy), not keys only"))
    per: Literal["layer", "head"] = Field("head", description=(
        "head: each KV head fetches its own tokens (reads of head_dim elements); layer: one "
        "token set per layer (reads of a whole K or V row)"))


class Inference(Spec):
    """Offline generation: prefill the prompt, then decode gen_len tokens for a batch."""

    batch_size: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | Literal["auto"] = Field(1, description=(
        "sequences generated together; auto: memsim plan searches it with the offload policy "
        "(docs/planner.md)"))
    max_latency_s: float | None = Field(None, gt=0, description=(
        "with batch_size auto: the longest a batch may take, prefill and every decode step "
        "(the batch search keeps plans whose simulated step fits)"))
    prompt_len: int = Field(512, ge=1, le=MAX_TOKENS, description="prompt tokens per sequence")
    gen_len: int = Field(32, ge=1, le=MAX_TOKENS, description="generated tokens per sequence")
    kv_bits: Literal[16, 8, 4, 2] = Field(16, description=(
        "bits per KV-cache element (KIVI-style quantisation)"))
    dtype: Precision = Field("fp16", description="weights and activations dtype")
    prefill_chunk: int | None = Field(None, ge=1, description=(
        "prefill the prompt in chunks of this many tokens (must divide prompt_len); activations "
        "are sized by the chunk"))
    kv_cache_dtype: KVCacheDtype | None = Field(None, description=_KV_DTYPE_DESC)
    kv_quant: KVQuant | None = Field(None, description=(
        "KIVI's layout of the quantised KV cache: group_size, residual, scale_bits (kv_bits < 16)"))
    kv_growth: Literal["preallocated", "concat"] = Field("preallocated", description=(
        "preallocated: the cache is written in place; concat: each decode step rebuilds it by "
        "concatenation while the previous step's cache is still referenced until the step ends "
        "(HF transformers' tuple cache up to 4.35, and KIVI's code on it), so the step holds both"))
    sparsity: Sparsity | None = Field(None, description=(
        "predicted FFN sparsity with windowing and row-column bundling (LLM in a flash): "
        "active_fraction, window, window_fraction, load_fraction, bundling, predictor_fraction"))
    kv_budget: KVBudget | None = Field(None, description=(
        "KV tokens kept per sequence: sink, window, budget, per (StreamingLLM, SnapKV)"))
    kv_prefetch: KVPrefetch | None = Field(None, description=(
        "fetch only the top_k tokens' KV each decode step, chosen by an on-GPU key copy: "
        "top_k, selector_bits, selector_channels, per (InfiniGen, SpeCache)"))

    @model_validator(mode="after")
    def _kv_dtype(self) -> Inference:
        _kv_cache_dtype(self)
        if self.max_latency_s is not None and self.batch_size != "auto":
            raise ValueError("max_latency_s bounds the batch search: set batch_size: auto with it")
        return self


class Arrival(Spec):
    """Request arrivals: a seeded Poisson process, seeded multi-turn sessions (chat or agent), or a
    CSV / JSONL trace of real requests."""

    process: Literal["poisson", "conversation", "agentic"] | None = Field(None, description=(
        "poisson (with rate_per_s and seed); conversation: multi-turn chat sessions whose prompts "
        "grow by each answer and message; agentic: the same with tool-call pauses between steps"))
    rate_per_s: float | None = Field(None, gt=0, description="mean requests per second (Poisson); "
                                                             "sessions started per second (sessions)")
    turns: float | None = Field(None, ge=1, description="mean turns (agent steps) per session, "
                                                        "geometric; default 5 (conversation), 8 (agentic)")
    think_time_s: float | None = Field(None, gt=0, description="conversation: mean gap between a turn "
                                                               "and the next, exponential (default 30)")
    tool_time_s: float | None = Field(None, gt=0, description="agentic: mean tool-call pause between "
                                                              "steps, exponential (default 2)")
    system_prompt: int = Field(0, ge=0, description="tokens of the system prompt every session "
                                                    "starts with (sessions)")
    system_prompts: int = Field(1, ge=1, description="distinct system prompts sessions draw from")
    seed: int = Field(0, description="seed of the numpy Generator drawing arrivals and lengths")
    csv: str | None = Field(None, description="CSV with arrival_s, prompt_len, output_len columns "
                                              "(path relative to this file)")
    jsonl: str | None = Field(None, description="Mooncake trace: one JSON object a line with timestamp "
                                                "(ms), input_length, output_length, hash_ids (path "
                                                "relative to this file)")

    @model_validator(mode="after")
    def _one_source(self) -> Arrival:
        if sum(x is not None for x in (self.csv, self.jsonl, self.process)) != 1:
            raise ValueError("give one of process: poisson|conversation|agentic (with rate_per_s), "
                             "csv: path or jsonl: path")
        if self.process is not None and self.rate_per_s is None:
            raise ValueError(f"a {self.process} arrival process needs rate_per_s")
        if self.think_time_s is not None and self.process != "conversation":
            raise ValueError("think_time_s is for process: conversation (agentic: tool_time_s)")
        if self.tool_time_s is not None and self.process != "agentic":
            raise ValueError("tool_time_s is for process: agentic (conversation: think_time_s)")
        if self.process in (None, "poisson") and (self.turns is not None or self.system_prompt):
            raise ValueError("turns and system_prompt are for process: conversation or agentic")
        return self


class Lengths(Spec):
    """A token-length distribution."""

    dist: Literal["fixed", "uniform", "lognormal"] = Field(description="fixed, uniform or lognormal")
    value: int | None = Field(None, ge=1, description="the length (fixed)")
    low: int | None = Field(None, ge=1, description="smallest length (uniform; lognormal clip)")
    high: int | None = Field(None, ge=1, description="largest length (uniform; lognormal clip)")
    mean: float | None = Field(None, gt=0, description="mean length in tokens (lognormal)")
    sigma: float = Field(1.0, gt=0, description="sigma of the underlying normal (lognormal)")

    @model_validator(mode="after")
    def _complete(self) -> Lengths:
        need = {"fixed": ("value",), "uniform": ("low", "high"), "lognormal": ("mean",)}[self.dist]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"dist {self.dist} needs {', '.join(missing)}")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        return self


class Scheduler(Spec):
    """A vLLM-style continuous-batching scheduler over a paged KV cache."""

    max_num_seqs: int = Field(256, ge=1, description="sequences in one batch at most")
    max_num_batched_tokens: int = Field(8192, ge=1, description="new tokens per iteration at most")
    block_size: int = Field(16, ge=1, description="tokens per KV-cache block")
    preempt: Literal["swap", "recompute"] = Field("recompute", description="what happens to a preempted "
                                                                           "sequence's KV")
    swap_space: float = Field(4.0, ge=0, description="CPU swap space per GPU, GiB (vLLM's swap_space)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="fraction of GPU memory vLLM may use")
    nccl_record_streams: bool = Field(False, description=(
        "each tensor-parallel all-reduce's input stays reserved until the forward's final "
        "synchronisation (PyTorch's ProcessGroupNCCL record_stream, before vLLM 0.2.7 set "
        "TORCH_NCCL_AVOID_RECORD_STREAMS=1), so the profile run holds all of them"))


class KVCache(Spec):
    """KV kept after its request: vLLM's automatic prefix caching in the HBM pool left free."""

    prefix_caching: bool = Field(True, description="cache finished requests' prompt blocks and skip "
                                                   "the prefill of a new prompt's cached leading blocks")
    tiers: dict[str, int | str] | None = Field(None, description=(
        "cache tiers below the HBM pool, fastest first (dram: 256GiB, nvme: 2TiB): blocks evicted "
        "from HBM are demoted down the chain and copied back over the links on a hit"))
    eviction: Literal["lru", "lfu", "ttl", "predict"] = Field("lru", description=(
        "which cached HBM block makes room: lru; lfu (fewest uses); ttl (Continuum: a finished "
        "request's blocks stay pinned for ttl_s); predict (1-bit reuse predictions, dead first)"))
    ttl_s: float | None = Field(None, gt=0, description="eviction ttl: seconds a finished "
                                                        "request's blocks stay pinned in HBM")
    prediction_error: float = Field(0.0, ge=0, le=1, description=(
        "eviction predict: probability that a block's reuse bit is wrong (seeded by seed)"))
    seed: int = Field(0, description="seed of the prediction errors")
    load: Literal["layerwise", "blocking"] = Field("layerwise", description=(
        "how a lower-tier hit is copied in: layer by layer overlapped with the prefill (LMCache, "
        "CachedAttention) or all before the iteration computes"))
    chunk_tokens: int = Field(256, ge=1, description="tokens per transfer chunk (LMCache chunk_size)")
    block_tokens: int = Field(512, ge=1, description="tokens per hash_ids block (Mooncake: 512)")

    @model_validator(mode="after")
    def _policy_keys(self) -> KVCache:
        if (self.ttl_s is not None) != (self.eviction == "ttl"):
            raise ValueError("eviction: ttl needs ttl_s, and ttl_s is only for eviction: ttl")
        if self.prediction_error and self.eviction != "predict":
            raise ValueError("prediction_error is only for eviction: predict")
        return self

    @field_validator("tiers")
    @classmethod
    def _sizes(cls, tiers: dict[str, int | str] | None) -> dict[str, int] | None:
        return {name: parse_bytes(size) for name, size in tiers.items()} if tiers else tiers


class SwapSpec(Spec):
    """How a preempted request's KV is copied to the swap tier and back (memsim.sim.swap):
    vLLM's cache engine copies block by block, K and V of every layer apart; FastSwitch (Shen et
    al., arXiv 2411.18424) copies contiguous block groups, on a swap thread that overlaps the
    forward pass, and keeps a resumed request's host copy so its next swap-out copies only the
    blocks added since."""

    granularity: Literal["block", "group", "request"] = Field("block", description=(
        "bytes per copy: block (one cudaMemcpy per block, layer and K/V, vLLM's swap_blocks); "
        "group (one per group_blocks contiguous blocks: FastSwitch's block groups); request "
        "(one per layer and K/V: the request's blocks contiguous)"))
    group_blocks: int | None = Field(None, ge=1, description=(
        "granularity group: blocks per contiguous group (default 8)"))
    overlap: bool = Field(False, description=(
        "swaps run beside the forward pass layer by layer (FastSwitch's swap manager): the "
        "iteration waits for the first layer's share only; false: it waits for every swap (vLLM)"))
    reuse: bool = Field(False, description=(
        "a resumed request's host copy is kept (its swap space stays held) while it runs, so "
        "its next swap-out copies only the blocks added since (FastSwitch's KV reuse); kept "
        "copies are dropped, oldest first, when a swap-out needs their room"))
    switch_overhead: float = Field(0.0, ge=0, description=(
        "seconds of scheduler work each preemption or resumption adds before the iteration "
        "computes (block tables, bookkeeping; 0: none)"))
    submit: Literal["call", "batch", "kernel"] = Field("call", description=(
        "how the copies are submitted: call (one cudaMemcpyAsync each, each paying the link's "
        "latency: vLLM's swap_blocks loop); batch (one cuMemcpyBatchAsync: the latency once, then "
        "the link's descriptor_latency per copy); kernel (one gather/scatter kernel: the "
        "latency once, then bandwidth-bound)"))

    @field_validator("switch_overhead", mode="before")
    @classmethod
    def _seconds(cls, value):
        return parse_time(value)

    @model_validator(mode="after")
    def _group(self) -> SwapSpec:
        if self.group_blocks is not None and self.granularity != "group":
            raise ValueError("group_blocks is only for granularity: group")
        return self


class ServingParallel(Spec):
    """How vLLM splits the model: tensor-parallel ranks within a node, pipeline stages."""

    tensor: int = Field(1, ge=1, description="tensor-parallel degree (vLLM tensor_parallel_size)")
    pipeline: int = Field(1, ge=1, description="pipeline stages (vLLM pipeline_parallel_size)")


class SLO(Spec):
    """A latency target for ``memsim plan`` to size a serving deployment against."""

    ttft_p99: float = Field(description="time to first token, 99th percentile (2s)")
    tbt_p99: float = Field(description="time between tokens, 99th percentile (100ms)")
    replicas: list[int] | None = Field(None, description="GPU counts to try (default 1, 2, 4, 8)")
    dram: list[int | str] | None = Field(None, description="DRAM prefix-cache sizes per GPU to try "
                                                           "(default 0, 64GiB, 256GiB)")
    nvme: list[int | str] | None = Field(None, description=(
        "NVMe prefix-cache sizes per GPU to try below the DRAM one (default: no NVMe tier)"))
    tensor: list[int] | None = Field(None, description=(
        "tensor-parallel degrees to try, each replica that many GPUs (default: serving.parallel.tensor)"))
    routing: Literal["round_robin", "prefix"] = Field("round_robin", description=(
        "how requests reach replicas: round_robin, or prefix (cache-aware: to the replica already "
        "holding the longest part of the prompt, unless it is overloaded; memsim.planners.routing)"))

    @field_validator("ttft_p99", "tbt_p99", mode="before")
    @classmethod
    def _seconds(cls, value):
        return parse_time(value)

    @field_validator("dram", "nvme")
    @classmethod
    def _sizes(cls, sizes):
        return [parse_bytes(s) for s in sizes] if sizes is not None else sizes


class DisaggPool(Spec):
    """One pool of a disaggregated deployment (DistServe, Splitwise, Mooncake): its GPUs, split
    into instances of ``tensor`` × ``pipeline`` GPUs that each run one role."""

    gpus: int = Field(1, ge=1, description="GPUs in the pool: gpus / (tensor × pipeline) instances")
    tensor: int | None = Field(None, ge=1, description="tensor-parallel degree of each instance "
                                                       "(default serving.parallel.tensor)")
    pipeline: int | None = Field(None, ge=1, description="pipeline stages of each instance "
                                                         "(default serving.parallel.pipeline)")
    max_num_batched_tokens: int | None = Field(None, ge=1, description=(
        "new tokens per iteration of an instance (default serving.scheduler's)"))
    max_num_seqs: int | None = Field(None, ge=1, description="sequences per batch of an instance "
                                                             "(default serving.scheduler's)")


class Disaggregated(Spec):
    """Prefill and decode on separate GPU pools; a finished prompt's KV moves over ``link``."""

    prefill: DisaggPool = Field(description="the pool that runs prompts only")
    decode: DisaggPool = Field(description="the pool that runs continuous-batching decode")
    link: str = Field("network", description=(
        "what carries the KV: the system's nvlink or network fabric, one of its links by name, "
        "or a bandwidth per GPU such as 100Gb/s"))
    latency: float | None = Field(None, ge=0, description="per-transfer latency (default: the "
                                                          "fabric's or link's; 0 for a bandwidth)")
    transfer: Literal["layerwise", "after"] = Field("layerwise", description=(
        "layerwise: each layer's KV is sent as the prefill finishes it (DistServe, Mooncake); "
        "after: the whole KV once the prefill ends"))

    @field_validator("latency", mode="before")
    @classmethod
    def _seconds(cls, value):
        return parse_time(value) if value is not None else value


class Serving(Spec):
    """Online serving of a stream of requests."""

    arrival: Arrival = Field(description="arrival process or CSV trace")
    num_requests: int = Field(1000, ge=1, description="requests to draw (Poisson); a CSV is cut to this many")
    prompt_len: Lengths | None = Field(None, description="prompt length distribution (not for CSV)")
    output_len: Lengths | None = Field(None, description="output length distribution (not for CSV)")
    scheduler: Scheduler = Field(default_factory=Scheduler, description="batching scheduler and paged KV")
    vllm: dict | None = Field(None, description="vLLM engine args (block_size, swap_space, "
                                                "gpu_memory_utilization, max_num_batched_tokens, "
                                                "max_num_seqs, preemption_mode, kv_cache_dtype, dtype, "
                                                "tensor_parallel_size, pipeline_parallel_size)")
    kv_bits: Literal[16, 8, 4, 2] = Field(16, description="bits per KV-cache element")
    kv_cache_dtype: KVCacheDtype | None = Field(None, description=_KV_DTYPE_DESC)
    kv_cache: KVCache | None = Field(None, description="prefix caching across requests (off when absent)")
    slo: SLO | None = Field(None, description="latency target: memsim plan searches GPUs and KV tiers")
    dtype: Precision = Field("fp16", description="weights and activations dtype")
    parallel: ServingParallel = Field(default_factory=lambda: ServingParallel(), description=(
        "tensor and pipeline degrees (vLLM's tensor_parallel_size, pipeline_parallel_size)"))
    swap: SwapSpec | None = Field(None, description=(
        "how swap preemption copies KV (scheduler.preempt: swap): granularity, group_blocks, "
        "overlap, reuse, switch_overhead (FastSwitch); default vLLM's block-by-block copies"))
    kv_budget: KVBudget | None = Field(None, description=(
        "KV tokens each request keeps in the block pool: sink, window, budget (StreamingLLM "
        "serving: a request holds at most that many tokens' blocks and attends over them)"))
    disaggregated: Disaggregated | None = Field(None, description=(
        "separate prefill and decode pools with the KV sent between them (memsim.sim.disaggregated)"))

    @model_validator(mode="after")
    def _lengths(self) -> Serving:
        _kv_cache_dtype(self)
        if self.kv_budget is not None:
            if isinstance(self.kv_budget.budget, list):
                raise ValueError("kv_budget.budget: serving keeps one budget for every layer "
                                 "(a per-layer list is for inference.kv_budget)")
            if self.kv_budget.keep_generated:
                raise ValueError("kv_budget.keep_generated is not simulated in serving: the "
                                 "budget bounds the whole cache (StreamingLLM)")
            if self.kv_cache is not None and self.kv_cache.prefix_caching:
                raise ValueError("kv_budget with kv_cache.prefix_caching: a budgeted cache drops "
                                 "prompt tokens, so whole prompt blocks cannot be shared")
        if self.arrival.process is not None and (self.prompt_len is None or self.output_len is None):
            raise ValueError(f"{self.arrival.process} arrivals need prompt_len and output_len "
                             "distributions (sessions: new tokens and answer per turn)")
        return self


class Workload(Spec):
    """A model and the job it runs; exactly one of training, inference, serving."""

    name: str = Field(description="workload name")
    description: str = Field("", description="one line for `memsim workload list`")
    model: str = Field(description="catalog model name (workloads/models/*.json) or a path to a config.json")
    training: Training | None = Field(None, description="a training step")
    inference: Inference | None = Field(None, description="offline batched generation")
    serving: Serving | None = Field(None, description="online serving of a request stream")
    weights: Weights | None = Field(None, description=(
        "quantize the model's weights: {bits: 4, group_size: 128} (replaces a config's "
        "quantization_config)"))
    _source: str | None = PrivateAttr(None)  # the YAML file it came from (relative paths resolve there)
    _notes: list[str] = PrivateAttr(default_factory=list)  # what imported files held, not acted on

    @model_validator(mode="after")
    def _one_kind(self) -> Workload:
        given = [k for k in workload_kinds() if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(workload_kinds())}"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self

    @property
    def kind(self) -> str:
        return next(k for k in workload_kinds() if getattr(self, k) is not None)
