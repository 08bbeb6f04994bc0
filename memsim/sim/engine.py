"""The step engine: runs a Program (one training or inference step) on simpy.

Processes: one stream per compute unit (GPU, CPU, comm) executing its ops in program order, copy
processes on FIFO engines (``flows.Copier``), and the flow manager sharing bandwidth. An op waits
for its inputs: the op that last wrote each (on another stream) and, for bytes homed off its
unit's memory, the staged copy fetched for its segment. Fetches for segment k are issued when
segment k − ``prefetch_depth`` starts (segments start in program order). Outputs homed off the
unit's memory are written back after the last op of the segment that writes them; tensors are
freed after their last use; staged copies when no issued segment holds them any more.

Memory: a tensor's home bytes are taken at its birth (or, off the unit's tier, when its first
write-back starts) and given back at its death; a copy's destination bytes when the copy starts.
"""

from __future__ import annotations

import time

import simpy

from memsim.hardware.spec import Compute, System
from memsim.sim.flows import Copier, Flow, FlowManager
from memsim.sim.memory import Pool
from memsim.sim.program import Program
from memsim.sim.result import OOM, Result
from memsim.sim.timeline import Recorder

CATEGORIES = ("compute", "recompute", "exposed_transfer", "memory_wait", "cpu")


class Stage:
    """Bytes of one tensor version staged on a tier (fetched, or a working copy of an output)."""

    __slots__ = ("bytes", "event", "key", "refs", "skey", "tier")

    def __init__(self, tier: str, key: str, nbytes: int, event: simpy.Event | None):
        self.tier, self.key, self.bytes, self.event, self.refs = tier, key, nbytes, event, 0
        self.skey: tuple | None = None  # its key in StepEngine.stages, if shared there


class Clock:
    """Shared simpy environment, pools, flows and copier: what the step and serving engines use."""

    def __init__(self, system: System, timeline: bool):
        self.system = system
        self.env = simpy.Environment()
        self.recorder = Recorder() if timeline else None
        self.oom: OOM | None = None
        self.notes: list[str] = []
        self.current_op = "start"
        env = self.env
        on_change = self._counter if self.recorder is not None else None
        self.pools = {name: Pool(name, tier.capacity, lambda: env.now, self._on_oom, on_change)
                      for name, tier in system.tiers.items()}
        self.flows = FlowManager(env, system)
        self.copier = Copier(env, system, self.flows, self.pools, self.recorder)
        self.events = 0
        self.last_t = 0.0

    def _on_oom(self, pool: Pool, op: str, nbytes: int) -> None:
        if self.oom is None:
            self.oom = pool.oom_record(self.env.now, op)

    def _counter(self, pool: Pool) -> None:
        self.recorder.counter(pool.name, self.env.now, pool.used)

    def run(self) -> None:
        """Process every event, counting them; simulated time must never run backward."""
        env = self.env
        step = env.step
        n = 0
        last = 0.0
        try:
            while True:
                step()
                n += 1
                if env._now < last:  # pragma: no cover - simpy guarantees it; we check it
                    raise AssertionError("simulated time ran backward")
                last = env._now
        except simpy.core.EmptySchedule:
            pass
        self.events += n


def unit_spec(system: System, unit: str) -> Compute:
    return system.gpu if unit == "gpu" else system.cpu


