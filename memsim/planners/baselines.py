"""The baselines users know, each a fixed rule that writes a Plan (no search, except FlexGen's,
which lives in ``mip.py`` as the inference search restricted to its space).

Each raises ``NotApplicable`` for a workload kind it does not address, so ``memsim plan`` skips
it instead of listing it as infeasible.
"""

from __future__ import annotations

import math

from memsim.hardware.spec import System
from memsim.planners.mip import NotApplicable, planning_view
from memsim.planners.plan import Plan, PlannerInfo, ServingPolicy
from memsim.sim.overheads import resident_room, usable_bytes
from memsim.workloads.trace import LAYER, Trace


def _need(trace: Trace, *kinds: str, what: str) -> None:
    if trace.kind not in kinds:
        raise NotApplicable(f"{what} applies to {' and '.join(kinds)} workloads, not {trace.kind}")


def _info(name: str) -> PlannerInfo:
    return PlannerInfo(name=name, status="heuristic")


def resident(system: System, trace: Trace, options: dict, time_limit: float = 0) -> Plan:
    """Everything on the compute tier, activations kept: what a framework does by default."""
    plan = Plan(planner=_info("resident"))
    if trace.kind == "serving":
        plan.serving = _serving_defaults(trace, swap=False)
    return plan


def checkpoint_full(system: System, trace: Trace, options: dict, time_limit: float = 0) -> Plan:
    """Full activation checkpointing: keep each layer's input, recompute its forward in backward."""
    _need(trace, "training", what="activation checkpointing")
    return Plan(activations="recompute", planner=_info("checkpoint-full"))


def checkpoint_sqrt(system: System, trace: Trace, options: dict, time_limit: float = 0) -> Plan:
    """Chen et al. (2016) √n checkpointing at layer granularity: of every ⌈√L⌉ layers one keeps
    its activations and the others recompute, so about L/√L = √L layers' activations stay."""
    _need(trace, "training", what="activation checkpointing")
    layers = int(trace.meta.get("layers") or max(b.repeat for b in trace.blocks))
    k = max(1, math.ceil(math.sqrt(layers)))
    policy = {i: "keep" for i in range(layers) if i % k == k - 1}
    return Plan(
        activations="recompute",
        layer_policy=policy,
        planner=_info("checkpoint-sqrt"),
        notes=[f"√n checkpointing: every {k}th layer keeps its activations"],
    )


def zero_offload(system: System, trace: Trace, options: dict, time_limit: float = 0) -> Plan:
    """ZeRO-Offload (Ren et al. 2021): gradients and optimizer states in host memory, the Adam
    step on the CPU, bf16 weights on the GPU."""
    _need(trace, "training", what="ZeRO-Offload")
    host = _host(system, "ZeRO-Offload")
    return Plan(
        placement={"grad": {host: 1.0}, "optimizer": {host: 1.0}},
        optimizer_device="cpu",
        planner=_info("zero-offload"),
    )


def zero_infinity(system: System, trace: Trace, options: dict, time_limit: float = 0) -> Plan:
    """ZeRO-Infinity (Rajbhandari et al. 2021): optimizer states and parameters on NVMe, gradients
    in host memory, the step on the CPU, activation checkpointing."""
    _need(trace, "training", what="ZeRO-Infinity")
    host = _host(system, "ZeRO-Infinity")
    view = planning_view(system, trace)
    ssd = view.tiers_of("ssd") or view.tiers_of("flash")
    if not ssd:
        raise NotApplicable("ZeRO-Infinity needs an NVMe (ssd) tier")
    nvme = max(ssd, key=lambda t: view.tiers[t].capacity)
    return Plan(
        placement={"weight": {nvme: 1.0}, "grad": {host: 1.0}, "optimizer": {nvme: 1.0}},
        activations="recompute",
        optimizer_device="cpu",
        planner=_info("zero-infinity"),
    )


def vllm_swap(system: System, trace: Trace, options: dict, time_limit: float = 0) -> Plan:
    """vLLM's defaults: weights and a paged KV pool on the GPU, preemption by swapping KV blocks to
    a CPU swap space (``swap_space``, 4 GiB per GPU by default)."""
    _need(trace, "serving", what="vLLM swap")
    host = _host(system, "vLLM swap")
    return Plan(
        serving=_serving_defaults(trace, swap=host, swap_bytes=options.get("swap_bytes")),
        planner=_info("vllm-swap"),
    )


def fixed(system: System, trace: Trace, options: dict, time_limit: float = 0) -> Plan:
    """A hand-written plan from a preset's ``options.plan`` (e.g. a paper's published policy)."""
    kinds = options.get("applies_to")
    if kinds and trace.kind not in kinds:
        raise NotApplicable(f"this fixed plan is for {kinds}, not {trace.kind}")
    plan = Plan.from_dict(dict(options.get("plan") or {}), file=options.get("file", "planner preset"))
    plan.check(system.tiers, file=options.get("file", "planner preset"))
    plan.planner = PlannerInfo(name=options.get("name", "fixed"), status="given")
    return plan


