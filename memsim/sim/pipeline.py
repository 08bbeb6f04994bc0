"""Pipeline-parallel schedules simulated event by event (Narayanan et al. 2021, §2.2).

1F1B (PipeDream-Flush): stage i of P first runs min(P−i−1, M) warm-up forwards, then alternates
one forward and one backward (steady state), then drains the remaining backwards (cool-down).
A forward of micro-batch m on stage i waits for the same forward on stage i−1 plus the
activation send; a backward waits for stage i+1's backward plus the gradient send. The bubble
and each stage's peak of in-flight micro-batches (P−i) come out of the event log, not a formula;
for uniform stages the bubble equals the paper's (P−1)/(M+P−1), which the tests check.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    """One forward ("F") or backward ("B") of a micro-batch on a stage."""

    stage: int
    kind: str
    micro: int
    start: float
    end: float
    chunk: int = 0  # the model chunk (interleaved schedule)


@dataclass(frozen=True)
class PipelineRun:
    events: list[Event]
    step_time: float
    bubble_fraction: float  # idle share of stage-time over the step
    peak_inflight: list[int]  # per stage: micro-batches whose activations are held at once
    last_backward_end: list[float] = field(default_factory=list)  # per stage: when its backward ends


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


def interleaved_table(micro: int, chunks: int, group: int) -> list[tuple[int, int]]:
    """(micro, chunk) of each forward slot under the interleaved schedule: micro-batches go in
    groups of ``group`` through every chunk before the next group starts; the last group takes
    the remainder, so ``micro`` need not be a multiple of ``group`` (Megatron-Core's
    ``get_schedule_table`` in megatron/core/pipeline_parallel/schedules.py)."""
    table = []
    for low in range(0, micro, group):
        high = micro if low + group >= micro else low + group
        table += [(m, c) for c in range(chunks) for m in range(low, high)]
    return table


def microbatch_group(stages: int, micro: int) -> int | None:
    """The smallest group of consecutive micro-batches per chunk that Megatron-Core accepts
    (``microbatch_group_size_per_vp_stage`` N, in [P, M], with M mod N either 0 or at least P:
    a smaller last group would stall on its own dependencies); None when M < P."""
    for n in range(stages, micro + 1):
        if micro % n == 0 or micro % n >= stages:
            return n
    return None


def order_interleaved(stages: int, stage: int, micro: int, chunks: int,
                      group: int | None = None) -> list[tuple[str, int, int]]:
    """The op order (kind, chunk, micro) of one stage under Megatron's interleaved 1F1B: the
    k-th forward runs slot k of :func:`interleaved_table` (groups of ``group`` micro-batches,
    ``stages`` by default), the k-th backward the same slot's micro-batch on chunk v−1−c;
    warm-up is 2(P−i−1) + (v−1)·N forwards (megatron/core/pipeline_parallel/schedules.py)."""
    group = stages if group is None else group
    table = interleaved_table(micro, chunks, group)
    total = len(table)

    def fwd(k: int) -> tuple[str, int, int]:
        m, c = table[k]
        return "F", c, m

    def bwd(k: int) -> tuple[str, int, int]:
        m, c = table[k]
        return "B", chunks - 1 - c, m

    warm = min(2 * (stages - stage - 1) + (chunks - 1) * group, total)
    ops = [fwd(k) for k in range(warm)]
    f, b = warm, 0
    while f < total:
        ops += [fwd(f), bwd(b)]
        f, b = f + 1, b + 1
    return ops + [bwd(k) for k in range(b, total)]


def simulate_1f1b(stages: int, micro: int, fwd: list[float] | float, bwd: list[float] | float,
                  p2p: float = 0.0, blocking_p2p: bool = False) -> PipelineRun:
    """Run 1F1B over ``stages`` stages and ``micro`` micro-batches; ``fwd``/``bwd`` are seconds
    per micro-batch (one per stage, or one for all), ``p2p`` the send between adjacent stages.
    ``blocking_p2p``: the sender waits for its send to finish (Megatron's 1F1B issues each send
    with the matching receive and waits on both before the next op), else it goes on at once."""
    orders = [[(k, 0, m) for k, m in order_1f1b(stages, i, micro)] for i in range(stages)]
    return _run(stages, 1, orders, fwd, bwd, p2p, blocking_p2p)


def simulate_pipeline(stages: int, micro: int, fwd: list[float] | float, bwd: list[float] | float,
                      p2p: float = 0.0, *, schedule: str = "1f1b", chunks: int = 1,
                      blocking_p2p: bool = False) -> PipelineRun:
    """1F1B, or the interleaved schedule with ``chunks`` model chunks per stage (each chunk runs
    1/chunks of the stage's layers, as Megatron-Core splits an uneven stage's layers evenly
    over its chunks: ``fwd``/``bwd`` stay whole-stage times, one per stage when stages differ).
    Micro-batches go through the chunks in groups of :func:`microbatch_group` (the stage
    count when it divides them, else the smallest group Megatron-Core accepts); fewer
    micro-batches than stages cannot interleave and run 1F1B."""
    group = microbatch_group(stages, micro)
    if schedule != "interleaved" or chunks <= 1 or stages == 1 or group is None:
        return simulate_1f1b(stages, micro, fwd, bwd, p2p, blocking_p2p)
    orders = [order_interleaved(stages, i, micro, chunks, group) for i in range(stages)]
    return _run(stages, chunks, orders, fwd, bwd, p2p, blocking_p2p)


def _run(stages: int, chunks: int, orders: list[list[tuple[str, int, int]]], fwd, bwd,
         p2p: float, blocking_p2p: bool = False) -> PipelineRun:
    """Execute each stage's op order, each op starting once its stage is free and its input has
    arrived: a forward needs the previous (virtual) stage's forward, a backward the next one's
    backward; the last virtual stage turns its own forward around."""
    fwd = [f / chunks for f in fwd] if isinstance(fwd, list) else [fwd / chunks] * stages
    bwd = [b / chunks for b in bwd] if isinstance(bwd, list) else [bwd / chunks] * stages
    done: dict[tuple[str, int, int, int], float] = {}
    nxt, free = [0] * stages, [0.0] * stages
    events: list[Event] = []
    per_stage: list[list[Event]] = [[] for _ in range(stages)]  # each in its own order
    need = sum(len(o) for o in orders)
    last = stages - 1
    while len(events) < need:
        progressed = False
        for i in range(stages):
            while nxt[i] < len(orders[i]):
                kind, c, m = orders[i][nxt[i]]
                if kind == "F":
                    dep = ("F", i - 1, c, m) if i > 0 else (("F", last, c - 1, m) if c > 0 else None)
                elif i < last:
                    dep = ("B", i + 1, c, m)
                else:
                    dep = ("B", 0, c + 1, m) if c < chunks - 1 else ("F", i, c, m)
                if dep is None:
                    ready = 0.0
                elif dep in done:
                    ready = done[dep] + (p2p if dep[1] != i else 0.0)
                else:
                    break
                start = max(ready, free[i])
                end = start + (fwd[i] if kind == "F" else bwd[i])
                sends = (kind == "F" and (i < last or c < chunks - 1)) or (kind == "B" and (i > 0 or c > 0))
                done[(kind, i, c, m)] = end
                free[i] = end + (p2p if blocking_p2p and sends else 0.0)
                ev = Event(i, kind, m, start, end, c)
                events.append(ev)
                per_stage[i].append(ev)
                nxt[i] += 1
                progressed = True
        if not progressed:  # cannot happen for a valid schedule; guards the loop
            raise RuntimeError("pipeline schedule deadlocked")
    events.sort(key=lambda e: (e.start, e.stage))
    step = max(e.end for e in events)
    busy = sum(e.end - e.start for e in events)
    peak, last_b = [], []
    for mine in per_stage:
        held = best = 0
        for e in mine:
            held += 1 if e.kind == "F" else -1
            best = max(best, held)
        peak.append(-(-best // chunks))  # in whole micro-batches of the stage's layers
        last_b.append(max(e.end for e in mine if e.kind == "B"))
    return PipelineRun(events, step, 1 - busy / (stages * step), peak, last_b)
