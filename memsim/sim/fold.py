"""Folding identical layers: simulate a few layers, advance by whole periods exactly.

A step's layers are one template with one plan, so once the prefetch ring has filled, layer j + 1
runs the schedule of layer j shifted by one period: the same ops, copies and allocations, later
by the same time. Every figure of the step is then a polynomial in the layer count L: the step
time, each breakdown category, each copy engine's busy time and the simpy event count are affine
(a fixed warm-up and drain plus L periods); each tier's peak is affine (resident bytes grow by one
layer's share per layer, the transient peak repeats); a tier's time integral (``mean_bytes`` ×
step time) is quadratic (bytes that grow per layer, held over a time that grows per layer).

``simulate_folded`` runs the same step with ``SAMPLES`` = (a, a + s, a + 2s) layers. Two samples
give each affine figure; the third must agree with their line (``TOL`` relative, integers
exactly), or the schedule did not repeat and the caller simulates every layer. The three give the
quadratic exactly. Extrapolated to L they reproduce the unfolded run (tests/golden/, to 1e-9
relative; the issue measured 5e-11 from 4 and 8 layers of OPT-175B). Whatever cannot be
extrapolated makes the caller run the full step: an OOM (its time, op and holders are an event,
not a trend), a per-layer plan (``layer_policy``), per-layer concrete tensor names, a timeline.

``MEMSIM_FOLD=0`` in the environment (or ``simulate(..., fold=False)``) turns folding off.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from fractions import Fraction

from memsim.hardware.spec import System
from memsim.planners.plan import Plan
from memsim.sim.overheads import reserved_lines
from memsim.sim.result import Result
from memsim.workloads.trace import Trace

FIRST = 4  # the first sample's layers (its parity is n's: see STEP)
STEP = 2  # layers between samples: schedules repeat every layer or every two (a ring of depth + 2
# slots alternates its buffers), so samples STEP apart, each a whole number of STEPs from n
BUDGET = 0.6  # layers sampled at most, as a fraction of the step's (a failed fold costs that)
TOL = 1e-11  # the third sample's agreement with the line through the first two (relative)
log = logging.getLogger(__name__)
_CONCRETE_LAYER = re.compile(r"L\d+\.")


def enabled(fold: bool | None) -> bool:
    if fold is not None:
        return fold
    return os.environ.get("MEMSIM_FOLD", "1").strip().lower() not in ("0", "false", "no", "off")


def layers_of(trace: Trace) -> int | None:
    """The layer count every templated block repeats, when the trace can be folded; else None."""
    if trace.kind not in ("training", "inference"):
        return None
    templated = [b for b in trace.blocks if b.templated]
    if not templated:
        return None
    n = templated[0].repeat
    for b in templated:
        first = 0 if b.step == 1 else n - 1
        if b.repeat != n or b.step not in (1, -1) or b.first_layer != first:
            return None
    if int(trace.meta.get("layers") or n) != n:
        return None
    if any(_CONCRETE_LAYER.match(name) for name in trace.tensors):
        return None
    return n


def reduced(trace: Trace, k: int) -> Trace:
    """The same step with ``k`` layers (same templates, same per-layer tensors)."""
    blocks = [dataclasses.replace(b, repeat=k, first_layer=0 if b.step == 1 else k - 1)
              if b.templated else b for b in trace.blocks]
    return dataclasses.replace(trace, blocks=blocks, meta={**trace.meta, "layers": k})


@dataclasses.dataclass
class _Sample:
    """What one reduced run measured, before anything is divided by its step time."""

    makespan: float
    breakdown: dict[str, float]
    busy: dict[str, float]
    peak: dict[str, int]  # minus the non-tensor lines (they do not grow per layer)
    area: dict[str, float]  # ∫ used dt, minus the non-tensor lines
    events: int
    flops: float
    notes: list[str]
    dtype: str  # what MFU's peak is taken in
    capacity: dict[str, int]
    resident: dict[str, list[int]]  # sizes of the tensors resident from t=0, per tier
    layer_resident: dict[str, list[int]]  # those of layer 0 alone


def _sample(system: System, trace: Trace, plan: Plan, k: int) -> _Sample | None:
    from memsim.sim.engine import StepEngine
    from memsim.sim.program import build_program
    from memsim.sim.report import _dtype

    prog = build_program(trace, system, plan)
    engine = StepEngine(system, prog, plan.prefetch_depth, False, trace.meta)
    result = engine.run()
    if not result.feasible:
        return None
    clock = engine.clock
    makespan = clock.env.now
    held = {t: sum(lines.values()) for t, lines in clock.reserved.items()}
    resident: dict[str, list[int]] = {}
    layer0: dict[str, list[int]] = {}
    for name, info in prog.tensors.items():
        if info.birth is None:
            for tier, nbytes in info.home.items():
                resident.setdefault(tier, []).append(nbytes)
                if name.startswith("L0."):
                    layer0.setdefault(tier, []).append(nbytes)
    flops = sum(op.flops for op in prog.ops if not op.recompute)
    return _Sample(
        makespan=makespan,
        breakdown=dict(result.breakdown),
        busy={n: e.busy_s for n, e in sorted(clock.copier.engines.items())},
        peak={n: p.peak - held.get(n, 0) for n, p in sorted(clock.pools.items())},
        area={n: p.mean(makespan) * makespan - held.get(n, 0) * makespan
              for n, p in sorted(clock.pools.items())},
        events=clock.events, flops=flops, notes=result.notes,
        dtype=trace.meta.get("dtype") or _dtype(prog),
        capacity={n: p.capacity for n, p in sorted(clock.pools.items())},
        resident=resident, layer_resident=layer0)


def _line(ks: tuple[int, ...], ys: list[float], n: int, scale: float) -> float | None:
    """The affine figure at ``n`` through the first two samples; None if the third is off it."""
    (k1, k2, k3), (y1, y2, y3) = ks, ys
    if y1 == y2 == y3:
        return y1
    slope = (y2 - y1) / (k2 - k1)
    if abs(y2 + slope * (k3 - k2) - y3) > TOL * max(abs(y3), scale):
        return None
    return y2 + slope * (n - k2)


def _int_line(ks: tuple[int, ...], ys: list[int], n: int) -> int | None:
    """The same for integers: exact, or None."""
    (k1, k2, k3), (y1, y2, y3) = ks, ys
    slope = Fraction(y2 - y1, k2 - k1)
    if y2 + slope * (k3 - k2) != y3:
        return None
    value = y2 + slope * (n - k2)
    return int(value) if value.denominator == 1 else None


def _quadratic(ks: tuple[int, ...], ys: list[float], n: int) -> float:
    """The quadratic through the three samples, at ``n`` (Lagrange form)."""
    if ys[0] == ys[1] == ys[2]:
        return ys[0]
    out = 0.0
    for i, (ki, yi) in enumerate(zip(ks, ys, strict=True)):
        w = 1.0
        for j, kj in enumerate(ks):
            if j != i:
                w *= (n - kj) / (ki - kj)
        out += w * yi
    return out


def simulate_folded(system: System, trace: Trace, plan: Plan) -> Result | None:
    """The step's Result from reduced runs of ``FIRST``, ``FIRST`` + ``STEP``, ... layers (until
    three in a row lie on one line), or None where the step must be run whole."""
    n = layers_of(trace)
    if n is None or plan.layer_policy:
        return None
    k = FIRST + (n - FIRST) % STEP  # whole periods from every sample to n
    samples: list[tuple[int, _Sample]] = []
    spent = 0
    while spent + k <= BUDGET * n:  # past that, simulating every layer is as cheap
        s = _sample(system, reduced(trace, k), plan, k)
        if s is None:  # an OOM: its record is an event of the whole run
            return None
        samples.append((k, s))
        spent += k
        k += STEP
        if len(samples) >= 3:
            window = samples[-3:]
            result = _extrapolate(system, trace, tuple(k for k, _ in window),
                                  [s for _, s in window], n)
            if result is not None:
                log.debug("folded %s: %d layers from samples of %s", trace.name, n,
                          [k for k, _ in window])
                return result
    log.debug("not folded %s: %s", trace.name,
              "an OOM" if samples and samples[-1][1] is None else
              f"samples {[k for k, _ in samples]} not on one line")
    return None


def _extrapolate(system: System, trace: Trace, ks: tuple[int, ...], samples: list[_Sample],
                 n: int) -> Result | None:
    """The Result at ``n`` layers from three samples, or None if they are not on one line."""
    from memsim.sim.report import main_unit, peak_flops

    first = samples[0]
    if any(s.notes != first.notes or s.breakdown.keys() != first.breakdown.keys()
           or s.busy.keys() != first.busy.keys() for s in samples):
        return None
    makespan = _line(ks, [s.makespan for s in samples], n, 0.0)
    if makespan is None or makespan <= 0:
        return None
    scale = max(s.makespan for s in samples)  # times near zero are judged against the step's
    breakdown, busy, peak, area = {}, {}, {}, {}
    for key in first.breakdown:
        breakdown[key] = _line(ks, [s.breakdown[key] for s in samples], n, scale)
    for key in first.busy:
        busy[key] = _line(ks, [s.busy[key] for s in samples], n, scale)
    for key in first.peak:
        peak[key] = _int_line(ks, [s.peak[key] for s in samples], n)
    events = _int_line(ks, [s.events for s in samples], n)
    if any(v is None for d in (breakdown, busy, peak) for v in d.values()) or events is None:
        return None
    for key in first.area:
        area[key] = _quadratic(ks, [s.area[key] for s in samples], n)
    # the non-tensor lines of the whole step: its resident tensors are the samples' non-layer
    # ones and L copies of layer 0's (checked on every sample)
    resident = {}
    for tier in sorted({t for s in samples for t in s.resident}):
        per_layer = first.layer_resident.get(tier, [])
        base = sorted(first.resident.get(tier, []))
        others = _minus(base, per_layer * ks[0])
        if others is None:
            return None
        for k, s in zip(ks, samples, strict=True):
            if sorted(s.resident.get(tier, [])) != sorted(others + per_layer * k):
                return None
        resident[tier] = others + per_layer * n
    reserved = reserved_lines(system, trace.meta, resident)
    held = {t: sum(lines.values()) for t, lines in reserved.items()}
    peak = {t: v + held.get(t, 0) for t, v in peak.items()}
    if any(peak[t] > first.capacity[t] for t in peak):
        return None  # the whole run overflows: simulate it for the OOM's record
    meta = trace.meta
    tokens = int(meta.get("tokens_per_step") or 0)
    flops = float(meta.get("flops_per_step")
                  or _line(ks, [s.flops for s in samples], n, 0.0) or 0.0)
    unit_peak = peak_flops(main_unit(system), first.dtype)
    return Result(
        feasible=True,
        step_time_s=makespan,
        tokens_per_s=tokens / makespan,
        tokens_per_step=tokens,
        mfu=flops / (makespan * unit_peak) if unit_peak > 0 else 0.0,
        breakdown=breakdown,
        oom=None,
        events=events,
        notes=list(first.notes),
        peak_bytes=peak,
        mean_bytes={t: (area[t] + held.get(t, 0) * makespan) / makespan for t in area},
        capacity_bytes=dict(first.capacity),
        reserved_bytes={t: dict(lines) for t, lines in sorted(reserved.items())},
        link_busy={e: b / makespan for e, b in busy.items()},
    )


def _minus(items: list[int], drop: list[int]) -> list[int] | None:
    """``items`` without one occurrence of each of ``drop`` (multiset difference); None when
    ``drop`` is not part of ``items``."""
    left = list(items)
    for x in drop:
        if x not in left:
            return None
        left.remove(x)
    return sorted(left)
