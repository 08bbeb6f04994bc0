"""The baselines users know, each a fixed rule that writes a Plan (no search, except FlexGen's,
which lives in ``mip.py`` as the inference search restricted to its space).

Each raises ``NotApplicable`` for a workload kind it does not address, so ``memsim plan`` skips
it instead of listing it as infeasible.
"""

from __future__ import annotations

import math

from memsim.contracts.plan import Plan, PlannerInfo, ServingPolicy
from memsim.errors import SpecError
from memsim.hardware.overheads import resident_room, usable_bytes
from memsim.hardware.spec import System
from memsim.planners.mip import NotApplicable, planning_view
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
    _need(trace, "training", "module", what="activation checkpointing")
    _staged(trace)
    return Plan(activations="recompute", planner=_info("checkpoint-full"))


def checkpoint_sqrt(system: System, trace: Trace, options: dict, time_limit: float = 0) -> Plan:
    """Chen et al. (2016) √n checkpointing at layer granularity: of every ⌈√L⌉ layers one keeps
    its activations and the others recompute, so about L/√L = √L layers' activations stay."""
    _need(trace, "training", "module", what="activation checkpointing")
    _staged(trace)
    layers = int(trace.meta.get("layers") or max(b.repeat for b in trace.blocks))
    k = max(1, math.ceil(math.sqrt(layers)))
    policy = {i: "keep" for i in range(layers) if i % k == k - 1}
    return Plan(
        activations="recompute",
        layer_policy=policy,
        planner=_info("checkpoint-sqrt"),
        notes=[f"√n checkpointing: every {k}th layer keeps its activations"],
    )


def _staged(trace: Trace) -> None:
    """A module trace checkpoints per stage (``memsim/workloads/stages.py``): it needs them."""
    if trace.kind == "module" and "stages" not in trace.meta:
        raise NotApplicable("checkpointing a traced module needs its training graph in stages "
                            "(memsim.workloads.stages.stage; load_trace does it)")


def zero_offload(system: System, trace: Trace, options: dict, time_limit: float = 0) -> Plan:
    """ZeRO-Offload (Ren et al. 2021): gradients and optimizer states in host memory, the Adam
    step on the CPU, bf16 weights on the GPU.

    DeepSpeed jobs run it with activation checkpointing whenever the activations do not fit
    beside the weights (the ZeRO-Offload tutorial's 10B GPT-2 passes Megatron's
    ``--checkpoint-activations``), so ``options.checkpoint_activations`` is ``auto`` by default:
    checkpoint every layer when weights plus activations overflow the GPU, keep them otherwise;
    ``true`` / ``false`` force it. ``options.pin_memory`` is ``offload_optimizer.pin_memory``
    (DeepSpeed's default: false, so gradient copies to the host are pageable)."""
    _need(trace, "training", what="ZeRO-Offload")
    host = _host(system, "ZeRO-Offload")
    recompute = _checkpointing(system, trace, options, resident=("weights",))
    return Plan(
        placement={"grad": {host: 1.0}, "optimizer": {host: 1.0}},
        activations="recompute" if recompute else "keep",
        optimizer_device="cpu",
        pinned=bool(options.get("pin_memory", False)),
        planner=_info("zero-offload"),
        notes=["activation checkpointing on every layer: the activations do not fit beside the "
               "weights" if recompute else "activations kept (they fit beside the weights)"],
    )


def _checkpointing(system: System, trace: Trace, options: dict, resident: tuple[str, ...]) -> bool:
    """Whether a framework baseline checkpoints activations: ``options.checkpoint_activations``
    (true / false), or ``auto``: when the ``resident`` per-device bytes plus the activations
    and workspace exceed the GPU, less the runtime's non-tensor bytes."""
    choice = options.get("checkpoint_activations", "auto")
    if choice != "auto":
        return bool(choice)
    if system.gpu is None:
        return False
    per_device = trace.meta.get("per_device_bytes") or {}
    need = sum(int(per_device.get(k, 0)) for k in (*resident, "activations", "workspace"))
    gpu = system.gpu.memory
    layers = int(trace.meta.get("layers") or 1)
    return need > resident_room(system, gpu, usable_bytes(system, trace.meta)[gpu], layers)


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
        expert_fetch="layer",  # the hook loads the whole decoder layer, every expert
        planner=_info("accelerate"),
        notes=[f"Accelerate offload: {offloaded:.0%} of the weights loaded synchronously before "
               "each layer (AlignDevicesHook), from "
               + ("pinned" if options.get("pinned") else "pageable") + " host memory"],
    )


