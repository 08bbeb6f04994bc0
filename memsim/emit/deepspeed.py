"""DeepSpeed ``ds_config.json``, both ways: ZeRO-Offload / ZeRO-Infinity training and
ZeRO-Inference.

Keys and defaults from DeepSpeed's own config models (deepspeedai/DeepSpeed
``deepspeed/runtime/zero/config.py`` and ``offload_config.py``, docs ``config-json``):
``zero_optimization.offload_param`` {``device``: none|cpu|nvme, ``nvme_path``, ``pin_memory``
(default false)} is valid with stage 3 only; ``offload_optimizer`` {same keys} moves the fp32
states and gradients to host memory and runs the step there (DeepSpeedCPUAdam);
``stage3_prefetch_bucket_size`` (default 5e7) is the number of parameter *elements* fetched
ahead of use; ``activation_checkpointing`` configures ``deepspeed.checkpointing``.

What a ds_config cannot say, and the nearest config emitted instead (each with a note): a
partial offload of weights (ZeRO-3 offloads every parameter), checkpointing of some layers only
(``deepspeed.checkpointing`` and HF's ``gradient_checkpointing`` checkpoint every layer),
activation offload without recompute, and — for inference — a KV cache off the GPU (the
``--kv-offload`` flag of DeepSpeedExamples' ZeRO-Inference ``run_model.py``, not a ds_config key),
FlexGen's batch blocks and CPU attention.
"""

from __future__ import annotations

import json
from pathlib import Path

from memsim.contracts.plan import Plan
from memsim.emit.common import collapse, largest_share, need, places, split_of, weight_bytes
from memsim.errors import SpecError
from memsim.hardware.spec import System
from memsim.workloads.param_tensors import PERSISTENCE_DEFAULT, fetched_copies, threshold_for
from memsim.workloads.trace import Trace

KEYS = {"zero_optimization", "train_micro_batch_size_per_gpu", "train_batch_size",
        "gradient_accumulation_steps", "activation_checkpointing"}
PREFETCH_DEFAULT = 50_000_000  # elements: DeepSpeedZeroConfig.prefetch_bucket_size
NVME_PATH = "/local_nvme"  # the placeholder DeepSpeed's docs use; edit to the SSD's mount
DEVICE = {"cpu": "cpu", "disk": "nvme"}
OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
USAGE = "deepspeed train.py --deepspeed {path} (or TrainingArguments(deepspeed=\"{path}\"))"


def emit(system: System, trace: Trace, plan: Plan) -> tuple[str, list[str]]:
    need(trace, ("training", "inference"), "DeepSpeed", "serving is vLLM's: use --emit vllm")
    notes: list[str] = []
    meta, fast = trace.meta, system.fast_tier
    zero: dict = {"stage": int(meta.get("zero_stage") or 0)}
    weights = collapse(system, plan.home("weight", fast), "weight", notes, "DeepSpeed")
    if weights["gpu"] < 1:
        device = largest_share(weights, ("cpu", "disk"))
        if max(weights["gpu"], min(weights["cpu"], weights["disk"])) > 0:
            notes.append(f"ZeRO-3 offloads every parameter: the plan's split "
                         f"{_pct(weights)} of the weights was emitted as all on {DEVICE[device]}")
        if zero["stage"] != 3 and trace.kind == "training":
            notes.append(f"offload_param needs ZeRO stage 3: emitted stage 3 (the workload has "
                         f"stage {zero['stage']})")
        zero["stage"] = 3
        zero["offload_param"] = _offload(device, plan.pinned)
        zero["stage3_prefetch_bucket_size"] = plan.prefetch_depth * _layer_elements(trace)
        default = fetched_copies(meta, PERSISTENCE_DEFAULT)
        if default is not None and (plan.weight_copies or 1) != default:
            # ZeRO-3 fetches every parameter tensor above the threshold with its own copy
            threshold = threshold_for(meta, plan.weight_copies or 1)
            if threshold is None:
                notes.append(f"ZeRO-3 fetches each parameter tensor with its own copy: no "
                             f"stage3_param_persistence_threshold fetches a layer as "
                             f"{plan.weight_copies or 1} copies, DeepSpeed's default "
                             f"({default} copies a layer) kept")
            else:
                zero["stage3_param_persistence_threshold"] = threshold
    if trace.kind == "training":
        _optimizer(system, plan, zero, notes)
    ds: dict = {"train_batch_size": _batch(meta), "train_micro_batch_size_per_gpu":
                int(meta.get("micro_batch") or meta.get("batch_size") or 1)}
    if trace.kind == "training":
        ds["gradient_accumulation_steps"] = int(meta.get("grad_accum") or 1)
        name = OPTIMIZERS.get(str(meta.get("optimizer")))
        if name:
            ds["optimizer"] = {"type": name, "params": {}}
        else:
            notes.append(f"optimizer {meta.get('optimizer')} is not a DeepSpeed optimizer type: "
                         "no optimizer section (pass your own optimizer to deepspeed.initialize)")
        _activations(trace, plan, ds, notes)
    else:
        _inference_notes(system, plan, notes)
    dtype = str(meta.get("dtype") or "bf16")
    ds["bf16"], ds["fp16"] = {"enabled": dtype == "bf16"}, {"enabled": dtype == "fp16"}
    ds["zero_optimization"] = zero
    return json.dumps(ds, indent=2) + "\n", notes


