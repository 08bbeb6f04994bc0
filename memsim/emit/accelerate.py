"""HF Accelerate big-model inference, both ways: an explicit ``device_map`` (module name → ``0``,
``"cpu"`` or ``"disk"``) with the ``max_memory`` that asks ``device_map="auto"`` for about the
same split.

Accelerate (huggingface/accelerate ``utils/modeling.py`` ``infer_auto_device_map``, ``hooks.py``
``AlignDevicesHook``; docs ``usage_guides/big_modeling``) places whole modules: each offloaded
decoder layer is copied to the GPU right before its forward from pageable host memory (or read
from ``offload_folder`` for ``"disk"``) and dropped after, with no prefetch. memsim's placement
splits every layer alike, so a device_map is read as the byte fraction of the weights on each
device (the bytes streamed per step are the same either way), and a plan's fractions are
emitted as whole layers: the GPU keeps as many whole layers as its share holds.

What Accelerate cannot say, emitted as the nearest config with a note: a KV cache or activations
off the GPU, prefetch, pinned host memory, FlexGen's batch blocks and CPU attention.
"""

from __future__ import annotations

import json
import math
import re

from memsim.contracts.plan import Plan
from memsim.emit.common import GIB, collapse, need, parse_mapping, split_of, weight_bytes
from memsim.errors import SpecError, did_you_mean
from memsim.hardware.spec import System
from memsim.workloads.trace import Trace

# HF module names per family: (embedding modules, layer list, final norm and head modules)
LLAMA = (("model.embed_tokens",), "model.layers", ("model.norm", "lm_head"))
MODULES = {
    "opt": (("model.decoder.embed_tokens", "model.decoder.embed_positions"), "model.decoder.layers",
            ("model.decoder.final_layer_norm", "lm_head")),
    "gpt2": (("transformer.wte", "transformer.wpe"), "transformer.h", ("transformer.ln_f", "lm_head")),
    "falcon": (("transformer.word_embeddings",), "transformer.h", ("transformer.ln_f", "lm_head")),
    "gpt_neox": (("gpt_neox.embed_in",), "gpt_neox.layers", ("gpt_neox.final_layer_norm", "embed_out")),
    "mamba": (("backbone.embeddings",), "backbone.layers", ("backbone.norm_f", "lm_head")),
    "jamba": (("model.embed_tokens",), "model.layers", ("model.final_layernorm", "lm_head")),
}
USAGE = ("cfg = json.load(open('{path}')); AutoModelForCausalLM.from_pretrained(model, "
         "device_map=cfg['device_map'], offload_folder=cfg.get('offload_folder'))")


def modules(trace: Trace) -> tuple[tuple[str, ...], str, tuple[str, ...]]:
    from memsim.workloads.models import load_model

    try:
        family = load_model(str(trace.meta.get("model"))).family
    except SpecError:
        family = "llama"
    return MODULES.get(family, LLAMA)


def emit(system: System, trace: Trace, plan: Plan) -> tuple[str, list[str]]:
    need(trace, ("inference",), "Accelerate's device_map", "it offloads weights for generation: use "
         "--emit deepspeed for training, --emit vllm for serving")
    notes: list[str] = []
    fast = system.fast_tier
    share = collapse(system, plan.home("weight", fast), "weight", notes, "Accelerate")
    sizes = weight_bytes(trace)
    n, layer = sizes["layers"], max(1, sizes["layer"])
    ends = sizes["embed"] + sizes["head"]
    gpu_bytes = share["gpu"] * sizes["total"]
    ends_on_gpu = share["gpu"] > 0 and gpu_bytes + 1 >= ends
    room = gpu_bytes - (ends if ends_on_gpu else 0)
    on_gpu = min(n, math.floor(room / layer + 1e-9)) if share["gpu"] else 0
    on_disk = min(n - on_gpu, math.ceil(share["disk"] * sizes["total"] / layer - 1e-9)) if share["disk"] \
        else 0
    devices = [0] * on_gpu + ["cpu"] * (n - on_gpu - on_disk) + ["disk"] * on_disk
    first, layers, last = modules(trace)
    end_device = 0 if ends_on_gpu else ("cpu" if share["cpu"] >= share["disk"] else "disk")
    device_map = {name: end_device for name in first}
    device_map.update({f"{layers}.{i}": d for i, d in enumerate(devices)})
    device_map.update({name: end_device for name in last})
    used = {d: sum(sizes["layer"] for x in devices if x == d) + (ends if end_device == d else 0)
            for d in (0, "cpu", "disk")}
    if any(abs(used[d] / sizes["total"] - share[k]) > 1e-9 for d, k in ((0, "gpu"), ("disk", "disk"))):
        _whole_layer_note(share, on_gpu, on_disk, n, notes)
    _unexpressed(system, plan, notes)
    doc: dict = {"device_map": device_map,
                 "max_memory": {str(d): f"{math.ceil(b / GIB * 100) / 100:g}GiB" for d, b in used.items()
                                if b and d != "disk"}}
    if on_disk or end_device == "disk":
        doc["offload_folder"] = "offload"
    return json.dumps(doc, indent=2) + "\n", notes