def zero_inference(system: System, trace: Trace, options: dict, time_limit: float = 0) -> Plan:
    """DeepSpeed ZeRO-Inference: ZeRO stage 3 with every parameter offloaded (``offload_param``)
    to host memory (``device: cpu``) or NVMe (``device: nvme``), fetched to the GPU layer by layer
    ahead of its use and released after it; optionally the KV cache in host memory with decode
    attention computed on the CPU next to it (``kv_offload``).

    Defaults as DeepSpeedExamples ``inference/huggingface/zero_inference/run_model.py`` sets them:
    ``stage3_prefetch_bucket_size`` and ``stage3_max_live_parameters`` of 2·h² parameters (the
    next sub-modules' weights fetched while the current ones compute: memsim's prefetch of
    ``prefetch_depth: 1`` layer), ``pin_memory`` off (``--pin-memory 0``: the offloaded weights
    are pageable CPU tensors) and an unpinned KV cache (``--pin_kv_cache`` off). NVMe offload
    always reads through DeepSpeed's pinned swap buffers (``buffer_count: 5`` of
    ``buffer_size``), so its copies are pinned whatever ``pin_memory`` says. Each parameter is
    read into its buffer before it is copied to the GPU, but ZeRO-3 swaps the next parameters in
    asynchronously while the current ones are copied (``prefetch_nvme`` is on for NVMe offload:
    ``parameter_offload.py``; ``partitioned_param_coordinator.py``,
    ``__prefetch_nvme_param_partitions``, ``swap_in(..., async_op=True)``), so across parameters
    both hops are busy at once: ``staging: pipelined``. KV offload follows
    the README's "KV cache offloaded to consume CPU memory and computation" (the
    ``set_kv_cache_offload`` model change): the cache lives in DRAM, decode attention runs there.
    The models are HF transformers' own modeling code (the fork's ``modeling_llama.py``), whose
    eager attention expands a GQA cache to every query head with ``repeat_kv``: ``gqa_expand``;
    its host KV buffer is fp32 (``torch.empty`` in the default dtype): ``host_kv_bits: 32``.

    ZeRO-3 fetches each parameter tensor with its own host-to-GPU copy
    (``partition_parameters.py``: ``param.ds_tensor.to(device)`` per parameter); those with at
    most ``stage3_param_persistence_threshold`` elements stay on the GPU (run_model.py: the hidden
    size; FlexGen's hf_opt.py: 0). The plan's ``weight_copies`` is the count a layer is fetched as.

    ``options``: ``offload_param`` (``cpu`` | ``nvme``), ``pin_memory`` (bool), ``kv_offload``
    (bool), ``prefetch_depth`` (layers, default 1), ``param_persistence_threshold`` (elements or
    ``hidden``), ``buffer_count`` / ``buffer_size`` (NVMe swap buffers, kept for the emitted
    config).
    """
    _need(trace, "inference", what="ZeRO-Inference")
    host = _host(system, "ZeRO-Inference")
    device = str(options.get("offload_param", "cpu"))
    if device not in ("cpu", "nvme"):
        raise NotApplicable(f"ZeRO-Inference offload_param device is cpu or nvme, not {device!r}")
    home = _offload_tier(system, trace, device, host)
    kv_offload = bool(options.get("kv_offload", False))
    pinned = device == "nvme" or bool(options.get("pin_memory", False))
    depth = int(options.get("prefetch_depth", 1))
    placement: dict[str, dict[str, float]] = {"weight": {home: 1.0}}
    if kv_offload:
        placement["kv"] = {host: 1.0}
    copies = _zero3_copies(trace, options)
    where = "NVMe through pinned swap buffers, the next parameters read while these are copied" \
        if device == "nvme" else ("pinned" if pinned else "pageable") + " host memory"
    notes = [f"ZeRO-Inference: all weights offloaded to {where}, fetched {depth} layer(s) ahead"
             + (f", {copies} copies a layer (one per parameter tensor)" if copies else "")]
    if kv_offload:
        notes.append("KV cache in host memory, decode attention on the CPU (kv_offload)")
    return Plan(
        placement=placement,
        prefetch_depth=depth,
        pinned=pinned,
        staging="pipelined",  # NVMe swap-in runs ahead of the copies (prefetch_nvme)
        weight_copies=copies,
        cpu_attention=kv_offload,
        gqa_expand=True,
        host_kv_bits=32 if kv_offload else None,  # the fork's fp32 host KV buffer
        planner=_info("zero-inference"),
        notes=notes,
    )