def _pct(devices: dict[str, float]) -> str:
    return ", ".join(f"{d} {f:.0%}" for d, f in devices.items() if f > 0)


def _offload(device: str, pinned: bool) -> dict:
    out = {"device": DEVICE[device], "pin_memory": bool(pinned)}
    if device == "disk":
        out["nvme_path"] = NVME_PATH
    return out


def _layer_elements(trace: Trace) -> int:
    return weight_bytes(trace)["layer"] // BYTES.get(str(trace.meta.get("dtype")), 2)


def _batch(meta: dict) -> int:
    if meta.get("kind") == "training":
        return int(meta.get("micro_batch") or 1) * int(meta.get("grad_accum") or 1) * int(
            meta.get("data_parallel") or 1)
    return int(meta.get("batch_size") or 1)


def _optimizer(system: System, plan: Plan, zero: dict, notes: list[str]) -> None:
    """ZeRO-Offload: offloaded states bring their gradients to host memory and the step there."""
    fast = system.fast_tier
    states = collapse(system, plan.home("optimizer", fast), "optimizer", notes, "DeepSpeed")
    grads = collapse(system, plan.home("grad", fast), "grad", notes, "DeepSpeed")
    if states["gpu"] < 1:
        device = largest_share(states, ("cpu", "disk"))
        if max(states["gpu"], min(states["cpu"], states["disk"])) > 0:
            notes.append(f"the plan splits the optimizer states ({_pct(states)}); emitted all on "
                         f"{DEVICE[device]}")
        if grads["cpu"] < 1:
            notes.append("DeepSpeed keeps the gradients of offloaded optimizer states in host memory: "
                         f"the plan's gradient split {_pct(grads)} became cpu 100%")
        if plan.optimizer_device != "cpu":
            notes.append("DeepSpeed runs the step of offloaded states on the CPU (DeepSpeedCPUAdam)")
        if zero["stage"] == 0:  # ZeRO is off at stage 0 and its offload sections are not used
            notes.append("offload_optimizer needs ZeRO stage 1-3: emitted stage 2, as DeepSpeed's "
                         "ZeRO-Offload tutorial does (the workload has stage 0)")
            zero["stage"] = 2
        zero["offload_optimizer"] = _offload(device, plan.pinned)
        return
    if grads["gpu"] < 1:
        notes.append("DeepSpeed offloads gradients only with the optimizer states: kept on the GPU")
    if plan.optimizer_device == "cpu":
        notes.append("optimizer states on the GPU are stepped there: optimizer_device gpu")


def _activations(trace: Trace, plan: Plan, ds: dict, notes: list[str]) -> None:
    counts = plan.policy_counts(int(trace.meta.get("layers") or 1))
    if not counts["recompute"] and not counts["offload"]:
        return
    if counts["keep"]:
        notes.append(f"DeepSpeed (like HF gradient_checkpointing) checkpoints every layer: the plan's "
                     f"{counts['keep']} kept layers recompute too")
    if counts["offload"]:
        notes.append("activation offload without recompute has no ds_config key (cpu_checkpointing "
                     "moves only the checkpoints): emitted as checkpointing")
    ds["activation_checkpointing"] = {"partition_activations": False, "cpu_checkpointing": False,
                                      "contiguous_memory_optimization": False,
                                      "synchronize_checkpoint_boundary": False}


def _inference_notes(system: System, plan: Plan, notes: list[str]) -> None:
    kv = plan.home("kv", system.fast_tier)
    if set(kv) != {system.fast_tier}:
        notes.append("a KV cache off the GPU is ZeRO-Inference's run_model.py --kv-offload flag, not a "
                     "ds_config key: the emitted config keeps it on the GPU")
    if (plan.num_gpu_batches or 1) > 1 or plan.cpu_attention:
        notes.append("FlexGen's batch blocks and CPU attention have no DeepSpeed equivalent: one batch, "
                     "attention on the GPU")


# -- reading ------------------------------------------------------------------------------------


