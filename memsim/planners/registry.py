"""Planner name → callable, and the named presets in ``planners/*.yaml`` users pick with --planner.

A preset is a registry ``kind`` plus its ``options``; ``baseline: true`` presets are simulated
beside every plan so users see the MIP against what they know.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import Field

from memsim.contracts.plan import Plan
from memsim.contracts.spec import Spec
from memsim.errors import SpecError, did_you_mean
from memsim.hardware.spec import System
from memsim.kinds import workload_kinds
from memsim.planners import baselines, mip
from memsim.specio import catalog_names, load_spec
from memsim.workloads.trace import Trace

PlannerFn = Callable[[System, Trace, dict, float], Plan]

REGISTRY: dict[str, PlannerFn] = {
    "mip": mip.mip,
    "flexgen": mip.flexgen,
    "resident": baselines.resident,
    "checkpoint-full": baselines.checkpoint_full,
    "checkpoint-sqrt": baselines.checkpoint_sqrt,
    "zero-offload": baselines.zero_offload,
    "zero-infinity": baselines.zero_infinity,
    "vllm-swap": baselines.vllm_swap,
    "accelerate": baselines.accelerate,
    "zero-inference": baselines.zero_inference,
    "zero3-offload": baselines.zero3_offload,
    "fsdp-offload": baselines.fsdp_offload,
    "vllm-cpu-offload": baselines.vllm_cpu_offload,
    "fixed": baselines.fixed,
    "layouts": lambda system, trace, options, time_limit: __import__(
        "memsim.planners.layouts", fromlist=["layouts_planner"]).layouts_planner(
            system, trace, options, time_limit),
}


class Preset(Spec):
    """One named planner configuration (a file in ``planners/``)."""

    name: str = Field(description="the name users pass to --planner")
    description: str = Field("", description="one line for listings")
    kind: str = Field(description=f"registry entry: one of {', '.join(REGISTRY)}")
    baseline: bool = Field(False, description="simulate it beside every plan as a baseline")
    applies_to: list[str] = Field(
        default_factory=lambda: list(workload_kinds()),
        description="workload kinds it addresses; others skip it",
    )
    source: str | None = Field(None, description="the paper or tool it reproduces")
    options: dict = Field(default_factory=dict, description="options passed to the planner")


def load_preset(name_or_path: str | Path) -> Preset:
    """A preset by catalog name or path; a bare registry kind works too (``--planner mip``)."""
    try:
        preset = load_spec(Preset, name_or_path, "planners")
    except SpecError:
        if str(name_or_path) in REGISTRY:
            return Preset(name=str(name_or_path), kind=str(name_or_path))
        if not str(name_or_path).endswith((".yaml", ".yml", ".json")):
            names = sorted(set(catalog_names("planners")) | set(REGISTRY))
            raise SpecError(
                f"no planner named {str(name_or_path)!r}{did_you_mean(str(name_or_path), names)}; "
                f"known: {', '.join(names)}",
                key="--planner",
            ) from None
        raise
    if preset.kind not in REGISTRY:
        raise SpecError(
            f"unknown planner kind {preset.kind!r}{did_you_mean(preset.kind, REGISTRY)}",
            file=str(name_or_path),
            key="kind",
        )
    return preset


def list_presets() -> list[Preset]:
    return [load_preset(name) for name in catalog_names("planners")]


def run_preset(preset: Preset, system: System, trace: Trace, time_limit: float = 10.0) -> Plan:
    """The preset's plan; raises ``mip.NotApplicable`` for a workload kind it does not address."""
    if trace.kind not in preset.applies_to:
        raise mip.NotApplicable(f"{preset.name} applies to {', '.join(preset.applies_to)} workloads")
    options = dict(preset.options)
    if preset.kind == "fixed":
        options = {**options, "name": preset.name, "applies_to": preset.applies_to}
    plan = REGISTRY[preset.kind](system, trace, options, time_limit)
    plan.planner.name = preset.name
    return plan