def _zero3_copies(trace: Trace, options: dict) -> int | None:
    """Copies ZeRO-3 fetches a layer's weights as: one per parameter tensor above
    ``param_persistence_threshold`` elements (``stage3_param_persistence_threshold``; ``hidden``:
    the model's hidden size, as run_model.py sets it). None: the trace lists no tensors."""
    from memsim.workloads.param_tensors import fetched_copies

    threshold = options.get("param_persistence_threshold", "hidden")
    if threshold == "hidden":
        threshold = trace.meta.get("hidden", 0)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold < 0:
        raise SpecError(f"expected a number of elements >= 0 or 'hidden', got {threshold!r}",
                        key="options.param_persistence_threshold")
    return fetched_copies(trace.meta, threshold)


def zero3_offload(system: System, trace: Trace, options: dict, time_limit: float = 0) -> Plan:
    """DeepSpeed ZeRO-3 Offload (ZeRO-Infinity's CPU path): parameters, gradients and optimizer
    states in host memory (``offload_param`` / ``offload_optimizer`` ``device: cpu``, or ``nvme``
    for either), the Adam step on the CPU (DeepSpeedCPUAdam), each layer's parameters fetched to
    the GPU ahead of its forward and backward and released after.

    DeepSpeed's defaults (docs/code/zero3 ``DeepSpeedZeroConfig``): ``pin_memory: false`` for both
    offloads (pageable copies), ``stage3_prefetch_bucket_size`` 5e7 parameters (the next
    sub-modules: memsim's ``prefetch_depth: 1`` layer). ``checkpoint_activations``: ``auto``
    (as ZeRO-Offload's: on when the activations do not fit), ``true`` or ``false``."""
    _need(trace, "training", what="ZeRO-3 Offload")
    host = _host(system, "ZeRO-3 Offload")
    placement = {cls: {_offload_tier(system, trace, options.get(key, "cpu"), host): 1.0}
                 for cls, key in (("weight", "offload_param"), ("optimizer", "offload_optimizer"))}
    placement["grad"] = {host: 1.0}
    return _states_offloaded(system, trace, options, placement, "zero3-offload",
                             "ZeRO-3 Offload: parameters fetched {depth} layer(s) ahead", pinned=False)


def fsdp_offload(system: System, trace: Trace, options: dict, time_limit: float = 0) -> Plan:
    """PyTorch FSDP with ``CPUOffload(offload_params=True)``: every FSDP unit's flat parameter and
    its gradient live in pinned host memory (FSDP pins the offloaded shard), the optimizer
    (``torch.optim``, its states beside the CPU parameters) steps on the CPU, and a unit's
    parameters are copied to the GPU for its forward and again for its backward.

    Prefetch: ``backward_prefetch=BACKWARD_PRE`` (the default) fetches the next unit before the
    current one's gradient computation; ``forward_prefetch`` defaults to False, but the CPU thread
    issues the next unit's unshard while the GPU still runs the current one, so both passes
    overlap one unit ahead: ``prefetch_depth: 1`` with one unit per layer (the usual
    transformer-layer auto-wrap policy). Sources: PyTorch docs ``torch.distributed.fsdp``
    (CPUOffload, BackwardPrefetch, forward_prefetch). ``checkpoint_activations``: ``auto``,
    ``true`` (``apply_activation_checkpointing`` on every layer) or ``false``."""
    _need(trace, "training", what="FSDP CPU offload")
    host = _host(system, "FSDP CPU offload")
    placement = {"weight": {host: 1.0}, "grad": {host: 1.0}, "optimizer": {host: 1.0}}
    return _states_offloaded(system, trace, options, placement, "fsdp-offload",
                             "FSDP CPU offload: units fetched {depth} ahead", pinned=True)


