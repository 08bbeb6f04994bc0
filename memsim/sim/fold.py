"""Folding identical layers and decode iterations: simulate a few, advance by whole periods.

A step's layers are one template with one plan, so once the prefetch ring has filled, layer j + 1
runs the schedule of layer j shifted by one period: the same ops, copies and allocations, later
by the same time. Every figure of the step is then a polynomial in the layer count L: the step
time, each breakdown category, each copy engine's busy time and the simpy event count are affine
(a fixed warm-up and drain plus L periods); each tier's peak is affine (resident bytes grow by one
layer's share per layer, the transient peak repeats); a tier's time integral (``mean_bytes`` ×
step time) is quadratic (bytes that grow per layer, held over a time that grows per layer). Decode
iterations repeat the same way when no decode op moves KV between tiers (``iterations_repeat``);
when one does, each iteration costs affinely more than the last (``_over_context``).

``simulate_folded`` samples the step at FIRST, FIRST + STEP, ... layers (each a whole number of
STEPs from L: some schedules repeat every other layer), and each sample at 2, 3, ... decode
iterations, until three samples in a row lie on one line: the third must agree with the line
through the first two (``TOL`` of the step time; integers exactly), else the schedule has not
settled and the next sample is tried, up to ``BUDGET`` of the whole. The quadratics go through
the three. Extrapolated to L they reproduce the unfolded run (tests/golden/: 1e-9 relative).
An overflow changes no figure (a pool never refuses an allocation), so an overflowing step folds
too: its first OOM record (time, op, holders) is an event, not a trend, so it is replayed: at the
start (the resident state) by ``_start_oom``, later by the whole program simulated only until
that overflow (``_first_oom``). Whatever cannot be extrapolated is simulated whole: a per-layer plan
(``layer_policy``), per-layer concrete tensor names, a timeline (the caller's).

``MEMSIM_FOLD=0`` in the environment (or ``simulate(..., fold=False)``) turns folding off;
``MEMSIM_FOLD_CONTEXT=0`` only the fold over a growing context.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from fractions import Fraction

import simpy

from memsim.contracts.names import is_concrete_layer_name, layer_name
from memsim.contracts.plan import Plan
from memsim.contracts.result import OOM, Result
from memsim.hardware.overheads import reserved_lines
from memsim.hardware.spec import System
from memsim.sim.memory import Pool
from memsim.workloads.trace import Trace

FIRST = 4  # the first sample's layers (its parity is n's: see STEP)
STEP = 2  # layers between samples: schedules repeat every layer or every two (a ring of depth + 2
# slots alternates its buffers), so samples STEP apart, each a whole number of STEPs from n
FIRST_ITERATIONS = 2  # the first decode iteration follows the prefill; samples start after it
CONTEXT_BUDGET = 0.7  # the windows' iterations (a prefill counted as one) at most, as a fraction
# of the run's: FlexGen's 32-token generations fold (6 windows of 7 iterations for 32)
WINDOW = (FIRST_ITERATIONS, FIRST_ITERATIONS + 1)  # decode windows over a growing context: the
# cost of the iteration after two that settle the schedule is the difference of the two lengths
PREFIX_ITERATIONS = 4  # the first decode prefix searched for a mid-step OOM (_first_oom)
BUDGET = 0.6  # layers sampled at most, as a fraction of the step's (a failed fold costs that)
TOL = 1e-11  # the third sample's agreement with the line through the first two (relative)
log = logging.getLogger(__name__)


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
    if any(is_concrete_layer_name(name) for name in trace.tensors):
        return None
    return n


def decode_iterations(trace: Trace) -> int | None:
    """The decode iterations every decode block runs (None: no decode, or blocks disagree)."""
    counts = {b.iterations for b in trace.blocks
              if b.ops and all(op.phase == "decode" for op in b.ops)}
    return counts.pop() if len(counts) == 1 else None


def iterations_repeat(system: System, trace: Trace, plan: Plan) -> bool:
    """Whether every decode iteration is the last one again: no decode op moves KV between tiers
    (the KV is homed where the ops that touch it compute), so nothing grows with the context.
    Op costs do not grow either: a template's FLOPs and bytes are per iteration, fixed."""
    from memsim.sim.program import _on_cpu, units_of

    units = units_of(system)
    fast = system.fast_tier
    kv = set(plan.home("kv", fast))
    for block in trace.blocks:
        for op in block.ops:
            if op.phase != "decode":
                continue
            if not any(trace.tensor(t).cls == "kv" for t in (*op.inputs, *op.outputs)):
                continue
            unit = "cpu" if op.device == "cpu" or _on_cpu(op, plan) else "gpu"
            if unit not in units:
                unit = "cpu" if unit == "gpu" else "gpu"
            if kv != {units[unit]}:
                return False
    return True


