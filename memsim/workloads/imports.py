"""Jobs users already describe in their own tools' files: DeepSpeed ``ds_config.json`` for
training, vLLM engine arguments for serving. Both fill workload keys the YAML (and ``--set``)
left unset, so an explicit key always wins."""

from __future__ import annotations

import json
from pathlib import Path

from memsim.errors import SpecError, did_you_mean

DS_OPTIMIZERS = {"adam": "adam", "adamw": "adamw", "sgd": "sgd", "fusedadam": "adam",
                 "cpuadam": "adam", "deepspeedcpuadam": "adam"}
VLLM_KEYS = ("block_size", "swap_space", "gpu_memory_utilization", "max_num_batched_tokens", "max_num_seqs",
             "preemption_mode", "kv_cache_dtype", "dtype", "tensor_parallel_size", "pipeline_parallel_size")
VLLM_PARALLEL = {"tensor_parallel_size": "tensor", "pipeline_parallel_size": "pipeline"}
VLLM_DTYPES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "fp32", "float": "fp32"}


def relative(path_text: str, base: Path) -> Path:
    """A path as written in a spec file: relative to that file's folder."""
    p = Path(path_text).expanduser()
    return p if p.is_absolute() else base.parent / p


def _set(value) -> bool:
    return value is not None and value != "auto"


def deepspeed_fields(ds_path: Path) -> dict:
    """Training keys from a ds_config.json (``auto`` values are skipped)."""
    return deepspeed_import(ds_path)[0]


def deepspeed_import(ds_path: Path) -> tuple[dict, list[str]]:
    """Training keys from a ds_config.json, and a note for every key memsim does not act on
    (``auto`` values, the activation-checkpointing section, tuning knobs it does not model)."""
    try:
        ds = json.loads(ds_path.read_text())
    except FileNotFoundError:
        raise SpecError("DeepSpeed config not found", file=str(ds_path)) from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"invalid JSON: {exc.msg} (line {exc.lineno})", file=str(ds_path)) from None
    if not isinstance(ds, dict):
        raise SpecError("expected a JSON object", file=str(ds_path))
    return deepspeed_job(ds, ds_path), ds_notes(ds, ds_path)


def deepspeed_job(ds: dict, ds_path: Path) -> dict:
    """The training keys of a parsed ds_config (memsim.emit.deepspeed reads its plan part)."""
    out: dict = {}
    zero = ds.get("zero_optimization") or {}
    if _set(zero.get("stage")):
        out["zero_stage"] = zero["stage"]
    offload = {}
    for ds_key, key in (("offload_optimizer", "optimizer"), ("offload_param", "param")):
        device = (zero.get(ds_key) or {}).get("device")
        if _set(device):
            offload[key] = str(device).lower()
    if offload:
        out["offload"] = offload
    if offload.get("param", "none") != "none" and isinstance(zero.get("stage"), int) and zero["stage"] < 3:
        # DeepSpeed's config reference: offload_param is "only valid with stage 3"
        raise SpecError(f"offload_param moves ZeRO-3's partitioned parameters; it does not apply at stage "
                        f"{zero['stage']}: set stage 3 or offload_param.device none",
                        file=str(ds_path), key="zero_optimization.offload_param.device")
    if _set(ds.get("train_micro_batch_size_per_gpu")):
        out["micro_batch"] = ds["train_micro_batch_size_per_gpu"]
    if _set(ds.get("gradient_accumulation_steps")):
        out["grad_accum"] = ds["gradient_accumulation_steps"]
    precision = _precision(ds, ds_path)
    if precision:
        out["precision"] = precision
    opt_type = (ds.get("optimizer") or {}).get("type")
    if _set(opt_type):
        name = DS_OPTIMIZERS.get(str(opt_type).lower())
        if name is None:
            hint = did_you_mean(str(opt_type), DS_OPTIMIZERS)
            raise SpecError(f"optimizer {opt_type!r} is not modelled{hint}; "
                            f"memsim models Adam, AdamW, SGD", file=str(ds_path), key="optimizer.type")
        out["optimizer"] = name
    batch, micro, accum = ds.get("train_batch_size"), out.get("micro_batch"), out.get("grad_accum", 1)
    if _set(batch) and micro:
        if batch % (micro * accum):
            raise SpecError(f"train_batch_size {batch} is not micro-batch {micro} × accumulation "
                            f"{accum} × ranks",
                            file=str(ds_path), key="train_batch_size")
        out["data_parallel"] = batch // (micro * accum)
    out.update(_layout(ds, ds_path))
    return out