class StepEngine:
    def __init__(self, system: System, prog: Program, depth: int, timeline: bool,
                 meta: dict | None = None):
        self.sys, self.prog = system, prog
        self.trace_meta = meta or {}
        self.clock = Clock(system, timeline)
        self.env = self.clock.env
        self.pools = self.clock.pools
        self.depth = max(0, depth)
        ops = prog.ops
        self.op_done = [self.env.event() for _ in ops]
        self.avail: dict[tuple, simpy.Event] = {}
        self.stages: dict[tuple, Stage] = {}
        self.seg_stage: dict[tuple, Stage] = {}
        self.seg_held: list[list[Stage]] = [[] for _ in prog.segments]
        self.seg_left = [len(s.ops) for s in prog.segments]
        self.seg_started = [False] * len(prog.segments)
        self.seg_start_ev: dict[int, simpy.Event] = {}
        self.issued = -1
        self.home_alloc: set[tuple[str, str]] = set()
        self.work: dict[tuple[str, int], Stage] = {}
        self.main = "gpu" if "gpu" in prog.units else "cpu"
        self.acct = dict.fromkeys(CATEGORIES, 0.0)
        self.main_end = 0.0
        self.last_kind = "compute"
        self.comm = self._comm_link()
        self.busy: dict[str, float] = {}
        self.unit_end: dict[str, float] = {}

    # -- setup ----------------------------------------------------------------------------------

    def _comm_link(self):
        for kind in ("nvlink", "network"):
            for link in self.sys.links:
                if link.kind == kind:
                    return link
        if any(op.unit == "comm" for op in self.prog.ops):
            self.clock.notes.append("no nvlink/network link: collective (comm) ops take no time")
        return None

    def run(self) -> Result:
        wall = time.perf_counter()
        for name, info in self.prog.tensors.items():
            if info.birth is None:
                for tier, nbytes in info.home.items():
                    self.pools[tier].alloc(name, nbytes, "initial")
                    self.home_alloc.add((name, tier))
        streams: dict[str, list[int]] = {}
        for op in self.prog.ops:
            streams.setdefault(op.unit, []).append(op.index)
        for unit in sorted(streams):
            self.env.process(self._stream(unit, streams[unit]))
        self.clock.run()
        unfinished = [op.name for op, ev in zip(self.prog.ops, self.op_done, strict=True) if not ev.processed]
        if unfinished:  # pragma: no cover - a scheduling bug, never a user error
            raise RuntimeError(f"simulation stalled before {unfinished[0]!r} ({len(unfinished)} ops left)")
        return self._result(time.perf_counter() - wall)

    # -- streams --------------------------------------------------------------------------------

    def _stream(self, unit: str, indices: list[int]):
        env = self.env
        ops = self.prog.ops
        spec = unit_spec(self.sys, unit) if unit != "comm" else None
        main = unit == self.main
        acct = self.acct
        rec = self.clock.recorder
        for i in indices:
            op = ops[i]
            s = op.seg
            if not self.seg_started[s]:
                if s > 0 and not self.seg_started[s - 1]:
                    t0 = env.now
                    yield self._started(s - 1)
                    if main:
                        acct[self._seg_cat(s - 1)] += env.now - t0
                self._start_segment(s)
            for ev, cat in self._deps(op):
                if ev.callbacks is not None:
                    t0 = env.now
                    yield ev
                    if main:
                        acct[cat] += env.now - t0
            self.clock.current_op = op.name
            self._produce(op)
            t0 = env.now
            if spec is None:
                yield env.timeout(self._comm_time(op.nbytes))
            else:
                dur = spec.op_time(op.flops, op.nbytes, op.dtype, op.kind, op.phase)
                if spec.copy_slowdown > 0:
                    flow = Flow(dur, 1.0, env.event())
                    flow.tier, flow.slow = op.mem, spec.copy_slowdown
                    yield self.clock.flows.start(flow)
                else:
                    yield env.timeout(dur)
            t1 = env.now
            self.busy[unit] = self.busy.get(unit, 0.0) + (t1 - t0)
            self.unit_end[unit] = t1
            if main:
                acct["recompute" if op.recompute else "compute"] += t1 - t0
                self.main_end = t1
            if rec is not None:
                rec.span(unit, op.name, t0, t1, {"flops": op.flops, "bytes": op.nbytes})
            self._finish(op)

    def _seg_cat(self, s: int) -> str:
        units = {self.prog.ops[i].unit for i in self.prog.segments[s].ops}
        return "cpu" if "cpu" in units and self.main != "cpu" else "exposed_transfer"

    def _comm_time(self, nbytes: float) -> float:
        if self.comm is None:
            return 0.0
        return self.comm.latency + nbytes / self.comm.rate(self.comm.ends[0])

    def _started(self, s: int) -> simpy.Event:
        if s not in self.seg_start_ev:
            self.seg_start_ev[s] = self.env.event()
        return self.seg_start_ev[s]

    def _start_segment(self, s: int) -> None:
        self.seg_started[s] = True
        if s in self.seg_start_ev:
            self.seg_start_ev[s].succeed()
        last = min(s + self.depth, len(self.prog.segments) - 1)
        while self.issued < last:
            self.issued += 1
            self._issue(self.issued)

    # -- data dependencies and fetches ---------------------------------------------------------

    def _avail(self, t: str, w: int | None, tier: str) -> simpy.Event | None:
        """When version ``w`` (the writer's op index) of ``t`` is present on its home ``tier``."""
        if w is None:
            return None
        if self.prog.ops[w].mem == tier:
            return self.op_done[w]
        key = (t, w, tier)
        ev = self.avail.get(key)
        if ev is None:
            ev = self.avail[key] = self.env.event()
        return ev

    def _sources(self, op, k: int) -> dict[str, int]:
        """Where input ``k`` of ``op`` must be fetched from (tier → bytes), if anywhere."""
        t = op.inputs[k]
        w = op.writers[k]
        info = self.prog.tensors[t]
        frac = op.in_frac[k]
        if w is not None and self.prog.ops[w].seg == op.seg:
            wmem = self.prog.ops[w].mem
            return {} if wmem == op.mem else {wmem: int(info.bytes * frac)}
        return {h: int(b * frac) for h, b in info.home.items() if h != op.mem}

    def _issue(self, s: int) -> None:
        """Stage every input of segment ``s`` that lives off its op's memory tier."""
        ops = self.prog.ops
        for i in self.prog.segments[s].ops:
            op = ops[i]
            for k, t in enumerate(op.inputs):
                if t in op.no_fetch or (s, t, op.mem) in self.seg_stage:
                    continue
                sources = self._sources(op, k)
                if not sources:
                    continue
                w = op.writers[k]
                key = (t, op.mem, w, op.in_frac[k])
                st = self.stages.get(key)
                if st is None:
                    st = self.stages[key] = self._fetch(t, op, w, sources)
                    st.skey = key
                st.refs += 1
                self.seg_stage[(s, t, op.mem)] = st
                self.seg_held[s].append(st)

    def _fetch(self, t: str, op, w: int | None, sources: dict[str, int]) -> Stage:
        same_seg = w is not None and self.prog.ops[w].seg == op.seg
        events = []
        for src, nbytes in sources.items():
            after = self.op_done[w] if same_seg else self._avail(t, w, src)
            events.append(self.clock.copier.copy(src, op.mem, nbytes, t, op.name, after=after))
        ev = events[0] if len(events) == 1 else self.env.all_of(events)
        return Stage(op.mem, t, sum(sources.values()), ev)

    def _deps(self, op):
        ops = self.prog.ops
        for k, t in enumerate(op.inputs):
            if t in op.no_fetch:
                continue
            w = op.writers[k]
            if w is not None and ops[w].seg == op.seg:
                if ops[w].mem == op.mem:
                    yield self.op_done[w], self._cat(ops[w].unit)
                else:
                    yield self.seg_stage[(op.seg, t, op.mem)].event, "exposed_transfer"
                continue
            info = self.prog.tensors[t]
            if op.mem in info.home and w is not None:
                ev = self._avail(t, w, op.mem)
                yield ev, (self._cat(ops[w].unit) if ops[w].mem == op.mem else "exposed_transfer")
            st = self.seg_stage.get((op.seg, t, op.mem))
            if st is not None:
                yield st.event, "exposed_transfer"

    def _cat(self, unit: str) -> str:
        return {"cpu": "cpu", "comm": "exposed_transfer"}.get(unit, "compute") \
            if unit != self.main else "compute"

    # -- outputs, write-backs, deaths ----------------------------------------------------------

    def _produce(self, op) -> None:
        for k, t in enumerate(op.outputs):
            info = self.prog.tensors[t]
            m = op.mem
            if m in info.home and (t, m) not in self.home_alloc:
                self.pools[m].alloc(t, info.home[m], op.name)
                self.home_alloc.add((t, m))
            off = sum(b for h, b in info.home.items() if h != m)
            if off <= 0 or (t, op.seg) in self.work:
                continue
            st = self.seg_stage.get((op.seg, t, m))
            if st is None:
                nbytes = int(off * op.out_frac[k])
                st = Stage(m, t, nbytes, None)
                self.pools[m].alloc(t, nbytes, op.name)
            st.refs += 1
            self.work[(t, op.seg)] = st

    def _finish(self, op) -> None:
        self.op_done[op.index].succeed()
        for t in op.writeback:
            self._writeback(op, t)
        for t in op.dies:
            info = self.prog.tensors[t]
            for tier, nbytes in info.home.items():
                if (t, tier) in self.home_alloc:
                    self.home_alloc.discard((t, tier))
                    self.pools[tier].free(t, nbytes)
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
        events = []
        for tier, nbytes in info.home.items():
            if tier == op.mem:
                continue
            first = (t, tier) not in self.home_alloc
            self.home_alloc.add((t, tier))
            ev = self.clock.copier.copy(op.mem, tier, int(nbytes * frac), t, op.name,
                                        alloc=nbytes if first else 0)
            target = self._avail(t, op.index, tier)
            ev.callbacks.append(lambda _e, target=target: target.succeed())
            events.append(ev)
        if st is not None:
            done = events[0] if len(events) == 1 else self.env.all_of(events)
            done.callbacks.append(lambda _e, st=st: self._release(st))

    def _release(self, st: Stage) -> None:
        st.refs -= 1
        if st.refs > 0:
            return
        if st.skey is not None:
            del self.stages[st.skey]
        self.pools[st.tier].free(st.key, st.bytes)

    # -- result ---------------------------------------------------------------------------------

    def _result(self, wall_s: float) -> Result:
        from memsim.sim.report import step_result

        return step_result(self, wall_s)
