"""The Plan: where every class of bytes lives and how it moves. Data, not code.

The other narrow waist beside the Trace. The MIP, every baseline and a user's hand-written YAML
produce the same object, and the simulator executes it. Its meaning, which the simulator
implements and every planner relies on:

``placement[cls][tier]``
    The fraction of the bytes of tensor class ``cls`` (``weight``, ``grad``, ``optimizer``,
    ``kv``, ``activation``) whose *home* is ``tier``; fractions of a class sum to 1, and each
    layer is split the same way (FlexGen's percentages, over any number of tiers). A class not
    listed lives on the compute tier (HBM; DRAM on a CPU-only system).
    Bytes homed off the compute tier are streamed in: weights (and KV) are prefetched
    ``prefetch_depth`` layers ahead into the compute tier, used, and dropped (KV appended in a
    decode step is written back to its home). Gradients homed off-tier are copied out after the
    layer's backward. Optimizer states homed off-tier are streamed through the device that runs
    the step.

``activations`` / ``layer_policy``
    What happens to a layer's saved activations between its forward and backward:
    ``keep`` (stay on the compute tier), ``offload`` (copied to ``activation_tier`` after the
    forward, prefetched back ``prefetch_depth`` layers before the backward) or ``recompute``
    (dropped; the layer's forward runs again just before its backward, keeping only its input,
    as checkpointing does). ``layer_policy`` overrides the default for single layers.

``optimizer_device``
    ``gpu``: the step runs on the GPU over states fetched per layer. ``cpu``: ZeRO-Offload —
    gradients go to host memory, the CPU runs the step over states in their home tier
    (DRAM, CXL, or NVMe as in ZeRO-Infinity), updated weights are copied back.

``gpu_batch_size`` / ``num_gpu_batches``
    Inference only: FlexGen's block schedule. The effective batch is their product; each layer's
    weights are loaded once per block and reused by every GPU batch (the zig-zag order).
    ``cpu_attention``: decode attention runs on the CPU next to a KV cache homed in DRAM.

``pinned``
    Whether the host-side copies of streamed bytes sit in pinned (page-locked) memory. ``False``
    (HF Accelerate's offloaded weights, plain CPU tensors): every copy over a link that defines
    ``pageable_bandwidth`` runs at that rate, as the driver stages it through its own bounce
    buffer. With ``prefetch_depth: 0`` a layer's copies start when the layer does and its compute
    waits for them: a synchronous per-layer load, no overlap.

``staging``
    How a copy that bounces through an intermediate tier (NVMe → DRAM → GPU) moves.
    ``pipelined`` (default): in 64 MiB chunks, both hops busy at once, at the slower hop's rate
    (FlexGen's and memsim's own pinned double buffers). ``serial``: the whole copy is read into
    the bounce buffer, then copied on, each hop at its own rate one after the other, as
    DeepSpeed's NVMe parameter swapper does (memsim.sim.staging).

``weight_copies``
    How many separate copies each layer's streamed weights are fetched as (from each home tier).
    None or 1: one copy a layer (FlexGen, memsim's own schedule). DeepSpeed ZeRO-3 fetches every
    parameter tensor with its own copy (``param.ds_tensor.to(device)``): the zero-inference
    baseline gives the count of a layer's fetched tensors (memsim.workloads.param_tensors). Each
    copy pays its route's per-transfer latency (``Link.latency``), so many small copies cost
    more than one large one of the same bytes.

``expert_fetch``
    MoE inference: what a pass fetches of a layer's routed experts homed off the GPU. ``routed``
    (default): only the experts its tokens are routed to (expert-offloading runtimes;
    memsim.workloads.moe). ``layer``: every expert, as HF Accelerate's AlignDevicesHook loads
    the whole offloaded decoder layer before it runs.

``neuron_tier``
    Inference with ``inference.sparsity`` (LLM in a flash): the tier holding the FFN neurons
    outside the resident window (``L{layer}.neurons``); each decode step reads its newly active
    neurons from there, in reads of one neuron (two with row-column bundling: one chunk). None:
    they live where ``placement.weight`` puts the weights.

``kv_head_groups``
    Inference only: stream each layer's KV cache in this many groups of KV heads (HeadInfer:
    one group per KV head). Attention runs group by group, each group its own prefetch slot,
    so ``prefetch_depth`` counts head groups and a KV cache homed off the GPU occupies a few
    groups' KV there instead of whole layers'. None or 1: a layer at a time.

``gqa_expand``
    Attention materialises K and V for every query head before its matmuls, as HF transformers'
    eager attention does (``repeat_kv``): each step and layer reads the cache once and writes and
    reads ``heads / kv_heads`` copies of it (memsim.hardware.attention_impl). False: a grouped kernel
    reads each KV head once. No effect on multi-head attention.

``host_kv_bits``
    Bits per element a KV cache homed in host memory occupies there, where the framework's host
    buffer is not in the KV dtype: ZeRO-Inference's transformers fork allocates it with
    ``torch.empty`` in the default dtype, fp32 (the zero-inference baseline sets 32 with
    ``kv_offload``), so its DRAM holds twice an fp16 cache (memsim.hardware.attention_impl).
    None: the workload's ``kv_bits``.

``serving``
    Serving only: ``max_num_seqs``, ``max_num_batched_tokens``, ``block_size`` (tokens per KV
    block), ``preempt`` (``swap`` or ``recompute``), ``swap_tier`` and ``swap_bytes``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import yaml

from memsim.errors import SpecError

PLAN_VERSION = 1
ActivationPolicy = Literal["keep", "offload", "recompute"]
PLACED_CLASSES = ("weight", "grad", "optimizer", "kv", "activation")


@dataclass
class PlannerInfo:
    """Who wrote the plan and how well it solved: shown beside every figure."""

    name: str = "manual"
    status: str = "given"  # optimal | feasible | time_limit | heuristic | given | infeasible
    objective: float | None = None
    gap: float | None = None
    solve_s: float | None = None
    estimate_s: float | None = None  # the planner's own step-time estimate (the MIP's model)


@dataclass
class ServingPolicy:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    preempt: Literal["swap", "recompute"] = "recompute"
    swap_tier: str | None = None
    swap_bytes: int = 0


@dataclass
class Plan:
    placement: dict[str, dict[str, float]] = field(default_factory=dict)
    activations: ActivationPolicy = "keep"
    layer_policy: dict[int, ActivationPolicy] = field(default_factory=dict)
    activation_tier: str | None = None
    optimizer_device: Literal["gpu", "cpu"] = "gpu"
    prefetch_depth: int = 1
    gpu_batch_size: int | None = None
    num_gpu_batches: int | None = None
    cpu_attention: bool = False
    pinned: bool = True
    staging: Literal["pipelined", "serial"] = "pipelined"
    weight_copies: int | None = None
    expert_fetch: Literal["routed", "layer"] = "routed"
    neuron_tier: str | None = None
    kv_head_groups: int | None = None
    gqa_expand: bool = False
    host_kv_bits: int | None = None
    serving: ServingPolicy | None = None
    planner: PlannerInfo = field(default_factory=PlannerInfo)
    workload: str = ""  # the Trace's name, so a plan for another workload is refused
    fingerprint: str = ""  # trace_fingerprint() of that Trace
    notes: list[str] = field(default_factory=list)
    version: int = PLAN_VERSION

    def home(self, cls: str, default: str) -> dict[str, float]:
        """Tier fractions for a class; everything on ``default`` (the compute tier) if unplaced."""
        return self.placement.get(cls) or {default: 1.0}

    def policy(self, layer: int) -> ActivationPolicy:
        return self.layer_policy.get(layer, self.activations)

    def policy_counts(self, layers: int) -> dict[str, int]:
        """How many of ``layers`` layers keep, offload and recompute their activations."""
        counts = dict.fromkeys(("keep", "offload", "recompute"), 0)
        for layer in range(layers):
            counts[self.policy(layer)] += 1
        return counts

    def check_layers(self, layers: int, file: str = "plan") -> None:
        """Refuse ``layer_policy`` entries for layers the workload does not have (they would be
        silently ignored, and the user believe they applied)."""
        for layer in sorted(self.layer_policy):
            if not 0 <= layer < layers:
                raise SpecError(f"layer {layer} does not exist: the workload has layers 0..{layers - 1}",
                                file=file, key=f"layer_policy.{layer}")

    def check(self, tiers: set[str] | list[str], file: str = "plan") -> None:
        """Refuse a plan that names unknown tiers or whose fractions do not sum to 1."""
        tiers = set(tiers)
        for cls, split in self.placement.items():
            if cls not in PLACED_CLASSES:
                raise SpecError(f"unknown tensor class {cls!r}; expected one of {PLACED_CLASSES}",
                                file=file, key=f"placement.{cls}")
            for tier, frac in split.items():
                if tier not in tiers:
                    raise SpecError(f"unknown tier {tier!r}; the system has {sorted(tiers)}",
                                    file=file, key=f"placement.{cls}.{tier}")
                if not 0 <= frac <= 1:
                    raise SpecError(f"fraction must be within [0, 1], got {frac}",
                                    file=file, key=f"placement.{cls}.{tier}")
            if abs(sum(split.values()) - 1) > 1e-6:
                raise SpecError(f"fractions sum to {sum(split.values()):.6g}, expected 1",
                                file=file, key=f"placement.{cls}")
        for key, tier in (("activation_tier", self.activation_tier), ("neuron_tier", self.neuron_tier),
                          ("serving.swap_tier", self.serving.swap_tier if self.serving else None)):
            if tier is not None and tier not in tiers:
                raise SpecError(f"unknown tier {tier!r}; the system has {sorted(tiers)}", file=file, key=key)

    # -- files --------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, file: str = "plan") -> Plan:
        if not isinstance(data, dict):
            raise SpecError("expected a mapping at the top level", file=file)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            from memsim.errors import did_you_mean

            key = sorted(unknown)[0]
            raise SpecError(f"unknown key {key!r}{did_you_mean(key, known)}", file=file, key=key)
        data = dict(data)
        try:
            if data.get("serving") is not None:
                data["serving"] = ServingPolicy(**data["serving"])
            data["planner"] = PlannerInfo(**data.get("planner") or {})
            data["layer_policy"] = {int(k): v for k, v in (data.get("layer_policy") or {}).items()}
            plan = cls(**data)
        except (TypeError, ValueError) as exc:
            raise SpecError(f"malformed plan: {exc}", file=file) from None
        if plan.activations not in ("keep", "offload", "recompute"):
            raise SpecError(f"expected keep, offload or recompute, got {plan.activations!r}",
                            file=file, key="activations")
        for layer, policy in plan.layer_policy.items():
            if policy not in ("keep", "offload", "recompute"):
                raise SpecError(f"expected keep, offload or recompute, got {policy!r}",
                                file=file, key=f"layer_policy.{layer}")
        if plan.expert_fetch not in ("routed", "layer"):
            raise SpecError(f"expected routed or layer, got {plan.expert_fetch!r}", file=file,
                            key="expert_fetch")
        if plan.staging not in ("pipelined", "serial"):
            raise SpecError(f"expected pipelined or serial, got {plan.staging!r}", file=file,
                            key="staging")
        if plan.version != PLAN_VERSION:
            raise SpecError(f"unknown plan version {plan.version!r}; this memsim reads version "
                            f"{PLAN_VERSION} (re-plan with memsim plan -o)", file=file, key="version")
        if isinstance(plan.prefetch_depth, bool) or not isinstance(plan.prefetch_depth, int) \
                or plan.prefetch_depth < 0:
            raise SpecError(f"expected a whole number of layers >= 0, got {plan.prefetch_depth!r}",
                            file=file, key="prefetch_depth")
        copies = plan.weight_copies
        if copies is not None and (isinstance(copies, bool) or not isinstance(copies, int)
                                   or copies < 1):
            raise SpecError(f"expected a whole number of copies >= 1, got {copies!r}", file=file,
                            key="weight_copies")
        bits = plan.host_kv_bits
        if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or bits < 1):
            raise SpecError(f"expected a whole number of bits >= 1, got {bits!r}", file=file,
                            key="host_kv_bits")
        groups = plan.kv_head_groups
        if groups is not None and (isinstance(groups, bool) or not isinstance(groups, int)
                                   or groups < 1):
            raise SpecError(f"expected a whole number of head groups >= 1, got {groups!r}",
                            file=file, key="kv_head_groups")
        return plan

    def save(self, path: str | Path) -> None:
        text = (json.dumps(self.to_dict(), indent=1, sort_keys=True) if str(path).endswith(".json")
                else yaml.safe_dump(self.to_dict(), sort_keys=True))
        Path(path).write_text(text)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        from memsim.specio import read_yaml  # YAML is a superset of JSON

        return cls.from_dict(read_yaml(path), file=str(path))


def trace_fingerprint(trace) -> str:
    """A short hash of a Trace's structure, stored in plans so a plan is not run on another."""
    payload = json.dumps({"name": trace.name, "kind": trace.kind, "ops": trace.num_ops,
                          "tensors": sorted((n, t.bytes) for n, t in trace.tensors.items())},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