def _precision(ds: dict, ds_path: Path) -> str | None:
    """``bf16``/``fp16`` sections → the training precision; None leaves the workload's own.

    ``"enabled": "auto"`` is filled in by the HF Trainer from its ``--bf16``/``--fp16``
    arguments (transformers' DeepSpeed integration, ``HfTrainerDeepSpeedConfig``), which a
    ds_config alone does not carry: it decides nothing here (it is not fp32). Both enabled is
    refused, as DeepSpeed itself refuses it ("bf16 and fp16 modes cannot be simultaneously
    enabled"); fp32 only when every section present is explicitly disabled."""
    enabled = {k: (ds.get(k) or {}).get("enabled") for k in ("bf16", "fp16") if k in ds}
    on = [k for k, v in enabled.items() if v is True]
    if len(on) == 2:
        raise SpecError("bf16 and fp16 are both enabled; DeepSpeed refuses that: enable one",
                        file=str(ds_path), key="fp16.enabled")
    if on:
        return on[0]
    if enabled and all(v is False for v in enabled.values()):
        return "fp32"
    return None


def apply_deepspeed(data: dict, path: Path, notes: list[str] | None = None) -> dict:
    """Fill the workload's unset training keys from its ds_config; ``notes`` gains what was not
    taken (keys memsim does not act on, values the workload's own keys override)."""
    training = data.get("training")
    if not isinstance(training, dict) or not training.get("deepspeed"):
        return data
    ds_path = relative(str(training["deepspeed"]), path)
    fields, said = deepspeed_import(ds_path)
    for key, value in fields.items():
        if isinstance(value, dict):  # offload, parallel: the workload's own sub-keys win
            given = training.get(key) if isinstance(training.get(key), dict) else {}
            said += _overridden(ds_path.name, key, value, given)
            training[key] = {**value, **given}
        else:
            given = {key: training[key]} if key in training else {}
            said += _overridden(ds_path.name, key, {key: value}, given)
            training.setdefault(key, value)
    if notes is not None:
        notes.extend(said)
    return data


def _overridden(ds_name: str, section: str, ds_values: dict, given: dict) -> list[str]:
    """A note for each ds_config value the workload (or ``--set``) gives differently."""
    prefix = "" if section in ds_values else f"{section}."
    return [f"{ds_name}: training.{prefix}{k}={given[k]!r} from the workload overrides its {v!r}"
            for k, v in ds_values.items() if k in given and given[k] != v]


def apply_vllm(data: dict, path: Path) -> dict:
    serving = data.get("serving")
    if not isinstance(serving, dict) or not isinstance(serving.get("vllm"), dict):
        return data
    scheduler = serving.setdefault("scheduler", {}) or {}
    serving["scheduler"] = scheduler
    for key, value in serving["vllm"].items():
        where = f"serving.vllm.{key}"
        if key not in VLLM_KEYS:
            raise SpecError(f"unknown vLLM engine arg {key!r}{did_you_mean(key, VLLM_KEYS)}; memsim reads "
                            f"{', '.join(VLLM_KEYS)}", file=str(path), key=where)
        if key == "preemption_mode":
            scheduler.setdefault("preempt", value)
        elif key == "kv_cache_dtype":
            if str(value).startswith("fp8"):
                serving.setdefault("kv_bits", 8)
            elif value != "auto":
                raise SpecError(f"expected auto or fp8*, got {value!r}", file=str(path), key=where)
        elif key in VLLM_PARALLEL:
            par = serving.setdefault("parallel", {}) or {}
            serving["parallel"] = par
            if not isinstance(par, dict):
                raise SpecError("expected a mapping of tensor, pipeline", file=str(path),
                                key="serving.parallel")
            par.setdefault(VLLM_PARALLEL[key], value)
        elif key == "dtype":
            if value != "auto":
                if str(value) not in VLLM_DTYPES:
                    raise SpecError(f"expected one of auto, {', '.join(VLLM_DTYPES)}, got {value!r}",
                                    file=str(path), key=where)
                serving.setdefault("dtype", VLLM_DTYPES[str(value)])
        else:
            scheduler.setdefault(key, value)
    return data


# ds_config keys that change nothing memsim computes (learning rates, clipping, logging): named in
# one note so a user sees they were read. DeepSpeed's config reference: deepspeed.ai/docs/config-json.
NO_EFFECT = ("optimizer.params", "scheduler", "gradient_clipping", "steps_per_print", "wall_clock_breakdown",
             "dump_state", "zero_allow_untested_optimizer", "prescale_gradients", "gradient_predivide_factor",
             "fp16.loss_scale", "fp16.initial_scale_power", "fp16.loss_scale_window", "fp16.hysteresis",
             "fp16.min_loss_scale", "fp16.consecutive_hysteresis", "fp16.auto_cast", "tensorboard", "wandb",
             "csv_monitor", "comet", "flops_profiler", "memory_breakdown", "seed")
# what deepspeed_import acts on (read into a workload key, or refused)
ACTED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16.enabled",
         "fp16.enabled", "optimizer.type", "zero_optimization.stage",
         "zero_optimization.offload_optimizer.device", "zero_optimization.offload_param.device",
         "tensor_parallel.autotp_size", "pipeline.stages", "activation_checkpointing")
