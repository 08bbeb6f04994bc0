"""What a simulation reports. Every time and byte figure a user sees for a plan comes from here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class OOM:
    """The first moment a tier ran out: where, when, during which op, and who holds the bytes."""

    tier: str
    time_s: float
    op: str
    needed_bytes: int
    capacity_bytes: int
    largest: list[tuple[str, int]] = field(default_factory=list)  # largest live tensors on the tier

    @property
    def short_bytes(self) -> int:
        return max(0, self.needed_bytes - self.capacity_bytes)

    def to_dict(self) -> dict:
        return {**asdict(self), "short_bytes": self.short_bytes,
                "largest": [{"name": n, "bytes": b} for n, b in self.largest]}


@dataclass
class ServingStats:
    requests: int
    completed: int
    ttft_s: dict[str, float]  # p50, p90, p99, mean
    tbt_s: dict[str, float]
    throughput_tokens_per_s: float
    kv_utilization: float  # time-weighted fraction of the KV pool's blocks in use
    kv_fragmentation: float  # fraction of allocated KV bytes holding no token (last-block waste)
    preemptions: int
    overloaded: bool = False  # arrivals exceed capacity (memsim/sim/overload.py)
    overload_reason: str = ""
    dropped: int = 0  # requests never served: their KV needs more blocks than the whole pool
    kv_pool_blocks: int = 0
    kv_block_tokens: int = 0  # block_size
    kv_block_bytes: int = 0  # bytes one block takes on kv_pool_tier
    kv_pool_tier: str | None = None  # the tier whose free bytes bound the pool
    largest_request_tokens: int = 0  # prompt + output of the longest request
    prefix_hit_rate: float = 0.0  # prompt tokens served from the prefix cache / prompt tokens
    prefix_hits_by_tier: dict[str, int] = field(default_factory=dict)  # those tokens per tier
    kv_blocks: int = 0  # KV blocks of one GPU's pool (vLLM's "# GPU blocks", per worker)
    kv_pool_bytes: int = 0  # bytes of that pool on kv_pool_tier
    # swap preemption (memsim.sim.swap): seconds of context switching (each iteration with swaps,
    # from its start to its last swap landing), bytes copied both ways, copies (cudaMemcpy calls)
    swap_seconds: float = 0.0
    swap_bytes: int = 0
    swap_copies: int = 0
    # disaggregated prefill/decode (memsim.sim.disaggregated; in the JSON only then): KV bytes sent
    # from prefill to decode instances; per request, prefill end → KV at its decode instance (p50,
    # p90, p99, mean); per pool (prefill, decode): instances, GPUs, busy fraction, KV utilisation
    kv_transfer_bytes: int = 0
    kv_transfer_seconds: dict[str, float] = field(default_factory=dict)
    pools: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        if not self.pools:  # colocated: no transfer keys
            for key in ("kv_transfer_bytes", "kv_transfer_seconds", "pools"):
                out.pop(key)
        return out


@dataclass
class Result:
    feasible: bool
    step_time_s: float  # makespan of one step (training, inference) or of the whole trace (serving)
    tokens_per_s: float
    tokens_per_step: int
    mfu: float  # model FLOPs / (step time × GPU peak), recompute not counted as useful work
    peak_bytes: dict[str, int]
    mean_bytes: dict[str, float]  # time-weighted
    capacity_bytes: dict[str, int]
    link_busy: dict[str, float]  # fraction of the step each copy engine was busy
    breakdown: dict[str, float]  # seconds: compute, recompute, exposed_transfer, memory_wait, cpu
    oom: OOM | None = None
    serving: ServingStats | None = None
    events: int = 0  # simpy events processed
    wall_s: float = 0.0  # how long the simulation itself took
    source: str = "simulated"
    notes: list[str] = field(default_factory=list)  # what the simulator assumed or left out
    timeline: list[dict] | None = field(default=None, repr=False)  # Chrome-trace events, if asked
    # non-tensor bytes held from t=0, per tier and line (cuda_context, cublas_workspace, nccl,
    # allocator; memsim.hardware.overheads); included in peak_bytes
    reserved_bytes: dict[str, dict[str, int]] = field(default_factory=dict)
    # training under a parallel layout (memsim.sim.parallel): per-GPU peak and its rank, mfu,
    # bubble fraction, exposed communication, per stage; None for a single data-parallel rank
    parallel: dict | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("timeline")
        if self.serving is not None:
            out["serving"] = self.serving.to_dict()
        out["oom"] = self.oom.to_dict() if self.oom else None
        return out