def _whole_layer_note(share: dict, on_gpu: int, on_disk: int, n: int, notes: list[str]) -> None:
    notes.append(f"Accelerate places whole layers: {on_gpu} of {n} on the GPU, {n - on_gpu - on_disk} in "
                     f"host memory, {on_disk} on disk (the plan's shares: gpu {share['gpu']:.1%}, "
                     f"cpu {share['cpu']:.1%}, disk {share['disk']:.1%})")


def _unexpressed(system: System, plan: Plan, notes: list[str]) -> None:
    fast = system.fast_tier
    for cls in ("kv", "activation"):
        if set(plan.home(cls, fast)) != {fast}:
            notes.append(f"Accelerate's device_map places weights only: the {cls} bytes stay on the GPU")
    if set(plan.home("weight", fast)) != {fast}:
        if plan.prefetch_depth:
            notes.append("Accelerate loads each offloaded layer when it runs (no prefetch): emitted "
                         "with prefetch depth 0")
        if plan.pinned:
            notes.append("Accelerate copies offloaded weights from pageable host memory")
    if (plan.num_gpu_batches or 1) > 1 or plan.cpu_attention:
        notes.append("FlexGen's batch blocks and CPU attention have no Accelerate equivalent")


# -- reading ------------------------------------------------------------------------------------


def read(text: str, system: System, trace: Trace, file: str) -> Plan:
    """The Plan an explicit device_map runs, or Accelerate's own placement for ``max_memory``."""
    need(trace, ("inference",), "Accelerate's device_map", "it offloads weights for generation")
    doc = parse_mapping(text, file)
    device_map = doc.get("device_map", "auto")
    if isinstance(device_map, str):
        return _auto(doc, system, trace, file, device_map)
    if not isinstance(device_map, dict) or not device_map:
        raise SpecError("expected a mapping of module names to devices", file=file, key="device_map")
    sizes = weight_bytes(trace)
    share = {"gpu": 0.0, "cpu": 0.0, "disk": 0.0}
    for name, nbytes in _module_bytes(device_map, trace, sizes, file).items():
        share[_device(device_map[name], file, f"device_map.{name}")] += nbytes / sizes["total"]
    total = sum(share.values())
    if abs(total - 1) > 1e-6:
        raise SpecError(f"the device_map places {total:.1%} of the model's weights; give every layer a "
                        "device", file=file, key="device_map")
    plan = Plan(prefetch_depth=0, pinned=False)
    split = split_of(system, {d: f / total for d, f in share.items()}, file, "device_map")
    if split:
        plan.placement["weight"] = split
    return plan


def _module_bytes(device_map: dict, trace: Trace, sizes: dict, file: str) -> dict[str, int]:
    """Weight bytes of each device_map entry, at layer granularity (a submodule key is refused)."""
    first, layers, last = modules(trace)
    pattern = re.compile(rf"^{re.escape(layers)}\.(\d+)$")
    out: dict[str, int] = {}
    for name in device_map:
        key = str(name)
        match = pattern.match(key)
        if key == "":
            out[name] = sizes["total"]
        elif match and int(match.group(1)) < sizes["layers"]:
            out[name] = sizes["layer"]
        elif key in first:
            out[name] = sizes["embed"] if key == first[0] else 0
        elif key in last:
            out[name] = sizes["head"] if key == last[-1] else 0
        elif key.startswith(f"{layers}."):
            raise SpecError(f"memsim reads a device_map per layer ({layers}.N, N < {sizes['layers']}); "
                            f"got {key!r}", file=file, key=f"device_map.{key}")
        else:
            known = [*first, *last, f"{layers}.0"]
            raise SpecError(f"unknown module {key!r}{did_you_mean(key, known)}; this model's modules are "
                            f"{', '.join(first)}, {layers}.N, {', '.join(last)}", file=file,
                            key=f"device_map.{key}")
    return out


def _device(value, file: str, key: str) -> str:
    text = str(value).lower()
    if text in ("0", "cuda", "cuda:0"):
        return "gpu"
    if text in ("cpu", "disk"):
        return text
    raise SpecError(f"expected 0 (the GPU), cpu or disk, got {value!r} (memsim plans one GPU)",
                    file=file, key=key)


def _auto(doc: dict, system: System, trace: Trace, file: str, mode: str) -> Plan:
    """``device_map="auto"`` with ``max_memory``: Accelerate's own fill order (the baseline)."""
    from memsim.planners.baselines import accelerate

    if mode not in ("auto", "balanced", "sequential"):
        raise SpecError(f"expected a mapping or auto, got {mode!r}", file=file, key="device_map")
    limits = doc.get("max_memory") or {}
    if not isinstance(limits, dict):
        raise SpecError("expected a mapping such as {0: 20GiB, cpu: 64GiB}", file=file, key="max_memory")
    options: dict = {}
    for key, value in limits.items():
        device = _device(key, file, f"max_memory.{key}")
        options.setdefault("max_memory", {})["gpu" if device == "gpu" else device] = value
    from memsim.planners.mip import NotApplicable

    try:
        plan = accelerate(system, trace, options)
    except NotApplicable as exc:
        raise SpecError(str(exc), file=file, key="max_memory") from None
    except ValueError as exc:
        raise SpecError(str(exc), file=file, key="max_memory") from None
    plan.notes = []
    return plan