AUTO_FILLED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
               "zero_optimization.stage", "optimizer.type", "tensor_parallel.autotp_size", "pipeline.stages")


def _layout(ds: dict, ds_path: Path) -> dict:
    """Tensor and pipeline degrees → ``training.parallel`` (memsim accounts their per-rank bytes).

    DeepSpeed AutoTP training reads ``tensor_parallel.autotp_size`` (deepspeed.ai/tutorials/
    autotp-training); its pipeline engine reads ``pipeline.stages`` (default ``auto``: the stage
    count is then ``PipelineModule(num_stages=...)`` in the training script, not in the file)."""
    out: dict = {}
    for section, key, degree in (("tensor_parallel", "autotp_size", "tensor"),
                                 ("pipeline", "stages", "pipeline")):
        value = (ds.get(section) or {}).get(key) if isinstance(ds.get(section), dict) else None
        if not _set(value):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"expected a positive integer degree, got {value!r}", file=str(ds_path),
                            key=f"{section}.{key}")
        if value > 1:
            out[degree] = value
    return {"parallel": out} if out else {}


def ds_notes(ds: dict, ds_path: Path) -> list[str]:
    """What a ds_config holds that memsim does not act on, said rather than dropped."""
    name, notes = ds_path.name, []
    leaves = _leaves(ds)
    auto = [k for k in AUTO_FILLED if _get(ds, k) == "auto"]
    auto += [f"{k}.enabled" for k in ("bf16", "fp16") if _get(ds, f"{k}.enabled") == "auto"]
    if auto:
        notes.append(f"{name}: auto (filled by the HF Trainer at run time) leaves the workload's own value: "
                     f"{', '.join(auto)}")
    ckpt = ds.get("activation_checkpointing")
    if isinstance(ckpt, dict):
        notes.append(_checkpointing_note(name, ckpt))
    mapped = [f"{k}={_get(ds, k)} → training.parallel.{d}" for k, d in
              (("tensor_parallel.autotp_size", "tensor"), ("pipeline.stages", "pipeline"))
              if isinstance(_get(ds, k), int) and _get(ds, k) > 1]
    if mapped:
        notes.append(f"{name}: {', '.join(mapped)} (simulated as that layout: one rank per role, "
                     "with its collectives; docs/parallel.md)")
    if _get(ds, "pipeline.stages") == "auto":
        notes.append(f"{name}: pipeline.stages is auto (PipelineModule's num_stages in the script): "
                     "set training.parallel.pipeline")
    if _get(ds, "pipeline.activation_checkpoint_interval") not in (None, 0, "auto"):
        notes.append(f"{name}: pipeline.activation_checkpoint_interval is not forced: memsim's planner "
                     "chooses which layers to recompute")
    skip = (*ACTED, "pipeline.activation_checkpoint_interval", *NO_EFFECT)
    inert = sorted({_top(k, NO_EFFECT) for k in leaves if _under(k, NO_EFFECT)})
    if inert:
        notes.append(f"{name}: no effect on memory or time: {', '.join(inert)}")
    unmodelled = sorted(k for k in leaves if not _under(k, skip))
    if unmodelled:
        notes.append(f"{name}: read, not modelled: {', '.join(unmodelled)}")
    return notes


def _checkpointing_note(name: str, ckpt: dict) -> str:
    """DeepSpeed's section configures its checkpoint() calls; the recompute choice is memsim's plan."""
    off = {"partition_activations": "partition_activations (splits checkpoints over model-parallel ranks)",
           "contiguous_memory_optimization": "contiguous_memory_optimization",
           "number_checkpoints": "number_checkpoints", "synchronize_checkpoint_boundary":
           "synchronize_checkpoint_boundary", "profile": "profile"}
    given = [off.get(k, k) for k in sorted(ckpt)
             if k != "cpu_checkpointing" and ckpt[k] not in (False, None, 0)]
    text = (f"{name}: activation_checkpointing configures the layers the model wraps in "
            "deepspeed.checkpointing.checkpoint; memsim's planner picks per layer keep / offload / "
            "recompute (plan.layer_policy; --planner checkpoint-full recomputes every layer)")
    if ckpt.get("cpu_checkpointing"):
        text += "; cpu_checkpointing: the planner may offload activations to DRAM (not forced)"
    if given:
        text += f"; not modelled: {', '.join(given)}"
    return text


def _leaves(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        path = f"{prefix}{k}"
        out += _leaves(v, path + ".") if isinstance(v, dict) and v else [path]
    return out


def _get(d: dict, dotted: str):
    node = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _top(key: str, prefixes) -> str:
    return next((p for p in prefixes if key == p or key.startswith(p + ".")), key)
