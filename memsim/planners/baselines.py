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
from memsim.workloads.trace import Trace


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
