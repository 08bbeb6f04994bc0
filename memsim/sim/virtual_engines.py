"""Pipeline-parallel serving as vLLM runs it: one scheduler per pipeline stage, p batches in flight.

With ``pipeline_parallel_size`` p, vLLM's engine keeps p *virtual engines*, each a scheduler with
its own queues and its own share of the KV blocks (vllm/core/scheduler.py: ``num_gpu_blocks //=
pipeline_parallel_size``), and hands each new request to the scheduler with the fewest unfinished
requests (vllm/engine/llm_engine.py ``add_request``). Each virtual engine steps on its own
(``AsyncLLMEngine.run_engine_loop`` awaits one step per virtual engine), so while one batch runs on
stage 1 the next virtual engine's batch runs on stage 0: p batches are in flight, a balanced
pipeline finishes about p× the tokens per second of one batch at a time, and every batch still
takes the whole pipeline's latency (p stage times) from one token to its next.

Here each virtual engine is a :class:`~memsim.sim.serving.ServingEngine` with a p-th of the KV
blocks and of the swap space, all on one simpy clock and one GPU's memory pools. A new request
goes to the engine with the fewest unfinished requests (ties to the lowest index, as vLLM's
``costs.index(min(costs))``), decided when the first engine sees it arrive: at its arrival when
an engine is idle, else at the end of the first iteration after it (counts change only there,
as requests finish). An iteration passes through :class:`Stages`, p FIFO
stages each taking one GPU's share of the iteration (``ServingEngine._compute_time`` / p, its
stages being the busiest stage's share); a stage works on one batch at a time. The
point-to-point send of hidden states between stages is not timed (a few KB per token over
NVLink).
"""

from __future__ import annotations

import dataclasses
import time

from memsim.contracts.plan import Plan
from memsim.contracts.result import Result
from memsim.hardware.spec import System
from memsim.sim.engine import Clock
from memsim.sim.program import paused_gc
from memsim.sim.serving import ServingEngine
from memsim.workloads.trace import Trace


class Stages:
    """The pipeline's stages, each busy with one batch at a time, first come first served.

    A batch's passage is known the moment it enters: batches reach stage 0 in the order they are
    sent and keep that order at every later stage (one that enters stage i after another also
    leaves it after), so each stage's next free time decides the whole passage, and an
    iteration costs one timeout. ``log`` (when kept) holds every passage as (virtual engine,
    stage, start, end)."""

    def __init__(self, count: int, recorder=None, log: bool = False):
        self.free_at = [0.0] * count
        self.log: list[tuple[int, int, float, float]] | None = [] if log else None
        self.recorder = recorder

    def passage(self, engine: int, now: float, stage_s: float) -> float:
        """A batch sent at ``now`` through every stage in turn, ``stage_s`` on each: when it
        leaves the last."""
        t = now
        free_at = self.free_at
        for i, free in enumerate(free_at):
            start = t if t > free else free
            t = free_at[i] = start + stage_s
            if self.log is not None:
                self.log.append((engine, i, start, t))
            if self.recorder is not None:
                self.recorder.span(f"stage {i}", f"virtual engine {engine}", start, t)
        return t


class VirtualEngine(ServingEngine):
    """One virtual engine: a scheduler over its requests whose iterations go through the shared
    :class:`Stages` (so iterations are never run back to back in one timeout: the stages are
    shared)."""

    stages: Stages
    index: int = 0
    stage_wait = 0.0  # time its batches waited for a stage another virtual engine held
    pool_blocks = 0  # the whole KV pool, before the engines' shares

    dispatch: Dispatch

    def takes(self, r) -> bool:
        return self.dispatch.owner(r.id) == self.index

    def _compute_done(self, compute: float):
        now = self.env.now
        end = self.stages.passage(self.index, now, compute / len(self.stages.free_at))
        self.stage_wait += end - now - compute
        return self.env.timeout(end - now)


class Dispatch:
    """vLLM's ``add_request`` over its schedulers: each request, once, to the virtual engine with
    the fewest unfinished requests."""

    def __init__(self, engines: list[VirtualEngine]):
        self.engines = engines
        self.assigned = [0] * len(engines)
        self.to: dict[int, int] = {}

    def owner(self, rid: int) -> int:
        i = self.to.get(rid)
        if i is None:
            costs = [n - e.completed - e.dropped for n, e in zip(self.assigned, self.engines, strict=True)]
            i = self.to[rid] = costs.index(min(costs))
            self.assigned[i] += 1
        return i


