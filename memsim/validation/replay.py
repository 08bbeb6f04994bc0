"""Replay a Trace + Plan on this machine with torch: real kernels, real tiers, real copies.

What happens and in which order is the simulator's own reading of the Plan: the replay executes
the same ``memsim.sim.program.Program`` (ops with recompute inserted, segments, tensor homes,
write-backs, deaths) that the simpy engine executes, so a difference between prediction and
measurement is a difference in *time*, never in what was done. Like the engine:

* which inputs each segment fetches, from where, as which version, and the prefetch and drain
  windows are the engine's own (``StepEngine`` builds them without running: its ``fetch``,
  ``ahead`` and ``drain``), not a copy of its rules. So a KV input the segment itself appended
  to (decode ``qkv`` then ``attention``) fetches the context before the segment from the KV's
  home when that is off the compute tier, and prefetch and drain count layers ((block,
  iteration, layer) slots: FlexGen's GPU batches of one layer count once);
* fetches are FIFO per copy direction (one engine thread — and CUDA stream — each,
  ``engines.py``); a fetch of a version that a write-back produces starts after that write-back
  has landed; before a segment starts, the write-backs of the layer that left the prefetch
  window must have landed (bounded staging, as DeepSpeed's and FlexGen's swappers);
* appends (a KV write-back of part of the cache) land at the end of what is there already;
* an op waits for the staged copies of its inputs; outputs homed off the compute tier are
  written back after the segment's last write of them; tensors are freed after their last use,
  staged copies when no issued segment holds them;
* bytes are counted when a buffer is taken and until it is given back, which gives the measured
  peak per tier; with one GPU batch the staging is the engine's ring (a fetch's buffer from its
  issue, a written-back one until a later segment drains it), so the peak is the same in every
  step; with FlexGen's GPU batches, from a copy's start to a write-back's landing.

Kernels are real torch ops of the trace's shapes (``kernels.py``); slow tiers are real files on
disk with the page cache bypassed, or pinned host memory under a GPU (``tiers.py``). Time is
``perf_counter_ns`` on the CPU and CUDA events on a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from memsim.contracts.names import copy_job, copy_job_destination, copy_job_tensor, strip_recompute
from memsim.contracts.plan import Plan
from memsim.errors import SpecError
from memsim.hardware.spec import System
from memsim.kinds import tier_kind
from memsim.validation.backend import Backend, make_backend
from memsim.validation.calibrate import set_compute_threads
from memsim.validation.diskio import Scratch, probe_mode
from memsim.validation.engines import Engine, Job, wait
from memsim.validation.kernels import Kernels
from memsim.validation.suite import WARMUP
from memsim.validation.tiers import ComputeTier, DiskTier, HostTier, fill_random
from memsim.workloads.trace import Trace

# distinct kernel operands per signature where the System records no calibration flush size:
# calibration's own default (microbench.CacheFlush)
DISTINCT_OPERAND_BYTES = 256 << 20


@dataclass
class Measurement:
    """What one replay measured (the median step of ``repeats``, after ``warmup`` untimed steps)."""

    step_s: float
    steps_s: list[float]
    warmup_s: list[float]  # the untimed first steps, reported so their cost stays visible
    compute_s: float  # sum of op times of the median step
    wait_s: float  # compute side blocked on copies (exposed transfer)
    recompute_s: float
    op_s: dict[str, float]  # seconds by op kind, median step
    peak_bytes: dict[str, int]
    # per tier, the lowest and highest peak over the timed steps: where copies race (a write-back
    # landing before or after the next fetch starts), the peak moves from one step to the next
    peak_range: dict[str, tuple[int, int]]
    copy_bytes: dict[str, int]  # by engine (src->dst), one step
    workspace_bytes: int  # kernel operands, outside the plan's accounting
    device: str
    disk_mode: str | None
    source: str = "measured"
    ops: list[tuple[str, float]] = field(default_factory=list, repr=False)
    # per engine (src->dst), the copies in the order they were issued: (tensor, bytes)
    copy_log: dict[str, list[tuple[str, int]]] = field(default_factory=dict, repr=False)
    # per engine, each copy's (bytes, start s, end s) from the step's start (host clock): the
    # achieved disk rates, alone and while the other direction runs, for diagnosing a case
    copy_spans: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict, repr=False)

    # each round's median step (one round unless ``merge``d)
    rounds_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()
                if k not in ("ops", "copy_log", "copy_spans")}


def _trim_heap() -> None:
    """Give the heap memory a replay freed back to the OS. glibc keeps freed chunks in its arenas,
    and a validation runs many replays in one process: 30 of the cpu-disk suite (3 rounds) grew
    to 24 GB resident and were OOM-killed; with a trim after each, a process holds ~0.3 GB
    between replays."""
    gc.collect()  # the runner's closures form cycles that hold kernel workspaces
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim this way
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def median_round(rounds: list[Measurement]) -> int:
    """Index of the median round by its median step (the upper one of an even count)."""
    return sorted(range(len(rounds)), key=lambda i: rounds[i].step_s)[len(rounds) // 2]


def merge(rounds: list[Measurement]) -> Measurement:
    """One case replayed in several rounds, as one Measurement: the median round (by its median
    step; the upper one of an even count) with its ops, copies and peaks, and every round's steps
    and peak range."""
    from dataclasses import replace

    median = rounds[median_round(rounds)]
    tiers = {t for m in rounds for t in m.peak_range}
    return replace(
        median, steps_s=[s for m in rounds for s in m.steps_s],
        warmup_s=[s for m in rounds for s in m.warmup_s],
        rounds_s=[m.step_s for m in rounds],
        peak_range={t: (min(m.peak_range[t][0] for m in rounds if t in m.peak_range),
                        max(m.peak_range[t][1] for m in rounds if t in m.peak_range))
                    for t in sorted(tiers)})


def check_plan(trace: Trace, plan: Plan, system: System, file: str = "plan") -> None:
    """A plan written for another workload, or naming tiers this system lacks, is bad input."""
    from memsim.sim import check_plan as sim_check

    if plan.workload and plan.workload != trace.name:
        raise SpecError(f"the plan is for workload {plan.workload!r}, not {trace.name!r}; re-plan "
                        "for this workload", file=file, key="workload")
    sim_check(system, trace, plan, file)


def replay(system: System, trace: Trace, plan: Plan, device: str = "cpu", repeats: int = 3,
           scratch: str | Path | None = None, plan_file: str = "plan",
           progress: Callable[[], None] | None = None, warmup: int = WARMUP) -> Measurement:
    """Set up the tiers, run ``warmup`` untimed steps, then ``repeats`` timed ones; report the
    median timed step.

    Why warm up: the simulator predicts a steady-state step (staging buffers allocated once, as
    DeepSpeed's and FlexGen's swappers allocate theirs at start-up). A replay's first step maps
    and faults in every staging buffer; on a 2-vCPU VM the second often still runs 4-24% slower
    than the later ones in the cases that stream every weight from disk, for a cause not
    identified (docs/validation.md).
    """
    from memsim.sim.engine import StepEngine
    from memsim.sim.program import build_program

    check_plan(trace, plan, system, plan_file)
    backend = make_backend(device)
    set_compute_threads(backend)
    view = system.rank_view(int(trace.meta.get("data_parallel", 1) or 1))
    prog = build_program(trace, view, plan)
    # the engine's static schedule (what each op fetches, prefetch and drain windows); not run
    schedule = StepEngine(view, prog, max(0, plan.prefetch_depth), False, trace.meta)
    with Scratch(scratch) as folder:
        runner = _Runner(view, trace, prog, schedule, backend, folder)
        try:
            runner.setup()
            results = []
            for _ in range(max(0, warmup) + max(1, repeats)):
                results.append(runner.step())
                if progress:
                    progress()
        finally:
            runner.close()
            workspace, disk_mode = runner.kernels.workspace_bytes, runner.disk_mode
            del runner
            _trim_heap()
    warm, results = results[:max(0, warmup)], results[max(0, warmup):]
    median = sorted(results, key=lambda r: r["step_s"])[len(results) // 2]
    step_s = statistics.median(r["step_s"] for r in results)
    return Measurement(
        step_s=step_s,
        steps_s=[r["step_s"] for r in results], warmup_s=[r["step_s"] for r in warm],
        compute_s=median["compute_s"],
        wait_s=median["wait_s"], recompute_s=median["recompute_s"], op_s=median["op_s"],
        peak_bytes=median["peak_bytes"], copy_bytes=median["copy_bytes"],
        peak_range={t: (min(r["peak_bytes"][t] for r in results), max(r["peak_bytes"][t] for r in results))
                    for t in median["peak_bytes"]},
        workspace_bytes=workspace, device=device, disk_mode=disk_mode,
        ops=median["ops"], copy_log=median["copy_log"], copy_spans=median["copy_spans"],
        rounds_s=[step_s])


class _Stage:
    """Bytes of one tensor version on the compute tier: a fetch's target or a write's source."""

    __slots__ = ("jobs", "key", "nbytes", "refs", "skey")

    def __init__(self, key: str, nbytes: int, jobs: list[Job]):
        self.key, self.nbytes, self.jobs, self.refs = key, nbytes, jobs, 0
        self.skey: tuple | None = None


class _Runner:
    """State of one replay: tiers, engines, kernels; ``step()`` runs the program once."""

    def __init__(self, system: System, trace: Trace, prog, schedule, backend: Backend,
                 folder: Path):
        self.system, self.prog = system, prog
        # per op: (tensor, writer, fraction, {source tier: bytes}, writer in this segment)
        self.fetch, self.ahead, self.drain = schedule.fetch, schedule.ahead, schedule.drain
        self.ring, self.ring_hold = schedule.ring, schedule.ring_hold  # (engine._layer_window)
        self.backend, self.torch = backend, backend.torch
        self.fast = prog.fast
        units = {op.unit for op in prog.ops}
        if any(op.mem != self.fast for op in prog.ops):
            raise SpecError(f"ops on {sorted(units)} compute from different tiers; a replay runs "
                            f"every op on the {backend.device} (optimizer_device: cpu and "
                            "cpu_attention are simulated only)", key="optimizer_device")
        self.compute = ComputeTier(self.fast, backend)
        self.disk_mode: str | None = None
        self.slow: dict[str, DiskTier | HostTier] = {}
        for name, tier in system.tiers.items():
            if name == self.fast:
                continue
            if tier_kind(tier.kind).storage:
                self.disk_mode = self.disk_mode or probe_mode(folder)
                self.slow[name] = DiskTier(name, folder, self.disk_mode, backend)
            elif tier.kind == "dram" and backend.is_cuda:
                self.slow[name] = HostTier(name, backend)
        self.engines: dict[tuple[str, str], Engine] = {}
        # staging refcounts and the shared-stage table: written-back buffers are given back on
        # the copy engines' threads, the rest on the compute thread
        self.lock = threading.RLock()
        # operands of their own per op, as cold as calibration timed the kernels: up to the
        # bytes its cache flush streams, per kernel signature
        flush = (system.calibration or {}).get("cache_flush_bytes") or DISTINCT_OPERAND_BYTES
        self.kernels = Kernels(backend, distinct_bytes=int(flush))
        self.trace_ops = {x.name: x.op for x in trace.expand()}

    # -- setup (untimed) ----------------------------------------------------------------------

    def setup(self) -> None:
        """Tensors that exist from the start go to their homes; kernels are built and run once."""
        for seed, (name, info) in enumerate(sorted(self.prog.tensors.items())):
            if info.birth is not None:
                continue
            for tier, nbytes in info.home.items():
                if tier == self.fast:
                    self.compute.alloc(_home(name), nbytes)
                    continue
                self._slow(tier, name).write(name, _filled(self.compute, nbytes, seed), nbytes)
                self.compute.free("__setup__")
        for op in self.prog.ops:
            fn = self.kernels.get(self._kernel_op(op), strip_recompute(op.name))
            if fn:
                fn()
        self.backend.sync()
        self.initial = {t: set(lg.held) for t, lg in self._ledgers().items()}

    def _slow(self, tier: str, name: str) -> DiskTier | HostTier:
        if tier not in self.slow:
            kind = self.system.tiers[tier].kind
            raise SpecError(f"the plan homes {name} on tier {tier!r} ({kind}); a replay on "
                            f"{self.backend.device} can use {sorted(self.slow) or 'no other tier'}",
                            key=f"placement.{self.prog.tensors[name].cls}.{tier}")
        return self.slow[tier]

    def _kernel_op(self, pop):
        """The trace op behind a program op (recompute copies ``name@r`` share their kernel)."""
        op = self.trace_ops[strip_recompute(pop.name)]
        if op.flops != pop.flops:  # a FlexGen sub-batch: size the kernel from its own cost
            from dataclasses import replace

            op = replace(op, shape=None, flops=pop.flops, bytes_read=int(pop.nbytes), bytes_written=0)
        return op

    # -- one step (timed) ---------------------------------------------------------------------

    def step(self) -> dict:
        self._reset()
        prog = self.prog
        self.backend.sync()
        start = self._mark()
        self.t0_ns = time.perf_counter_ns()
        for op in prog.ops:
            if not self.seg_started[op.seg]:
                self._drain(op.seg)
                self._start_segment(op.seg)
            self._await(op)
            self._produce(op)
            fn = self.kernels.get(self._kernel_op(op), strip_recompute(op.name))
            t = self._time(fn) if fn else (0.0, None)
            self.op_times.append((op.name, op.kind, op.recompute, *t))
            self._finish(op)
            self._reap(block=False)
        t0 = time.perf_counter_ns()
        self._reap(block=True)  # the step ends when the last write-back has landed
        for st in self.wb_held.pop(-1, ()):  # the ring's tail: every write has landed
            self._release(st)
        self.wait_s += (time.perf_counter_ns() - t0) / 1e9
        end = self._mark()
        return self._summary(self._elapsed(start, end))

    def _reset(self) -> None:
        """Back to the state before a step: only the initial homes remain."""
        for tier, ledger in self._ledgers().items():
            for key in list(ledger.held):
                if key not in self.initial[tier]:
                    if tier == self.fast:
                        self.compute.free(key)
                    else:
                        self.slow[tier].delete(key)
            ledger.reset_peak()
        n = len(self.prog.segments)
        self.seg_started = [False] * n
        self.seg_left = [len(s.ops) for s in self.prog.segments]
        self.seg_held: list[list[_Stage]] = [[] for _ in range(n)]
        self.seg_stage: dict[tuple[int, str], _Stage] = {}
        self.stages: dict[tuple, _Stage] = {}
        self.work: dict[tuple[str, int], _Stage] = {}
        self.avail: dict[tuple[str, int, str], Job] = {}
        self.home_alloc = {(name, tier) for name, info in self.prog.tensors.items()
                           if info.birth is None for tier in info.home}
        self.writes: list[Job] = []
        self.seg_wb: dict[int, list[Job]] = {}  # write-backs issued per segment
        self.wb_held: dict[int, list[_Stage]] = {}  # the ring's, by engine.ring_hold key
        self.extent: dict[tuple[str, str], int] = {}  # (kv tensor, tier) → bytes appended so far
        self.issued = -1
        self.op_times: list[tuple] = []
        self.wait_s = 0.0
        self.next_id = 0

    def _drain(self, s: int) -> None:
        """Wait for the write-backs of the layer that left the prefetch window (engine.drain)."""
        t0 = time.perf_counter_ns()
        for d in self.drain[s]:
            for job in self.seg_wb.get(d, ()):
                wait(job, self.torch if self.backend.is_cuda else None)
        self.wait_s += (time.perf_counter_ns() - t0) / 1e9
        for d in self.drain[s]:
            for st in self.wb_held.pop(d, ()):
                self._release(st)

    def _start_segment(self, s: int) -> None:
        self.seg_started[s] = True
        last = self.ahead[s]
        while self.issued < last:
            self.issued += 1
            self._issue(self.issued)

    def _issue(self, s: int) -> None:
        """Stage what the engine's schedule fetches for segment ``s``."""
        for i in self.prog.segments[s].ops:
            for t, w, frac, sources, same_seg in self.fetch[i]:
                if (s, t) in self.seg_stage:
                    continue
                if same_seg:  # pragma: no cover - every replayed op computes from one tier
                    raise RuntimeError(f"{t} is fetched from another tier of its own segment")
                key = (t, w, frac)
                with self.lock:
                    st = self.stages.get(key)
                    if st is None:
                        st = self.stages[key] = self._fetch(t, w, sources)
                        st.skey = key
                    st.refs += 1
                self.seg_stage[(s, t)] = st
                self.seg_held[s].append(st)

    def _fetch(self, t: str, w: int | None, sources: dict[str, int]) -> _Stage:
        nbytes = sum(sources.values())
        key = self._key("stage", t)
        # the ring's buffer counts from the fetch's issue; otherwise from when its copy starts
        buf = self.compute.alloc(key, nbytes, account=self.ring)
        jobs: list[Job] = []
        for src, part in sources.items():
            tier = self._slow(src, t)
            after = self.avail.get((t, w, src)) if w is not None else None

            def run(stream, tier=tier, buf=buf, part=part, first=not jobs and not self.ring):
                if first:
                    self.compute.account(key, nbytes)
                tier.read(t, buf, part, stream)

            job = Job(copy_job(t, src, self.fast), part, run)
            jobs.append(self._engine(src, self.fast).submit(job, after=after))
        return _Stage(key, nbytes, jobs)

    def _await(self, op) -> None:
        t0 = time.perf_counter_ns()
        for t in op.inputs:
            st = self.seg_stage.get((op.seg, t))
            if st is not None and t not in op.no_fetch:
                for job in st.jobs:
                    wait(job, self.torch if self.backend.is_cuda else None)
        self.wait_s += (time.perf_counter_ns() - t0) / 1e9

    def _produce(self, op) -> None:
        for k, t in enumerate(op.outputs):
            info = self.prog.tensors[t]
            if self.fast in info.home and (t, self.fast) not in self.home_alloc:
                self.compute.alloc(_home(t), info.home[self.fast])
                self.home_alloc.add((t, self.fast))
            off = sum(b for h, b in info.home.items() if h != self.fast)
            if off <= 0 or (t, op.seg) in self.work:
                continue
            st = self.seg_stage.get((op.seg, t))
            if st is None:
                nbytes = int(off * op.out_frac[k])
                key = self._key("work", t)
                self.compute.alloc(key, nbytes)
                st = _Stage(key, nbytes, [])
            with self.lock:
                st.refs += 1
            self.work[(t, op.seg)] = st

    def _finish(self, op) -> None:
        for t in op.writeback:
            self._writeback(op, t)
        for t in op.dies:
            for tier in self.prog.tensors[t].home:
                self.extent.pop((t, tier), None)
                if (t, tier) in self.home_alloc:
                    self.home_alloc.discard((t, tier))
                    if tier == self.fast:
                        self.compute.free(_home(t))
                    else:
                        self.slow[tier].delete(t)
            st = self.work.pop((t, op.seg), None)
            if st is not None:
                self._release(st)
        self.seg_left[op.seg] -= 1
        if self.seg_left[op.seg] == 0:
            for st in self.seg_held[op.seg]:
                self._release(st)
            self.seg_held[op.seg] = []

    def _writeback(self, op, t: str) -> None:
        info = self.prog.tensors[t]
        frac = op.out_frac[op.outputs.index(t)]
        st = self.work.pop((t, op.seg), None)
        src_key = st.key if st is not None else _home(t)
        buf = self.compute.buffers.get(src_key)
        jobs: list[Job] = []
        for tier, nbytes in info.home.items():
            if tier == self.fast:
                continue
            dst = self._slow(tier, t)
            self.home_alloc.add((t, tier))
            size = int(nbytes * frac)
            offset = 0
            if info.cls == "kv" and frac < 1.0:  # an append lands after what is there
                offset = min(self.extent.get((t, tier), 0), nbytes - size)
                self.extent[(t, tier)] = offset + size
            staging = buf if buf is not None else self.compute.alloc(self._key("wb", t), size)

            def run(stream, dst=dst, staging=staging, size=size, offset=offset, nbytes=nbytes):
                dst.write(t, staging, size, stream, offset=offset, reserve=nbytes)

            job = Job(copy_job(t, self.fast, tier), size, run)
            if self.backend.is_cuda:  # the copy reads what the compute stream just wrote
                job.ready = self.torch.cuda.Event()
                job.ready.record()
            jobs.append(job)
        hold = self.ring_hold(op.seg, self.seg_started) if st is not None else None
        if hold is not None:  # the ring's working copy, given back as the simulator gives it back
            self.wb_held.setdefault(hold, []).append(st)
        elif st is not None:  # the working copy is given back when every write of it has landed
            left = [len(jobs)]

            def landed(st=st, left=left) -> None:
                with self.lock:
                    left[0] -= 1
                    if left[0] == 0:
                        self._release(st)
            for job in jobs:
                job.landed = landed
        for job in jobs:
            tier = copy_job_destination(job.name)
            self._engine(self.fast, tier).submit(job)
            self.avail[(t, op.index, tier)] = job
            self.seg_wb.setdefault(op.seg, []).append(job)
            self.writes.append(job)

    def _release(self, st: _Stage) -> None:
        with self.lock:
            st.refs -= 1
            if st.refs > 0:
                return
            if st.skey is not None:
                del self.stages[st.skey]
            self.compute.free(st.key)

    def _reap(self, block: bool) -> None:
        """Surface a failed write-back (its buffer went back on the engine's thread)."""
        keep = []
        for job in self.writes:
            if block:
                wait(job, self.torch if self.backend.is_cuda else None)
            if not job.done.is_set():
                keep.append(job)
                continue
            if job.error is not None:
                raise job.error
        self.writes = keep
        if block:
            self.backend.sync()

    # -- helpers ------------------------------------------------------------------------------

    def _key(self, kind: str, t: str) -> str:
        self.next_id += 1
        return f"{kind}:{t}#{self.next_id}"

    def _engine(self, src: str, dst: str) -> Engine:
        key = (src, dst)
        if key not in self.engines:
            self.engines[key] = Engine(f"{src}->{dst}", self.torch, self.backend.is_cuda)
        return self.engines[key]

    def _mark(self):
        if self.backend.is_cuda:
            ev = self.torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter_ns()

    def _elapsed(self, start, end) -> float:
        if self.backend.is_cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return (end - start) / 1e9

    def _time(self, fn) -> tuple[float, object]:
        if self.backend.is_cuda:  # events resolved after the step: no host sync per op
            a, b = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            return 0.0, (a, b)
        t0 = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - t0) / 1e9, None

    def _summary(self, step_s: float) -> dict:
        ops, by_kind, compute_s, recompute_s = [], {}, 0.0, 0.0
        for name, kind, recompute, seconds, events in self.op_times:
            if events is not None:
                seconds = events[0].elapsed_time(events[1]) / 1e3
            ops.append((name, seconds))
            by_kind[kind] = by_kind.get(kind, 0.0) + seconds
            compute_s += seconds
            recompute_s += seconds if recompute else 0.0
        copy_bytes: dict[str, int] = {}
        copy_log: dict[str, list[tuple[str, int]]] = {}
        spans: dict[str, list[tuple[int, float, float]]] = {}
        for engine in self.engines.values():
            copy_bytes[engine.name] = sum(j.nbytes for j in engine.history)
            copy_log[engine.name] = [(copy_job_tensor(j.name), j.nbytes) for j in engine.history]
            spans[engine.name] = [(j.nbytes, (j.start_ns - self.t0_ns) / 1e9,
                                   (j.end_ns - self.t0_ns) / 1e9) for j in engine.history]
            engine.history.clear()
        peaks = {name: ledger.peak for name, ledger in self._ledgers().items()}
        return {"step_s": step_s, "compute_s": compute_s, "wait_s": self.wait_s,
                "recompute_s": recompute_s, "op_s": by_kind, "ops": ops, "copy_bytes": copy_bytes,
                "copy_log": copy_log, "copy_spans": spans, "peak_bytes": peaks}

    def _ledgers(self) -> dict:
        return {self.compute.name: self.compute.ledger, **{n: t.ledger for n, t in self.slow.items()}}

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        for tier in self.slow.values():
            tier.close()
        self.compute.close()


def _home(t: str) -> str:
    return f"home:{t}"


def _filled(compute: ComputeTier, nbytes: int, seed: int):
    buf = compute.alloc("__setup__", nbytes, account=False)
    fill_random(buf, nbytes, seed)
    return buf