def _states_offloaded(system: System, trace: Trace, options: dict, placement: dict, name: str,
                      fetched: str, pinned: bool) -> Plan:
    """What ZeRO-3 Offload and FSDP CPU offload share: model states homed off the GPU, the optimizer
    step on the CPU, ``prefetch_depth`` units fetched ahead (default 1), checkpointing when it is
    what fits; they differ in where the states live and in the framework's pinning default."""
    recompute = _checkpointing(system, trace, options, resident=())
    depth = int(options.get("prefetch_depth", 1))
    pinned = bool(options.get("pin_memory", pinned))
    return Plan(
        placement=placement,
        activations="recompute" if recompute else "keep",
        optimizer_device="cpu",
        prefetch_depth=depth,
        pinned=pinned,
        planner=_info(name),
        notes=[fetched.format(depth=depth) + " from " + ("pinned" if pinned else "pageable")
               + " host memory, " + ("activation checkpointing" if recompute else "activations kept")],
    )


def _offload_tier(system: System, trace: Trace, device: str, host: str) -> str:
    """The tier a DeepSpeed ``offload_*.device`` names: ``cpu`` (host memory) or ``nvme``."""
    if device == "cpu":
        return host
    if device != "nvme":
        raise NotApplicable(f"a DeepSpeed offload device is cpu or nvme, not {device!r}")
    view = planning_view(system, trace)
    disk = view.tiers_of("ssd") or view.tiers_of("flash")
    if not disk:
        raise NotApplicable("NVMe offload needs an ssd tier")
    return max(disk, key=lambda t: view.tiers[t].capacity)


def vllm_cpu_offload(system: System, trace: Trace, options: dict, time_limit: float = 0) -> Plan:
    """vLLM with ``cpu_offload_gb``: that many GiB of the weights live in pinned CPU memory and
    cross PCIe in every forward pass, on the compute stream (the offloaded parameters are copied,
    or read over UVA, as their module runs: no prefetch, no overlap), the rest stays on the GPU;
    serving keeps vLLM's paged KV pool on the GPU and its CPU ``swap_space`` (4 GiB) for preempted
    sequences. Sources: vLLM docs (engine arguments ``--cpu-offload-gb``: "part of the model is
    loaded from CPU memory to GPU memory on the fly in each model forward pass"; ``--swap-space``)
    and vllm-project/vllm PR #6496 (the offload wrapper).

    vLLM offloads whole parameters in module order until the budget is used; memsim offloads the
    same fraction of every layer, which streams the same bytes per step with no overlap either
    way. ``options``: ``cpu_offload_gb`` (GiB, default 0; ``auto``: the least that lets the weights
    fit beside the activations, which vLLM leaves to the user), ``swap_space`` (GiB)."""
    from memsim.units import parse_bytes

    _need(trace, "inference", "serving", what="vLLM CPU offload")
    host = _host(system, "vLLM CPU offload")
    gpu = system.fast_tier
    by_class = trace.bytes_by_class()
    weights = by_class.get("weight", 0)
    given = options.get("cpu_offload_gb", 0)
    if given == "auto":  # what the GPU holds beside the KV cache, activations, two layers
        layers = int(trace.meta.get("layers") or max(b.repeat for b in trace.blocks))
        working = sum(by_class.get(c, 0) for c in ("activation", "workspace", "kv"))
        room = (usable_bytes(system, trace.meta)[gpu] - working
                - 2 * weights // max(1, layers))  # the layer loading and the one computing
        pieces = sum(layers if LAYER in n else 1 for n, t in trace.tensors.items() if t.cls == "weight")
        room = resident_room(system, gpu, room, pieces)
        offload = max(0, weights - max(0, room))
    else:
        offload = int(float(given) * 2**30)
    frac = min(1.0, offload / weights) if weights else 0.0
    placement = {"weight": {gpu: 1 - frac, host: frac}} if frac > 0 else {}
    if frac >= 1.0:
        placement = {"weight": {host: 1.0}}
    plan = Plan(placement=placement, prefetch_depth=0, pinned=True, planner=_info("vllm-cpu-offload"),
                notes=[f"vLLM cpu_offload_gb: {offload / 2**30:.1f} GiB ({frac:.0%}) of the weights "
                       "read from pinned CPU memory in every forward pass, synchronously"])
    if trace.kind == "serving":
        space = options.get("swap_space")
        plan.serving = _serving_defaults(trace, swap=host,
                                         swap_bytes=parse_bytes(f"{space}GiB") if space else None)
    return plan