def _host(system: System, what: str) -> str:
    if system.cpu is None or system.cpu.memory == system.fast_tier:
        raise NotApplicable(f"{what} needs host memory beside the GPU")
    return system.cpu.memory


def _serving_defaults(trace: Trace, swap: str | bool, swap_bytes=None) -> ServingPolicy:
    """The trace's scheduler settings; ``swap``: the host tier to swap KV to (False: recompute)."""
    from memsim.units import parse_bytes

    sched = dict(trace.meta.get("scheduler") or {})
    policy = ServingPolicy()
    for key in ("max_num_seqs", "max_num_batched_tokens", "block_size"):
        if sched.get(key):
            setattr(policy, key, int(sched[key]))
    if swap:
        space = swap_bytes or sched.get("swap_bytes") or sched.get("swap_space") or "4GiB"
        if isinstance(space, int | float) and space < 4096:  # vLLM writes swap_space in GiB
            space = f"{space}GiB"
        policy.preempt, policy.swap_tier, policy.swap_bytes = "swap", str(swap), parse_bytes(space)
    return policy


def accelerate(system: System, trace: Trace, options: dict, time_limit: float = 0) -> Plan:
    """HF Accelerate big-model inference (``device_map="auto"`` + ``max_memory``).

    ``infer_auto_device_map`` fills the GPU with layers up to ``max_memory``, then host memory,
    then disk. Each offloaded module carries an ``AlignDevicesHook`` that, right before its
    forward, copies its weights to the GPU with ``set_module_tensor_to_device`` (a plain
    ``.to(device)`` of unpinned CPU tensors) and drops them after: no prefetch, no overlap with
    compute, pageable copies. The KV cache and activations stay on the GPU. Sources:
    huggingface/accelerate ``src/accelerate/hooks.py`` (AlignDevicesHook),
    ``utils/modeling.py`` (infer_auto_device_map, set_module_tensor_to_device), docs
    ``usage_guides/big_modeling.md``.

    memsim's placement splits every layer alike, so "the first k layers resident" becomes the
    same fraction of each layer resident: with synchronous loads both stream the same bytes per
    step, with no overlap either way. ``options.max_memory``: weight bytes allowed on the GPU
    (default: what the GPU holds beside the KV cache and activations), and optionally on the host.
    """
    from memsim.units import parse_bytes

    _need(trace, "inference", what="Accelerate offload")
    host = _host(system, "Accelerate offload")
    gpu = system.fast_tier
    by_class = trace.bytes_by_class()
    weights = by_class.get("weight", 0)
    limits = dict(options.get("max_memory") or {})
    if "gpu" in limits:
        budget = parse_bytes(limits["gpu"])
    else:  # the GPU, less what generation needs beside resident weights: the KV cache, the
        # activations and the staging of the layer being loaded and the one computing
        working = sum(t.bytes for t in trace.tensors.values() if t.cls in ("activation", "workspace"))
        layers = int(trace.meta.get("layers") or max(b.repeat for b in trace.blocks))
        budget = (usable_bytes(system, trace.meta)[gpu] - by_class.get("kv", 0) - working
                  - 2 * weights // max(1, layers))
        pieces = sum(layers if LAYER in n else 1 for n, t in trace.tensors.items() if t.cls == "weight")
        budget = resident_room(system, gpu, budget, pieces)
    split: dict[str, float] = {}
    left = weights
    resident = min(left, max(0, budget))
    if resident:
        split[gpu] = resident / weights
    left -= resident
    host_cap = parse_bytes(limits["cpu"]) if "cpu" in limits else system.tiers[host].capacity
    on_host = min(left, host_cap)
    if on_host:
        split[host] = on_host / weights
    left -= on_host
    if left:
        view = planning_view(system, trace)
        disk = view.tiers_of("ssd") or view.tiers_of("flash")
        if not disk:
            raise NotApplicable("Accelerate offload: the weights fit neither GPU nor host memory, "
                                "and the system has no disk tier")
        split[max(disk, key=lambda t: view.tiers[t].capacity)] = left / weights
    total = sum(split.values())
    split = {tier: frac / total for tier, frac in split.items()}
    offloaded = 1 - split.get(gpu, 0.0)
    return Plan(
        placement={"weight": split} if offloaded > 0 else {},
        prefetch_depth=0,
        pinned=bool(options.get("pinned", False)),
        planner=_info("accelerate"),
        notes=[f"Accelerate offload: {offloaded:.0%} of the weights loaded synchronously before "
               "each layer (AlignDevicesHook), from "
               + ("pinned" if options.get("pinned") else "pageable") + " host memory"],
    )