def pipelined(trace: Trace) -> bool:
    """Whether the serving trace is pipeline-parallel (its token costs are one stage's)."""
    raw = trace.meta.get("token_costs")
    pp = raw.get("pp", 1) if isinstance(raw, dict) else getattr(raw, "pp", 1)
    return int(pp or 1) > 1


def serve_virtual_engines(system: System, trace: Trace, plan: Plan, timeline: bool = False) -> Result:
    """The whole request trace served by p virtual engines on one GPU's clock and memory."""
    return run_virtual_engines(system, trace, plan, timeline)[0]


def run_virtual_engines(system: System, trace: Trace, plan: Plan, timeline: bool = False,
                        log: bool = False) -> tuple[Result, Stages, Dispatch]:
    """:func:`serve_virtual_engines`, the stages it ran (with ``log``, their passages) and where
    each request went."""
    wall = time.perf_counter()
    raw = trace.meta["token_costs"]
    p = int(raw["pp"] if isinstance(raw, dict) else raw.pp)
    engines = [VirtualEngine(system, trace, plan, timeline and i == 0) for i in range(p)]
    first = engines[0]
    clock: Clock = first.clock
    stages = Stages(p, clock.recorder, log)
    dispatch = Dispatch(engines)
    with paused_gc():
        for i, e in enumerate(engines):
            e._setup()  # the others on their own clock: weights and workspace held once
            e.pool_blocks = e.total_blocks
            e.total_blocks = e.free_blocks = max(1, e.pool_blocks // p)
            # and a p-th of the swap space (vLLM: num_cpu_blocks //= pipeline_parallel_size)
            e.policy = dataclasses.replace(e.policy, swap_bytes=e.policy.swap_bytes // p)
            e.clock, e.env, e.stages, e.index, e.ff_ok = clock, clock.env, stages, i, False
            e.dispatch, e.completed = dispatch, 0  # (counted before its loop starts)
        for e in engines:
            clock.env.process(e._serve())
        clock.run()
    return _merged(engines, trace, time.perf_counter() - wall), stages, dispatch


def _merged(engines: list[VirtualEngine], trace: Trace, wall_s: float) -> Result:
    """One Result for the server: the first engine's, its counts summed over all of them."""
    first, rest = engines[0], engines[1:]
    # a request too large for an engine's blocks is dropped by every engine (they all see every
    # arrival): count it once
    bs = first.policy.block_size
    too_big = sum(-(-(a + b) // bs) > first.total_blocks
                  for a, b in zip(trace.requests.prompt_len, trace.requests.output_len, strict=True))
    first.trace = trace
    for e in rest:
        e.dropped -= too_big
        first.ttft += e.ttft
        first.tbt += e.tbt
        first.preemptions += e.preemptions
        first.dropped += e.dropped
        first.completed += e.completed
        first.generated_total += e.generated_total
        first.kv_area += e.kv_area
        first.kv_slots_area += e.kv_slots_area
        first.kv_tokens_area += e.kv_tokens_area
        first.notes += e.notes
        if first.store is not None and e.store is not None:
            first.store.hit_tokens += e.store.hit_tokens
            first.store.prompt_tokens += e.store.prompt_tokens
            for tier, n in e.store.hits_by_tier.items():
                first.store.hits_by_tier[tier] = first.store.hits_by_tier.get(tier, 0) + n
    marks = [e.at_last for e in engines if e.at_last is not None]
    if marks:
        first.at_last = (min(m[0] for m in marks), max(m[1] for m in marks),
                         sum(m[2] for m in marks), sum(m[3] for m in marks))
    first.total_blocks = first.pool_blocks  # vLLM's "# GPU blocks": the pool the engines share
    p = len(engines)
    wait = sum(e.stage_wait for e in engines) / p
    # each account is the engines' mean (each engine's accounts sum to the run's length); the
    # time a batch waited for a stage is the pipeline's, not a transfer's
    first.acct = {k: sum(e.acct[k] for e in engines) / p for k in first.acct}
    first.acct["exposed_transfer"] = max(0.0, first.acct["exposed_transfer"] - wait)
    first.acct["pipeline_wait"] = wait
    result = first._result(wall_s)
    result.notes.append(f"{p} virtual engines (vLLM pipeline parallelism): {p} batches in flight, "
                        "each request to the engine with the fewest unfinished")
    return result
