"""Pipeline-parallel schedules simulated event by event (Narayanan et al. 2021, §2.2).

1F1B (PipeDream-Flush): stage i of P first runs min(P−i−1, M) warm-up forwards, then alternates
one forward and one backward (steady state), then drains the remaining backwards (cool-down).
A forward of micro-batch m on stage i waits for the same forward on stage i−1 plus the
activation send; a backward waits for stage i+1's backward plus the gradient send. The bubble
and each stage's peak of in-flight micro-batches (P−i) come out of the event log, not a formula;
for uniform stages the bubble equals the paper's (P−1)/(M+P−1), which the tests check.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """One forward ("F") or backward ("B") of a micro-batch on a stage."""

    stage: int
    kind: str
    micro: int
    start: float
    end: float


@dataclass(frozen=True)
class PipelineRun:
    events: list[Event]
    step_time: float
    bubble_fraction: float  # idle share of stage-time over the step
    peak_inflight: list[int]  # per stage: micro-batches whose activations are held at once


def order_1f1b(stages: int, stage: int, micro: int) -> list[tuple[str, int]]:
    """The op order of one stage under 1F1B."""
    warm = min(stages - stage - 1, micro)
    ops = [("F", m) for m in range(warm)]
    f, b = warm, 0
    while f < micro:
        ops += [("F", f), ("B", b)]
        f, b = f + 1, b + 1
    ops += [("B", m) for m in range(b, micro)]
    return ops


def simulate_1f1b(stages: int, micro: int, fwd: list[float] | float, bwd: list[float] | float,
                  p2p: float = 0.0) -> PipelineRun:
    """Run 1F1B over ``stages`` stages and ``micro`` micro-batches; ``fwd``/``bwd`` are seconds
    per micro-batch (one per stage, or one for all), ``p2p`` the send between adjacent stages."""
    fwd = fwd if isinstance(fwd, list) else [fwd] * stages
    bwd = bwd if isinstance(bwd, list) else [bwd] * stages
    orders = [order_1f1b(stages, i, micro) for i in range(stages)]
    done: dict[tuple[str, int, int], float] = {}
    nxt, free = [0] * stages, [0.0] * stages
    events: list[Event] = []
    while len(events) < 2 * stages * micro:
        progressed = False
        for i in range(stages):
            if nxt[i] == len(orders[i]):
                continue
            kind, m = orders[i][nxt[i]]
            dep = (kind, i - 1, m) if kind == "F" else ("B", i + 1, m)
            if kind == "B" and i == stages - 1:
                dep = ("F", i, m)  # the last stage turns its own forward around
            if kind == "F" and i == 0:
                ready = 0.0
            elif dep in done:
                ready = done[dep] + (p2p if dep[1] != i else 0.0)
            else:
                continue
            start = max(ready, free[i])
            end = start + (fwd[i] if kind == "F" else bwd[i])
            done[(kind, i, m)], free[i] = end, end
            events.append(Event(i, kind, m, start, end))
            nxt[i] += 1
            progressed = True
        if not progressed:  # cannot happen for a valid 1F1B order; guards the loop
            raise RuntimeError("pipeline schedule deadlocked")
    events.sort(key=lambda e: (e.start, e.stage))
    step = max(e.end for e in events)
    busy = sum(e.end - e.start for e in events)
    peak = []
    for i in range(stages):
        held = best = 0
        for e in sorted((e for e in events if e.stage == i), key=lambda e: e.start):
            held += 1 if e.kind == "F" else -1
            best = max(best, held)
        peak.append(best)
    return PipelineRun(events, step, 1 - busy / (stages * step), peak)