def decoded(trace: Trace, g: int) -> Trace:
    """The same step with ``g`` decode iterations (the context of each as in the whole run)."""
    blocks = [dataclasses.replace(b, iterations=g)
              if b.ops and all(op.phase == "decode" for op in b.ops) else b
              for b in trace.blocks]
    return dataclasses.replace(trace, blocks=blocks)


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
    resident: list[tuple[str, dict[str, int]]]  # tensors resident from t=0: name, home bytes


def _sample(system: System, trace: Trace, plan: Plan, prog=None) -> _Sample | None:
    """One reduced run, measured (None: it overflowed a tier). ``prog``: the trace's program,
    built already (``_over_context`` refits one window's program to each context)."""
    from memsim.sim.engine import StepEngine
    from memsim.sim.program import build_program
    from memsim.sim.report import _dtype

    if prog is None:
        prog = build_program(trace, system, plan)
    engine = StepEngine(system, prog, plan.prefetch_depth, False, trace.meta)
    result = engine.run()  # (an OOM changes no figure: the pools never refuse)
    clock = engine.clock
    makespan = clock.env.now
    held = {t: sum(lines.values()) for t, lines in clock.reserved.items()}
    resident = [(name, dict(info.held)) for name, info in prog.tensors.items()
                if info.birth is None]
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
        resident=resident)


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
    """The step's Result from reduced runs, or None where the step must be run whole."""
    n = layers_of(trace)
    if n is None or plan.layer_policy:
        return None
    full = _folded(lambda k: _over_iterations(system, reduced(trace, k), plan), n, FIRST, STEP,
                   "layers", trace.name)
    return None if full is None else _result(system, trace, plan, full)


def _over_iterations(system: System, trace: Trace, plan: Plan) -> _Sample | None:
    """A step's sample, its decode iterations folded too where each repeats the last exactly."""
    g = decode_iterations(trace)
    if g is not None and iterations_repeat(system, trace, plan):
        got = _folded(lambda i: _sample(system, decoded(trace, i), plan), g, FIRST_ITERATIONS, 1,
                      "iterations", trace.name)
        if got is not None:
            return got
    elif g is not None:
        got = _over_context(system, trace, plan, g)
        if got is not None:
            return got
    return _sample(system, trace, plan)


def windowed(trace: Trace, start: int, g: int) -> Trace:
    """The step with ``g`` decode iterations at the contexts of the whole run's ``start`` ..
    ``start + g - 1`` (``decode_from``: memsim/sim/program.py's ``_fractions``)."""
    out = decoded(trace, g)
    return dataclasses.replace(out, meta={**out.meta, "decode_from": start})