def read(text: str, system: System, trace: Trace, file: str) -> Plan:
    """The Plan a ds_config runs, checked against the workload's job."""
    from memsim.emit.common import parse_mapping
    from memsim.workloads.imports import deepspeed_job

    need(trace, ("training", "inference"), "DeepSpeed", "serving is vLLM's")
    ds = parse_mapping(text, file)
    zero = ds.get("zero_optimization") or {}
    if not isinstance(zero, dict):
        raise SpecError("expected a mapping", file=file, key="zero_optimization")
    if trace.kind == "training":
        _check_job(deepspeed_job(ds, Path(file)), trace, file)
    where = places(system)
    # ZeRO-Inference runs HF transformers' modeling code, whose attention expands GQA (repeat_kv)
    plan = Plan(gqa_expand=trace.kind == "inference")
    offloaded = False
    param = _device(zero, "offload_param", file)
    if param:
        if zero.get("stage") not in (3, "3"):
            raise SpecError(f"offload_param needs ZeRO stage 3 (DeepSpeed refuses it at stage "
                            f"{zero.get('stage', 0)})", file=file, key="zero_optimization.offload_param")
        key = "zero_optimization.offload_param.device"
        plan.placement["weight"] = split_of(system, {param: 1.0}, file, key)
        bucket = zero.get("stage3_prefetch_bucket_size", PREFETCH_DEFAULT)
        if not isinstance(bucket, int | float) or bucket < 0:
            raise SpecError(f"expected a number of elements >= 0, got {bucket!r}", file=file,
                            key="zero_optimization.stage3_prefetch_bucket_size")
        plan.prefetch_depth = round(bucket / max(1, _layer_elements(trace)))
        persist = zero.get("stage3_param_persistence_threshold", PERSISTENCE_DEFAULT)
        if not isinstance(persist, int | float) or isinstance(persist, bool) or persist < 0:
            raise SpecError(f"expected a number of elements >= 0, got {persist!r}", file=file,
                            key="zero_optimization.stage3_param_persistence_threshold")
        plan.weight_copies = fetched_copies(trace.meta, persist)  # one copy per fetched tensor
        offloaded = True
    states = _device(zero, "offload_optimizer", file) if trace.kind == "training" else None
    if states:
        if zero.get("stage") in (0, "0", None):
            raise SpecError("offload_optimizer needs ZeRO stage 1, 2 or 3 (stage 0 turns ZeRO off)",
                            file=file, key="zero_optimization.stage")
        key = "zero_optimization.offload_optimizer.device"
        plan.placement["optimizer"] = split_of(system, {states: 1.0}, file, key)
        plan.placement["grad"] = {where.tier("cpu", file, key): 1.0}
        plan.optimizer_device = "cpu"
        offloaded = True
    if offloaded:  # DeepSpeed's pin_memory defaults to false: pageable host buffers
        section = zero.get("offload_param") or zero.get("offload_optimizer")
        plan.pinned = bool(section.get("pin_memory", False))
    if trace.kind == "training" and "activation_checkpointing" in ds:
        plan.activations = "recompute"
    return plan


def _device(zero: dict, key: str, file: str) -> str | None:
    section = zero.get(key)
    if section is None:
        return None
    if not isinstance(section, dict):
        raise SpecError("expected a mapping with a device", file=file, key=f"zero_optimization.{key}")
    device = str(section.get("device", "none")).lower()
    if device not in ("none", "cpu", "nvme"):
        raise SpecError(f"expected none, cpu or nvme, got {device!r}", file=file,
                        key=f"zero_optimization.{key}.device")
    return {"none": None, "cpu": "cpu", "nvme": "disk"}[device]


def _check_job(job: dict, trace: Trace, file: str) -> None:
    """A ds_config describes a job too; it must be the workload's (exit 2 naming the key)."""
    meta = trace.meta
    pairs = {"micro_batch": ("train_micro_batch_size_per_gpu", meta.get("micro_batch")),
             "grad_accum": ("gradient_accumulation_steps", meta.get("grad_accum")),
             "precision": ("bf16.enabled", meta.get("dtype")),
             "optimizer": ("optimizer.type", meta.get("optimizer")),
             "data_parallel": ("train_batch_size", meta.get("data_parallel"))}
    if int(meta.get("data_parallel") or 1) > 1:  # with one rank every stage holds the same bytes
        pairs["zero_stage"] = ("zero_optimization.stage", meta.get("zero_stage"))
    for name, (key, ours) in pairs.items():
        differs = name in job and ours is not None and job[name] != ours
        if differs and not _same_optimizer(name, job[name], ours):
            raise SpecError(f"the config says {name} {job[name]}, the workload {ours}: make them agree "
                            f"(--set training.{name}={job[name]})", file=file, key=key)


def _same_optimizer(name: str, theirs, ours) -> bool:
    return name == "optimizer" and {str(theirs), str(ours)} <= {"adam", "adamw"}
