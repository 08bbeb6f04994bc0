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
    try:
        ds = json.loads(ds_path.read_text())
    except FileNotFoundError:
        raise SpecError("DeepSpeed config not found", file=str(ds_path)) from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"invalid JSON: {exc.msg} (line {exc.lineno})", file=str(ds_path)) from None
    if not isinstance(ds, dict):
        raise SpecError("expected a JSON object", file=str(ds_path))
    return deepspeed_job(ds, ds_path)


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


def apply_deepspeed(data: dict, path: Path) -> dict:
    training = data.get("training")
    if not isinstance(training, dict) or not training.get("deepspeed"):
        return data
    fields = deepspeed_fields(relative(str(training["deepspeed"]), path))
    for key, value in fields.items():
        if key == "offload":
            given = training.get("offload") if isinstance(training.get("offload"), dict) else {}
            training["offload"] = {**value, **given}
        else:
            training.setdefault(key, value)
    return data


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