def _over_context(system: System, trace: Trace, plan: Plan, g: int) -> _Sample | None:
    """Decode iterations whose KV streams between tiers: iteration i moves the context so far,
    so its cost is affine in i once the schedule has settled. Windows of ``WINDOW`` iterations
    at the early, middle and late contexts (each after the prefill) give the cost of their last
    iteration (the difference of the two lengths); the middle one must lie on the line through
    the other two (``TOL``; integers exactly), then the whole run is the first window plus the
    closed-form sum of the line. A tier's time integral grows quadratically per iteration (bytes
    and time both affine): the parabola through the three. Peaks: the highest window's, when the
    three are monotone in the context (the last window holds the whole run's last iterations).
    None (run it whole) when a check fails or the windows cost more than ``CONTEXT_BUDGET``."""
    short, long_ = WINDOW
    late = g - long_
    mid = late // 2
    starts = (0, mid, late)
    if os.environ.get("MEMSIM_FOLD_CONTEXT", "1").strip().lower() in ("0", "false", "no", "off"):
        return None  # (bench/bench_fold.py's "layers only": this fold off, the others on)
    if mid < 1 or len(starts) * (short + long_ + 2) > CONTEXT_BUDGET * (g + 1):
        return None
    from memsim.sim.program import build_program, refit_context

    got_at: dict[tuple[int, int], _Sample] = {}
    for w in WINDOW:  # one program per window length: the contexts differ in bytes moved only
        prog = None
        for k in starts:
            window = windowed(trace, k, w)
            prog = None if prog is None else refit_context(prog, window, plan)
            if prog is None:
                prog = build_program(window, system, plan)
            got = _sample(system, window, plan, prog)
            if got is None:
                log.debug("not folded %s over contexts: an OOM in a window at %d", trace.name, k)
                return None
            got_at[k, w] = got
    runs = {(k, w): got_at[k, w] for k in starts for w in WINDOW}  # (the order _sum_context reads)
    out = _sum_context(runs, starts, g - short)
    log.debug("%s %s over contexts from windows at %s", "folded" if out else "not folded",
              trace.name, starts)
    return out


def _sum_context(runs: dict, starts: tuple[int, int, int], n: int) -> _Sample | None:
    """The first window plus ``n`` more iterations whose costs lie on the line (or parabola)
    through the windows' last iterations; None where they do not."""
    short, long_ = WINDOW
    base = runs[starts[0], short]
    samples = list(runs.values())
    if any(s.notes != base.notes or s.breakdown.keys() != base.breakdown.keys()
           or s.busy.keys() != base.busy.keys() or s.peak.keys() != base.peak.keys()
           or s.resident != base.resident or s.capacity != base.capacity for s in samples):
        return None
    ks = starts
    s1 = n * (n - 1) / 2  # Σ j and Σ j² over the iterations j = 0 .. n - 1 after the first window
    s2 = (n - 1) * n * (2 * n - 1) / 6

    def last(get) -> list:
        return [get(runs[k, long_]) - get(runs[k, short]) for k in ks]

    scale = max(s.makespan for s in samples)

    def line(get) -> float | None:
        (y0, ym, yl), (_, m, late) = last(get), ks
        slope = (yl - y0) / late
        if abs(y0 + slope * m - ym) > TOL * max(abs(ym), scale):
            return None
        return get(base) + n * y0 + slope * s1

    makespan = line(lambda s: s.makespan)
    if makespan is None or makespan <= 0:
        return None
    breakdown = {key: line(lambda s, key=key: s.breakdown[key]) for key in base.breakdown}
    busy = {key: line(lambda s, key=key: s.busy[key]) for key in base.busy}
    flops = line(lambda s: s.flops)
    events = [int(v) for v in last(lambda s: s.events)]
    if (any(v is None for d in (breakdown, busy) for v in d.values()) or flops is None
            or Fraction(events[2] - events[0], ks[2]) * ks[1] != events[1] - events[0]):
        return None
    slope_e = Fraction(events[2] - events[0], ks[2])
    total_e = base.events + n * events[0] + slope_e * Fraction(n * (n - 1), 2)
    if total_e.denominator != 1:
        return None
    peak = {}
    for key in base.peak:
        ys = [runs[k, long_].peak[key] for k in ks]
        if not (ys[0] <= ys[1] <= ys[2] or ys[0] >= ys[1] >= ys[2]):
            return None
        peak[key] = max(s.peak[key] for s in samples)
    area = {}
    for key in base.area:
        (y0, ym, yl), (_, m, late) = last(lambda s, key=key: s.area[key]), ks
        c = ((yl - y0) / late - (ym - y0) / m) / (late - m)
        b = (ym - y0) / m - c * m
        area[key] = base.area[key] + n * y0 + b * s1 + c * s2
    return dataclasses.replace(base, makespan=makespan, breakdown=breakdown, busy=busy,
                               peak=peak, area=area, events=int(total_e), flops=flops)


