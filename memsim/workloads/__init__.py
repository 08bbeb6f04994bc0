"""Workloads: HF model configs plus a job (training, inference, serving) → a Trace.

    workload = load_workload("llama2-7b-train", ["training.zero_stage=3"])
    trace = build_trace(workload)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from memsim.errors import SpecError
from memsim.specio import apply_overrides, catalog_names, load_mapping, resolve, validate_overridden
from memsim.workloads.imports import apply_deepspeed, apply_vllm, relative
from memsim.workloads.models import Architecture, list_models, load_model
from memsim.workloads.quantization import quantized
from memsim.workloads.spec import Workload
from memsim.workloads.stages import stage
from memsim.workloads.trace import Trace

__all__ = ["Architecture", "Trace", "Workload", "build_trace", "list_models", "list_workloads",
           "load_model", "load_trace", "load_workload", "workload_architecture"]


def load_workload(name_or_path: str | Path | Workload, overrides: Iterable[str] = ()) -> Workload:
    """A Workload from a catalog name or a YAML path, with ``--set a.b=v`` overrides (those for
    ``hardware.`` are ignored: they belong to the System). DeepSpeed/vLLM files named inside fill
    keys left unset; the model is resolved here so a bad name fails at load time."""
    if isinstance(name_or_path, Workload):
        return name_or_path
    mine = [o for o in overrides if not o.startswith("hardware.")]
    path = resolve(name_or_path, "workloads")
    data = apply_overrides(load_mapping(path, "workloads"), mine, str(path))
    notes: list[str] = []
    data = apply_vllm(apply_deepspeed(data, path, notes), path)
    workload = validate_overridden(Workload, data, str(path), mine)
    workload._source, workload._notes = str(path), notes
    arch = workload_architecture(workload)
    if workload.training is not None and workload.training.lora is not None:
        from memsim.workloads.training import lora_targets

        lora_targets(arch, workload.training, str(path))
    return workload


def workload_architecture(workload: Workload) -> Architecture:
    """The workload's model; a relative config path resolves next to the workload file."""
    model = workload.model
    source = Path(workload._source) if workload._source else None
    if source is not None and model.endswith(".json"):
        model = str(relative(model, source))
    arch = load_model(model, file=str(source) if source else None, key="model")
    if workload.weights is not None:
        arch = quantized(arch, workload.weights.model_dump(), file=str(source) if source else None)
    return arch


def build_trace(workload: Workload) -> Trace:
    """The Trace of a workload (see training.py, inference.py, serving.py for the conventions)."""
    from memsim.kinds import workload_kinds

    arch = workload_architecture(workload)
    trace = workload_kinds()[workload.kind].build()(workload, arch)  # workloads/kinds/workloads.yaml
    if workload._notes:  # shown by workload show, plan and simulate
        trace.meta["workload_notes"] = [*workload._notes, *trace.meta.get("workload_notes", [])]
    return trace


def load_trace(name_or_path: str | Path | Trace, overrides: Iterable[str] = ()) -> Trace:
    """The Trace every command runs on: a workload (catalog name or YAML, built with its
    ``--set`` overrides) or a saved Trace JSON, e.g. a real module from ``memsim trace`` (a
    training graph is cut into stages there: ``memsim/workloads/stages.py``)."""
    if isinstance(name_or_path, Trace):
        return name_or_path
    if str(name_or_path).endswith(".json"):
        path = resolve(name_or_path, "workloads")
        mine = [o for o in overrides if not o.startswith("hardware.")]
        if mine:
            raise SpecError(f"--set {mine[0]} cannot change a saved trace; trace the module again "
                            "with other inputs instead", file=str(path))
        try:
            trace = Trace.load(path)
        except (ValueError, KeyError, TypeError) as exc:
            raise SpecError(f"not a memsim trace: {exc}", file=str(path)) from None
        return stage(trace)  # a traced training graph gets stages, the layers plans act on
    return build_trace(load_workload(name_or_path, overrides))


def list_workloads() -> list[Workload]:
    """Every catalog workload, sorted by name (a broken file is a SpecError naming it)."""
    return [load_workload(name) for name in catalog_names("workloads")]


