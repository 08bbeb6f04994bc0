"""Chen et al.'s sublinear-memory checkpointing on a real traced network (reproduction kind
``checkpoint_module``).

The network is a torch module traced on the meta device (``memsim/workloads/torch_trace.py``),
so its feature maps, in-place ops and backward temporaries are the ones PyTorch runs. Chen et
al.'s Alg. 1 cuts the network into k segments at unit boundaries, keeps only each segment's
input and re-runs a segment's forward just before its backward, so the peak is k inputs plus one
segment's activations, smallest near k = √n (their eq. 1). In memsim that is the trace staged
into k stages (``memsim/workloads/stages.py``, equal op count per stage, as Chen et al. divide
the segments equally) with every stage recomputing (``checkpoint-full``): the same mechanism the
simulator runs for any checkpointed layer, at segment granularity.

The paper reports the *feature map* cost (sect. 5.1: "the memory cost of parameters and temporal
memory ... are not part of the memory cost report"), so memsim's memory figures are the simulated
peak of the same schedule with parameters and their gradients at 0 bytes (``feature_maps_only``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from memsim.errors import Infeasible, SpecError
from memsim.planners import load_preset, run_preset
from memsim.sim import simulate
from memsim.studies.reproduce_cases import SIM, Say, _diag, _need, _phase_split, gb, system_of
from memsim.studies.reproduce_spec import CaseResult, CaseSpec, Figure
from memsim.units import fmt_bytes
from memsim.workloads.stages import stage, unit_count
from memsim.workloads.torch_trace import trace_factory
from memsim.workloads.trace import Trace


def module_trace(setup: dict, path: Path) -> Trace:
    """The case's ``setup.module`` ({factory, inputs, dtype, args}) traced for training."""
    module = _need(setup, "module", path)
    for key in ("factory", "inputs"):
        if key not in module:
            raise SpecError("required key is missing", file=str(path), key=f"setup.module.{key}")
    return trace_factory(module["factory"], list(module["inputs"]), dtype=module.get("dtype"),
                         train=True, args=[f"{k}={v}" for k, v in (module.get("args") or {}).items()])


def segment_count(setup: dict, units: int, path: Path) -> int:
    """``setup.segments``: a count, or ``sqrt`` for ⌈√units⌉ (Chen et al.'s k = √n)."""
    given = setup.get("segments", "sqrt")
    if given == "sqrt":
        return max(1, math.ceil(math.sqrt(units)))
    if isinstance(given, int) and not isinstance(given, bool) and given >= 1:
        return given
    raise SpecError(f"expected sqrt or a positive count, got {given!r}", file=str(path),
                    key="setup.segments")


def feature_maps_only(trace: Trace) -> Trace:
    """The trace with its parameters and their gradients at 0 bytes: the peak of what is left is
    the feature-map cost MXNet's static plan reports (its weights and weight gradients are
    allocated outside that plan). Ops keep their bytes moved, so only the memory figure changes."""
    tensors = {n: dataclasses.replace(t, bytes=0) if t.cls in ("weight", "grad") else t
               for n, t in trace.tensors.items()}
    return Trace(trace.name, trace.kind, tensors, trace.blocks, trace.meta, trace.requests, trace.version)


def checkpoint_module(spec: CaseSpec, path: Path, say: Say) -> CaseResult:
    s = spec.setup
    system = system_of(s, path)
    say("tracing the module")
    flat = module_trace(s, path)
    units = unit_count(flat)
    k = segment_count(s, units, path)
    traces = {"baseline": stage(flat), "planner": stage(flat, max_stages=k)}
    out, plans = {}, {}
    for role in ("baseline", "planner"):
        name = _need(s, role, path)
        say(name)
        plans[role] = run_preset(load_preset(name), system, traces[role])
        out[role] = simulate(system, traces[role], plans[role])
        if not out[role].feasible:
            raise Infeasible(_diag(out[role], f"{spec.name} {name}"))
    fast = system.fast_tier
    pdb = flat.meta["per_device_bytes"]
    weights = pdb["weights"]
    none_, seg = out["baseline"], out["planner"]
    say("feature maps alone")
    maps_none, maps_seg = (simulate(system, feature_maps_only(traces[r]), plans[r]).peak_bytes[fast]
                           for r in ("baseline", "planner"))
    pub = spec.published
    figures = [
        Figure("peak_none", "feature maps at the peak, no checkpointing", "GB", pub.get("peak_none_gb"),
               gb(maps_none), SIM),
        Figure("peak_sqrt", f"feature maps at the peak, {k} recomputed segments", "GB",
               pub.get("peak_sqrt_gb"), gb(maps_seg), SIM),
        Figure("reduction", "memory reduction (no checkpointing / segments)", "x",
               pub["peak_none_gb"] / pub["peak_sqrt_gb"] if "peak_sqrt_gb" in pub else None,
               maps_none / maps_seg, SIM),
        Figure("extra_time", "extra step time of √n checkpointing", "%", pub.get("extra_time"),
               seg.step_time_s / none_.step_time_s - 1, SIM,
               f"recompute {seg.breakdown.get('recompute', 0.0):.3g} s of {seg.step_time_s:.3g} s; "
               + _phase_split(system, traces["baseline"], plans["baseline"])),
    ]
    module = s["module"]
    setup = [f"hardware `{s['hardware']}`; module `{module['factory']}` "
             f"{' '.join(f'{a}={b}' for a, b in (module.get('args') or {}).items())}, input "
             f"{' '.join(module['inputs'])} {module.get('dtype', '')}: {flat.meta['params']:,} "
             f"parameters, {units} units, {flat.num_ops:,} traced ops",
             f"weights {gb(weights):.3g} GB and their gradients {gb(pdb['gradients']):.3g} GB, left "
             f"out of the memory figures (whole peak {gb(none_.peak_bytes[fast]):.3g} GB resident, "
             f"{gb(seg.peak_bytes[fast]):.3g} GB in segments); traced peak of activations and "
             f"temporaries {fmt_bytes(flat.meta['peak_activation_bytes'])}",
             f"planners `{s['baseline']}` on {traces['baseline'].meta['layers']} stages vs "
             f"`{s['planner']}` on {k} segments of about {units / k:.0f} units (⌈√{units}⌉)"]
    return CaseResult(spec.name, spec.title, spec.source, setup, figures)