def _folded(run, n: int, first: int, step: int, dim: str, name: str) -> _Sample | None:
    """``run(k)`` at k = first, first + step, ... (each a whole number of steps from ``n``) until
    three in a row lie on one line; the sample they give at ``n``, or None."""
    k = first + (n - first) % step
    samples: list[tuple[int, _Sample]] = []
    spent = 0
    while spent + k <= BUDGET * n:  # past that, simulating all n is as cheap
        s = run(k)
        if s is None:  # an OOM: its record is an event of the whole run
            log.debug("not folded %s over %s: an OOM at %d", name, dim, k)
            return None
        samples.append((k, s))
        spent += k
        k += step
        if len(samples) >= 3:
            window = samples[-3:]
            out = _extend(tuple(k for k, _ in window), [s for _, s in window], n, dim == "layers")
            if out is not None:
                log.debug("folded %s: %d %s from samples of %s", name, n, dim,
                          [k for k, _ in window])
                return out
    log.debug("not folded %s over %s: samples %s", name, dim, [k for k, _ in samples])
    return None


def _extend(ks: tuple[int, ...], samples: list[_Sample], n: int, layers: bool) -> _Sample | None:
    """The sample at ``n`` from three, or None if they are not on one line. Over ``layers`` the
    resident tensors grow by layer 0's per layer; over decode iterations they stay."""
    first = samples[0]
    if any(s.notes != first.notes or s.breakdown.keys() != first.breakdown.keys()
           or s.busy.keys() != first.busy.keys() or s.peak.keys() != first.peak.keys()
           for s in samples):
        return None
    makespan = _line(ks, [s.makespan for s in samples], n, 0.0)
    if makespan is None or makespan <= 0:
        return None
    scale = max(s.makespan for s in samples)  # times near zero are judged against the step's
    breakdown = {key: _line(ks, [s.breakdown[key] for s in samples], n, scale)
                 for key in first.breakdown}
    busy = {key: _line(ks, [s.busy[key] for s in samples], n, scale) for key in first.busy}
    peak = {key: _int_line(ks, [s.peak[key] for s in samples], n) for key in first.peak}
    events = _int_line(ks, [s.events for s in samples], n)
    if any(v is None for d in (breakdown, busy, peak) for v in d.values()) or events is None:
        return None
    area = {key: _quadratic(ks, [s.area[key] for s in samples], n) for key in first.area}
    resident = first.resident
    if layers:  # the whole step's: the samples' non-layer tensors and n copies of layer 0's
        resident = _layered(first.resident, n)
        if any(_layered(first.resident, k) != s.resident for k, s in zip(ks, samples, strict=True)):
            return None
    elif any(s.resident != first.resident for s in samples):
        return None
    flops = _line(ks, [s.flops for s in samples], n, 0.0)
    return dataclasses.replace(first, makespan=makespan, breakdown=breakdown, busy=busy,
                               peak=peak, area=area, events=events, resident=resident,
                               flops=flops or 0.0)


def _result(system: System, trace: Trace, plan: Plan, s: _Sample) -> Result | None:
    """The Result of the whole step from its extrapolated sample."""
    from memsim.sim.report import main_unit, peak_flops

    reserved = reserved_lines(system, trace.meta, _sizes(s.resident))
    held = {t: sum(lines.values()) for t, lines in reserved.items()}
    peak = {t: v + held.get(t, 0) for t, v in s.peak.items()}
    oom = None
    if any(peak[t] > s.capacity[t] for t in peak):
        # an overflow does not change the schedule (a pool never refuses), so every figure
        # stands; the OOM record does when it happens at the start, before anything runs
        oom = _start_oom(system, reserved, s.resident) or _first_oom(system, trace, plan)
        if oom is None:
            log.debug("not folded %s: the extrapolated overflow does not happen", trace.name)
            return None  # simulate it whole
    meta = trace.meta
    makespan = s.makespan
    tokens = int(meta.get("tokens_per_step") or 0)
    flops = float(meta.get("flops_per_step") or s.flops)
    unit_peak = peak_flops(main_unit(system), s.dtype)
    return Result(
        feasible=oom is None,
        step_time_s=makespan,
        tokens_per_s=tokens / makespan,
        tokens_per_step=tokens,
        mfu=flops / (makespan * unit_peak) if unit_peak > 0 else 0.0,
        breakdown=s.breakdown,
        oom=oom,
        events=s.events,
        notes=list(s.notes),
        peak_bytes=peak,
        mean_bytes={t: (a + held.get(t, 0) * makespan) / makespan for t, a in s.area.items()},
        capacity_bytes=dict(s.capacity),
        reserved_bytes={t: dict(lines) for t, lines in sorted(reserved.items())},
        link_busy={e: b / makespan for e, b in s.busy.items()},
    )


