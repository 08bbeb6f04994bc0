"""Reproductions of the frameworks people run, simulated with their own schedules (the named
baseline presets in ``planners/``), against the framework's published throughput.

A case lists ``runs``: a workload (catalog name or inline, paths relative to the case file),
``overrides``, the preset and its ``options`` (e.g. Accelerate's ``max_memory``) and the
published figure: ``published_tokens_per_s``, or for training ``published_tflops`` (TFLOP/s per
GPU as DeepSpeed and Megatron count it: the model's FLOPs, the recomputed forward of a
checkpointed layer included). ``published_fits: true`` adds a row saying whether the job fits
(a tutorial's job that runs). An inference run that streams weights synchronously also
simulates the same split with one layer of pinned prefetch, so the row shows what the
framework's schedule costs against an overlapped one.
"""

from __future__ import annotations

import copy
from pathlib import Path

from memsim.hardware.spec import System
from memsim.planners import load_preset, run_preset
from memsim.planners.mip import NotApplicable
from memsim.sim import simulate
from memsim.studies.reproduce_cases import (
    SIM,
    Say,
    _busiest,
    _join,
    _need,
    _plan_text,
    oom_text,
    system_of,
    workload_of,
)
from memsim.studies.reproduce_spec import CaseResult, CaseSpec, Figure
from memsim.workloads import build_trace


def framework(spec: CaseSpec, path: Path, say: Say) -> CaseResult:
    """Each run: the framework's preset plan simulated, beside its published tokens/s."""
    hardware = _need(spec.setup, "hardware", path)
    system = system_of(spec.setup, path)
    setup = [f"hardware `{hardware}` ({system.description})"]
    out = CaseResult(spec.name, spec.title, spec.source, setup, [])
    for i, run in enumerate(spec.runs or []):
        say(run["label"])
        _run(system, hardware, run, f"run{i}", path, out)
    return out


def _run(system: System, hardware: str, run: dict, key: str, path: Path, out: CaseResult) -> None:
    overrides = list(run.get("overrides") or [])
    trace = build_trace(workload_of(run["workload"], path, overrides))
    preset = load_preset(run.get("planner", "accelerate"))
    options = {**preset.options, **copy.deepcopy(run.get("options") or {})}
    preset = preset.model_copy(update={"options": options})
    tflops = "published_tflops" in run
    unit = "TFLOP/s" if tflops else "tokens/s"
    label, note = f"{run['label']}: {unit}", run.get("published_note", "")
    published = run.get("published_tflops" if tflops else "published_tokens_per_s")
    # (a number, or [low, high] for a rounded one)
    if isinstance(published, list):
        published = (float(published[0]), float(published[1]))
    elif published is not None:
        published = float(published)
    try:
        plan = run_preset(preset, system, trace)
    except NotApplicable as exc:
        out.figures.append(Figure(key, label, unit, published, None, SIM, f"{exc}. {note}"))
        return
    result = simulate(system, trace, plan)
    if run.get("published_fits") is not None:
        out.figures.append(Figure(f"{key}-fits", f"{run['label']}: fits (1 = yes)", "x",
                                  1.0 if run["published_fits"] else 0.0,
                                  1.0 if result.feasible else 0.0, SIM,
                                  _peak_text(system, result)))
    out.setup.append(f"{run['label']}: workload `{trace.name}`{_sets(overrides)}, planner "
                     f"`{preset.name}` ({_options(preset.options)}) chose {_plan_text(plan)}, "
                     f"prefetch depth {plan.prefetch_depth}, activations {plan.activations}, "
                     f"{'pinned' if plan.pinned else 'pageable'} host memory")
    if not run.get("options"):  # preset options have no flag: the command would mislead
        out.commands.append(f"memsim simulate --hardware {hardware} --workload {_workload_arg(run)} "
                            f"--planner {preset.name}{''.join(f' --set {o}' for o in overrides)}")
    if not result.feasible:
        out.figures.append(Figure(key, label, unit, published, None, SIM,
                                  f"{oom_text(result)}. {note}"))
        return
    value = _tflops(trace, plan, result) if tflops else result.tokens_per_s
    out.figures.append(Figure(key, label, unit, published, value, SIM,
                              _join(note, _busiest(result))))
    if plan.prefetch_depth == 0 and plan.placement:
        overlapped = copy.deepcopy(plan)
        overlapped.prefetch_depth, overlapped.pinned = 1, True
        other = simulate(system, trace, overlapped)
        if other.feasible:
            out.figures.append(Figure(f"{key}-prefetch", f"{run['label']}: same split, pinned prefetch "
                                      "of 1 layer / the framework's schedule", "x", None,
                                      other.tokens_per_s / result.tokens_per_s, SIM,
                                      "what overlapping the loads with compute would give"))


def _tflops(trace, plan, result) -> float:
    """TFLOP/s per GPU as DeepSpeed and Megatron report it: the step's model FLOPs plus one more
    forward (a third of forward + backward) for each recomputed layer, over the step time."""
    layers = int(trace.meta.get("layers") or 1)
    recomputed = plan.policy_counts(layers)["recompute"] / layers
    flops = float(trace.meta["flops_per_step"]) * (1 + recomputed / 3)
    return flops / result.step_time_s / 1e12


def _peak_text(system: System, result) -> str:
    gpu = system.fast_tier
    return (f"simulated peak on {gpu}: {result.peak_bytes[gpu] / 2**30:.1f} of "
            f"{result.capacity_bytes[gpu] / 2**30:.1f} GiB")


def _sets(overrides: list[str]) -> str:
    return f" with {', '.join(f'`{o}`' for o in overrides)}" if overrides else ""


def _options(options: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(options.items())) or "defaults"


def _workload_arg(run: dict) -> str:
    given = run["workload"]
    return given if isinstance(given, str) else f"<{given.get('name', 'inline workload')}>"
