"""Replay a Trace + Plan on this machine with torch: real kernels, real tiers, real copies.

The Schedule (``schedule.py``) says what happens in which order; this module makes it happen:
kernels of the trace's shapes on the compute tier (``kernels.py``), bytes homed on a slow tier
kept there for real (files on disk with the page cache bypassed; pinned host memory under a GPU,
``tiers.py``), copies on FIFO engines, one thread (and CUDA stream) per direction, so they
overlap compute exactly as far as the plan lets them (``engines.py``). It measures each op, the
whole step (``perf_counter_ns`` on the CPU, CUDA events on a GPU), the time the compute side
waited for copies, and the peak bytes per tier.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from memsim.errors import SpecError
from memsim.hardware.spec import System
from memsim.planners.plan import Plan, trace_fingerprint
from memsim.validation.backend import Backend, make_backend
from memsim.validation.calibrate import set_compute_threads
from memsim.validation.diskio import Scratch, probe_mode
from memsim.validation.engines import Engine, Job, wait
from memsim.validation.kernels import Kernels
from memsim.validation.schedule import Schedule, Transfer, Window, build_schedule
from memsim.validation.tiers import ComputeTier, DiskTier, HostTier, fill_random
from memsim.workloads.trace import PERSISTENT, Trace


@dataclass
class Measurement:
    """What one replay measured (medians over the repeated steps)."""

    step_s: float
    steps_s: list[float]
    compute_s: float  # sum of op times of the median step
    wait_s: float  # compute side blocked on copies (exposed transfer)
    recompute_s: float
    op_s: dict[str, float]  # seconds by op kind, median step
    peak_bytes: dict[str, int]
    copy_bytes: dict[str, int]  # by engine (src->dst)
    workspace_bytes: int  # kernel operands, outside the plan's accounting
    device: str
    disk_mode: str | None
    source: str = "measured"
    ops: list[tuple[str, float]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "ops"}


def check_plan(trace: Trace, plan: Plan, system: System, file: str = "plan") -> None:
    """A plan written for another workload, or naming tiers this system lacks, is bad input."""
    if plan.workload and plan.workload != trace.name:
        raise SpecError(f"the plan is for workload {plan.workload!r}, not {trace.name!r}",
                        file=file, key="workload")
    if plan.fingerprint and plan.fingerprint != trace_fingerprint(trace):
        raise SpecError(f"the plan was made for another trace (fingerprint {plan.fingerprint}, this "
                        f"trace has {trace_fingerprint(trace)}); re-plan for this workload",
                        file=file, key="fingerprint")
    plan.check(system.tiers, file=file)


def replay(system: System, trace: Trace, plan: Plan, device: str = "cpu", repeats: int = 3,
           scratch: str | Path | None = None, plan_file: str = "plan",
           progress: Callable[[], None] | None = None) -> Measurement:
    """Run the step ``repeats`` times (after setup) and report the median."""
    check_plan(trace, plan, system, plan_file)
    backend = make_backend(device)
    set_compute_threads(backend)
    compute = _compute_tier(system, backend)
    sched = build_schedule(trace, plan, compute)
    with Scratch(scratch) as folder:
        runner = _Runner(system, sched, backend, folder)
        try:
            runner.setup()
            results = []
            for _ in range(max(1, repeats)):
                results.append(runner.step())
                if progress:
                    progress()
        finally:
            runner.close()
    steps = [r["step_s"] for r in results]
    median = sorted(results, key=lambda r: r["step_s"])[len(results) // 2]
    return Measurement(
        step_s=statistics.median(steps), steps_s=steps, compute_s=median["compute_s"],
        wait_s=median["wait_s"], recompute_s=median["recompute_s"], op_s=median["op_s"],
        peak_bytes=runner.peaks(), copy_bytes=median["copy_bytes"],
        workspace_bytes=runner.kernels.workspace_bytes, device=device, disk_mode=runner.disk_mode,
        ops=median["ops"])


def _compute_tier(system: System, backend: Backend) -> str:
    unit = system.gpu if backend.is_cuda else system.cpu
    if unit is None:
        raise SpecError(f"the system has no {'gpu' if backend.is_cuda else 'cpu'} compute unit to "
                        f"replay on with --device {backend.device}", key="compute")
    return unit.memory


class _Runner:
    """State of one replay: tiers, engines, kernels; ``step()`` runs the schedule once."""

    def __init__(self, system: System, sched: Schedule, backend: Backend, folder: Path):
        self.system, self.sched, self.backend, self.torch = system, sched, backend, backend.torch
        self.compute = ComputeTier(sched.compute_tier, backend)
        self.disk_mode = None
        self.slow: dict[str, DiskTier | HostTier] = {}
        for name, tier in system.tiers.items():
            if name == sched.compute_tier:
                continue
            if tier.kind in ("ssd", "flash"):
                self.disk_mode = self.disk_mode or probe_mode(folder)
                self.slow[name] = DiskTier(name, folder, self.disk_mode, backend)
            elif tier.kind == "dram" and backend.is_cuda:
                self.slow[name] = HostTier(name, backend)
        self.engines: dict[tuple[str, str], Engine] = {}
        self.kernels = Kernels(backend)

    # -- setup (untimed) ----------------------------------------------------------------------

    def setup(self) -> None:
        """Persistent tensors to their homes, kernels built and run once (warm caches)."""
        sched = self.sched
        for seed, name in enumerate(sorted(sched.sizes)):
            if sched.classes[name] not in PERSISTENT:
                continue
            self._tier_used(name)
            resident = sched.resident_bytes(name)
            if resident:
                self.compute.alloc(name, resident)
            for tier, nbytes in sched.off_tier(name):
                buf = self.compute.alloc("__staging__", nbytes)
                fill_random(buf, nbytes, seed)
                self.slow[tier].write(name, buf, nbytes)
                self.compute.free("__staging__")
        for w in sched.windows:
            for x, _ in w.ops:
                fn = self.kernels.get(x.op)
                if fn:
                    fn()
        self.backend.sync()
        self.base = {t: lg.now for t, lg in self._ledgers().items()}

    def _tier_used(self, name: str) -> None:
        for tier, _ in self.sched.off_tier(name):
            if tier not in self.slow:
                kind = self.system.tiers[tier].kind
                raise SpecError(f"the plan homes {name} on tier {tier!r} ({kind}); a replay on "
                                f"{self.backend.device} can use {sorted(self.slow) or 'no slow tier'}",
                                key=f"placement.{self.sched.classes[name]}.{tier}")

    # -- one step (timed) ---------------------------------------------------------------------

    def step(self) -> dict:
        for ledger in self._ledgers().values():
            ledger.reset_peak()
        self.pending: dict[int, list[tuple[Transfer, Job]]] = {}
        self.stores: list[tuple[Transfer, int, Job]] = []
        self.fetching: set[str] = set()
        self.last_store: dict[str, Job] = {}
        self.op_times: list[tuple[str, str, bool, float, object]] = []
        self.wait_s = 0.0
        windows = self.sched.windows
        self.backend.sync()
        start = self._mark()
        for w in windows:
            for later in windows:
                if later.issue_at == w.index and later.index not in self.pending:
                    self._issue(later)
            self._await(w)
            self._run(w)
            self._finish(w)
            self._reap(block=False)
        self._reap(block=True)
        end = self._mark()
        step_s = self._elapsed(start, end)
        return self._summary(step_s)

    def _issue(self, w: Window) -> None:
        jobs = []
        for tr in w.fetch:
            buf = self.compute.alloc(self._buf_name(tr, w.index), tr.nbytes)
            if self.sched.classes[tr.tensor] == "activation":
                self.fetching.add(tr.tensor)
            src = self.slow[tr.src]
            before = self.last_store.get(tr.tensor)  # read after its write has landed

            def run(stream, src=src, tr=tr, buf=buf, before=before):
                if before is not None:
                    before.done.wait()
                src.read(tr.tensor, buf, tr.nbytes, stream)

            job = Job(f"{tr.tensor}:{tr.src}->{tr.dst}", tr.nbytes, run)
            jobs.append((tr, self._engine(tr.src, tr.dst).submit(job)))
        self.pending[w.index] = jobs

    def _await(self, w: Window) -> None:
        t0 = time.perf_counter_ns()
        for _, job in self.pending.get(w.index, []):
            wait(job, self.torch if self.backend.is_cuda else None)
        self.wait_s += (time.perf_counter_ns() - t0) / 1e9

    def _run(self, w: Window) -> None:
        deaths = self.sched.lifetimes
        for x, recompute in w.ops:
            for name in x.outputs:
                if self.sched.classes[name] not in PERSISTENT and name not in self.compute:
                    self.compute.alloc(name, self.sched.sizes[name])
            fn = self.kernels.get(x.op)
            t = self._time(fn) if fn else (0.0, None)
            self.op_times.append((x.name, x.op.kind, recompute, *t))
            for name in (*x.inputs, *x.outputs):
                if deaths[name][1] == x.index and self.sched.classes[name] not in PERSISTENT:
                    self.compute.free(name)
                    self.fetching.discard(name)

    def _finish(self, w: Window) -> None:
        """After a window: write back what it stored, drop what it dropped, release fetches."""
        for tr in w.store:
            staged = self._buf_name(tr, w.index)
            buf = self.compute.buffers.get(staged if staged in self.compute else tr.tensor)
            if buf is None:
                continue
            dst = self.slow[tr.dst]
            job = Job(f"{tr.tensor}:{tr.src}->{tr.dst}", tr.nbytes,
                      lambda stream, dst=dst, tr=tr, buf=buf: dst.write(tr.tensor, buf, tr.nbytes, stream))
            self.stores.append((tr, w.index, self._engine(tr.src, tr.dst).submit(job)))
            self.last_store[tr.tensor] = job
        for name in w.drop:
            self.compute.free(name)
        stored = {tr.tensor for tr in w.store}
        for tr, _ in self.pending.pop(w.index, []):
            if self.sched.classes[tr.tensor] != "activation" and tr.tensor not in stored:
                self.compute.free(self._buf_name(tr, w.index))

    def _reap(self, block: bool) -> None:
        """Free compute-tier copies of stored tensors once their write has landed."""
        keep = []
        for tr, index, job in self.stores:
            if block:
                wait(job, self.torch if self.backend.is_cuda else None)
            if not job.done.is_set():
                keep.append((tr, index, job))
                continue
            if job.error is not None:
                raise job.error
            if self.sched.classes[tr.tensor] == "activation":
                if tr.tensor not in self.fetching:  # already on its way back: keep the buffer
                    self.compute.free(tr.tensor)
            else:
                self.compute.free(self._buf_name(tr, index))
                if self.sched.classes[tr.tensor] not in PERSISTENT:
                    self.compute.free(tr.tensor)
        self.stores = keep
        if block:
            self.backend.sync()

    # -- helpers ------------------------------------------------------------------------------

    def _buf_name(self, tr: Transfer, window: int) -> str:
        """The compute-tier buffer a transfer fills or drains: an activation's own buffer, or the
        window's staging copy of a slow-tier home (``name@tier#window``) beside any resident part."""
        if self.sched.classes[tr.tensor] == "activation":
            return tr.tensor
        return f"{tr.tensor}@{tr.src if tr.dst == self.compute.name else tr.dst}#{window}"

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
        for engine in self.engines.values():
            copy_bytes[engine.name] = sum(j.nbytes for j in engine.history)
            engine.history.clear()
        return {"step_s": step_s, "compute_s": compute_s, "wait_s": self.wait_s,
                "recompute_s": recompute_s, "op_s": by_kind, "ops": ops, "copy_bytes": copy_bytes}

    def _ledgers(self) -> dict:
        return {self.compute.name: self.compute.ledger, **{n: t.ledger for n, t in self.slow.items()}}

    def peaks(self) -> dict[str, int]:
        return {name: ledger.peak for name, ledger in self._ledgers().items()}

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        for tier in self.slow.values():
            tier.close()