def _first_oom(system: System, trace: Trace, plan: Plan) -> OOM | None:
    """The whole step's first OOM, an event after its start: the program simulated only until
    it. Building a long decode's whole program costs more than running it to an early overflow,
    so the first ``k`` decode iterations (4, 16, ...) are tried first: that program is the whole
    one's first ``k`` iterations (same tensors, same contexts: ``decoded``), and its run is the
    whole run event by event until a segment of its last iteration starts (the first that
    issues fetches past its end, or frees a decode tensor at a last use the whole run has
    later; decode iterations repeat the same template ops). An OOM before then is the whole
    run's; none yet: the next prefix; one later (it grows with the iterations): the whole
    program."""
    from memsim.sim.engine import StepEngine
    from memsim.sim.program import build_program

    g = decode_iterations(trace)
    k = PREFIX_ITERATIONS
    while g is not None and k < g:
        prog = build_program(decoded(trace, k), system, plan)
        engine = StepEngine(system, prog, plan.prefetch_depth, False, trace.meta)
        oom = engine.first_oom()
        if oom is not None:
            if _before_last_iteration(engine, k - 1):
                return oom
            break  # it overflows as it ends: an overflow that grows with the iterations
        k *= 4
    prog = build_program(trace, system, plan)
    return StepEngine(system, prog, plan.prefetch_depth, False, trace.meta).first_oom()


def _before_last_iteration(engine, last: int) -> bool:
    """Whether no segment started so far reaches (itself, or by the fetches it issues) a
    segment with an op of decode iteration ``last``, nor holds a ring slot until the step's
    end (the whole run drains it at a segment past the prefix)."""
    prog = engine.prog
    cut = next((seg.index for seg in prog.segments
                if any(prog.ops[i].phase == "decode" and prog.ops[i].iteration >= last
                       for i in seg.ops)), None)
    if cut is None:
        return False
    started = [s for s, on in enumerate(engine.seg_started) if on]
    return all(s < cut and engine.ahead[s] < cut
               and not (engine.ring and engine.drained_by[s] is None) for s in started)


def _layered(resident: list[tuple[str, dict[str, int]]], n: int) -> list:
    """``resident`` with layer 0's tensors (``L0.*``) for layers 0 .. n - 1 and no other layer's,
    in the program's order (by name)."""
    out = [(name, home) for name, home in resident if not is_concrete_layer_name(name)]
    first = layer_name(0, "")
    layer0 = [(name[len(first):], home) for name, home in resident if name.startswith(first)]
    out += [(layer_name(i, rest), home) for i in range(n) for rest, home in layer0]
    return sorted(out, key=lambda nh: nh[0])


def _sizes(resident: list[tuple[str, dict[str, int]]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for _name, home in resident:
        for tier, nbytes in home.items():
            out.setdefault(tier, []).append(nbytes)
    return out


def _start_oom(system: System, reserved: dict, resident: list) -> OOM | None:
    """The OOM the step's start records, if its non-tensor lines and resident tensors overflow
    a tier before anything runs (the engine's allocations at t=0, in its order); else None."""
    env = simpy.Environment()
    first: list[OOM] = []

    def on_oom(pool: Pool, op: str, _nbytes: int) -> None:
        if not first:
            first.append(pool.oom_record(0.0, op))
    pools = {name: Pool(name, tier.capacity, env, on_oom) for name, tier in system.tiers.items()}
    for tier, lines in reserved.items():
        for line, nbytes in lines.items():
            pools[tier].alloc(f"<{line}>", nbytes, f"process start ({line})")
    for name, home in resident:
        for tier, nbytes in home.items():
            pools[tier].alloc(name, nbytes, "step start (resident state)")
            if first:
                return first[0]
    return first[0] if first else None
