"""The step engine: runs a Program (one training or inference step) on simpy.

Processes: one stream per compute unit (GPU, CPU, comm) executing its ops in program order, copy
processes on FIFO engines (``flows.Copier``), and the flow manager sharing bandwidth. An op waits
for its inputs: the op that last wrote each (on another stream) and, for bytes homed off its
unit's memory, the staged copy fetched for its segment. Fetches for the segments of layer
j + ``prefetch_depth`` are issued when a segment of layer j starts (segments start in program
order; FlexGen's GPU batches of one layer count once). Outputs homed off the
unit's memory are written back after the last op of the segment that writes them; tensors are
freed after their last use; staged copies when no issued segment holds them any more.

Memory: a tensor's home bytes are taken at its birth (or, off the unit's tier, when its first
write-back starts) and given back at its death; a copy's destination bytes when the copy starts.
"""

from __future__ import annotations

import time
from heapq import heappop

import simpy

from memsim.contracts.result import OOM, Result
from memsim.hardware.collectives import Path, trace_comm_path
from memsim.hardware.overheads import reserved_lines
from memsim.hardware.spec import Compute, System
from memsim.sim.flows import Copier, Flow, FlowManager
from memsim.sim.memory import Pool
from memsim.sim.program import Program, paused_gc
from memsim.sim.timeline import Recorder

CATEGORIES = ("compute", "recompute", "exposed_transfer", "memory_wait", "cpu")


class Stage:
    """Bytes of one tensor version staged on a tier (fetched, or a working copy of an output)."""

    __slots__ = ("bytes", "event", "key", "refs", "skey", "src_cat", "src_t", "tier")

    def __init__(self, tier: str, key: str, nbytes: int, event: simpy.Event | None):
        self.tier, self.key, self.bytes, self.event, self.refs = tier, key, nbytes, event, 0
        self.skey: tuple | None = None  # its key in StepEngine.stages, if shared there
        self.src_t = 0.0  # when its source version became available (the copy could start)
        self.src_cat = "exposed_transfer"  # what a wait before src_t is waiting for


class Clock:
    """Shared simpy environment, pools, flows and copier: what the step and serving engines use."""

    def __init__(self, system: System, timeline: bool, meta: dict | None = None,
                 resident: dict[str, list[int]] | None = None):
        self.system = system
        self.env = simpy.Environment()
        self.recorder = Recorder() if timeline else None
        self.oom: OOM | None = None
        self.notes: list[str] = []
        env = self.env
        on_change = self._counter if self.recorder is not None else None
        self.pools = {name: Pool(name, tier.capacity, env, self._on_oom, on_change)
                      for name, tier in system.tiers.items()}
        self.flows = FlowManager(env, system)
        self.copier = Copier(env, system, self.flows, self.pools, self.recorder)
        self.events = 0
        self.reserved = reserved_lines(system, meta, resident)  # non-tensor bytes, from t=0
        for tier, lines in self.reserved.items():
            for line, nbytes in lines.items():
                self.pools[tier].alloc(f"<{line}>", nbytes, f"process start ({line})")

    def _on_oom(self, pool: Pool, op: str, _nbytes: int) -> None:
        if self.oom is None:
            self.oom = pool.oom_record(self.env.now, op)

    def _counter(self, pool: Pool) -> None:
        self.recorder.counter(pool.name, self.env.now, pool.used)

    def run(self, until_oom: bool = False) -> None:
        """Process every event, counting them; simulated time must never run backward.
        ``until_oom``: stop after the event that overflowed a tier first (``StepEngine.first_oom``).

        simpy's ``Environment.step`` inlined (pop the earliest event, run its callbacks, crash on
        an undefused failure): a method call and an exception frame per event were a tenth of
        the loop. ``StopSimulation`` is not handled: nothing raises it."""
        env = self.env
        queue = env._queue
        pop = heappop
        n = 0
        last = 0.0
        while queue:
            now, _, _, event = pop(queue)
            if now < last:  # pragma: no cover - simpy guarantees it; we check it
                raise AssertionError("simulated time ran backward")
            env._now = last = now
            callbacks, event.callbacks = event.callbacks, None
            for callback in callbacks:
                callback(event)
            n += 1
            if not event._ok and not hasattr(event, "_defused"):  # as simpy: crash with a copy
                exc = type(event._value)(*event._value.args)
                exc.__cause__ = event._value
                raise exc
            if until_oom and self.oom is not None:
                break
        self.events += n


def unit_spec(system: System, unit: str) -> Compute:
    return system.gpu if unit == "gpu" else system.cpu


class StepEngine:
    def __init__(self, system: System, prog: Program, depth: int, timeline: bool,
                 meta: dict | None = None):
        self.sys, self.prog = system, prog
        self.trace_meta = meta or {}
        resident: dict[str, list[int]] = {}
        for info in prog.tensors.values():
            if info.birth is None:
                for tier, nbytes in info.held.items():
                    resident.setdefault(tier, []).append(nbytes)
        self.clock = Clock(system, timeline, self.trace_meta, resident)
        self.clock.copier.serial = prog.staging == "serial"
        self.env = self.clock.env
        self.pools = self.clock.pools
        self.depth = max(0, depth)
        n = len(prog.ops)
        self.done = bytearray(n)
        self.done_ev: dict[int, simpy.Event] = {}  # only for ops someone waits on
        self.avail: dict[tuple, simpy.Event] = {}
        self.stages: dict[tuple, Stage] = {}
        self.seg_stage: dict[tuple, Stage] = {}
        self.seg_held: list[list[Stage]] = [[] for _ in prog.segments]
        self.seg_left = [len(s.ops) for s in prog.segments]
        self.seg_started = [False] * len(prog.segments)
        self.seg_start_ev: dict[int, simpy.Event] = {}
        self.issued = -1
        self._layer_window(prog)
        self.home_alloc: set[tuple[str, str]] = set()
        self.work: dict[tuple[str, int], Stage] = {}
        self.seg_work: dict[int, list[str]] = {}
        self.seg_wb: dict[int, list[simpy.Event]] = {}  # write-backs issued per segment
        self.main = "gpu" if "gpu" in prog.units else "cpu"
        self.acct = dict.fromkeys(CATEGORIES, 0.0)
        self.main_end = 0.0
        self.comm = self._comm_link()
        self.busy: dict[str, float] = {}
        self.unit_end: dict[str, float] = {}
        self.cpu_spans: list[tuple[float, float]] = []  # CPU ops, when the GPU is the main unit
        with paused_gc():
            self.dur = self._durations()
            self._plan_dependencies()

    # -- setup ----------------------------------------------------------------------------------

    def _comm_link(self) -> Path | None:
        """The fabric the trace's collectives cross (memsim.hardware.collectives.trace_comm_path:
        NVLink inside a node, PCIe when it has none, the network across nodes)."""
        if "comm" not in {op.unit for op in self.prog.ops}:  # (a set display: 4x any() over a genexpr)
            return None
        path = trace_comm_path(self.sys, int(self.trace_meta.get("data_parallel") or 2))
        if path is None:
            self.clock.notes.append("no nvlink, pcie or network link: collective (comm) ops take no time")
        return path

    def _layer_window(self, prog: Program) -> None:
        """Prefetch depth counts layers, not FlexGen's GPU batches: segments of one (block,
        iteration, layer) form a slot; segment s issues the fetches of every segment up to the
        end of slot(s) + depth (layer j+1's weights load while all GPU batches of layer j run)
        and waits for the write-backs of slot(s) − depth − 1. One GPU batch: slot = segment."""
        ops = prog.ops
        slot, first = [], []  # slot of each segment; first segment of each slot
        prev = None
        for seg in prog.segments:
            key = ops[seg.ops[0]].group[:3]
            if key != prev:
                first.append(seg.index)
                prev = key
            slot.append(len(first) - 1)
        ends = [*first[1:], len(prog.segments)]
        d = self.depth
        self.ahead = [ends[min(k + d, len(first) - 1)] - 1 for k in slot]
        self.drain = [range(first[k - d - 1], ends[k - d - 1]) if k - d - 1 >= 0 else range(0)
                      for k in slot]
        # One GPU batch: staging is a ring of depth + 2 layer slots (read ahead, compute, write
        # behind), each held whole from its issue to its drain, so what a tier holds changes
        # only at program points, never with which of two racing copies lands first.
        self.ring = len(first) == len(prog.segments)
        self.drained_by: list[int | None] = [None] * len(prog.segments)
        for s in range(len(prog.segments) - 1, -1, -1):
            for x in self.drain[s]:
                self.drained_by[x] = s
        self.wb_held: dict[int, list[tuple[Stage, simpy.Event]]] = {}  # -1: the tail

    def ring_hold(self, seg: int, started: list[bool]) -> int | None:
        """Where the ring holds a working copy segment ``seg`` writes back: until the segment
        that drains ``seg`` starts (its index as the key), or, in the last slots, until the step's
        compute is over (-1); None when it is given back on landing (FlexGen's GPU batches, or a
        draining segment already started by another unit). The replay asks the same question."""
        if not self.ring:
            return None
        by = self.drained_by[seg]
        if by is None:
            return -1
        return None if started[by] else seg

    def _durations(self) -> list[float]:
        """Each op's time alone (roofline, or a collective over the network link), memoised:
        repeated layers and decode iterations share a handful of distinct op costs."""
        cache: dict[tuple, float] = {}
        specs = {u: unit_spec(self.sys, u) for u in self.prog.units if u != "comm"}
        out = []
        for op in self.prog.ops:
            key = (op.unit, op.flops, op.nbytes, op.dtype, op.kind, op.phase, op.rows, op.shape)
            d = cache.get(key)
            if d is None:
                if op.unit == "comm":
                    d = 0.0 if self.comm is None else \
                        self.comm.latency + op.nbytes / (2 * self.comm.rate)  # sent + received
                else:
                    d = specs[op.unit].op_time(op.flops, op.nbytes, op.dtype, op.kind, op.phase,
                                               op.rows, op.shape)
                cache[key] = d
            out.append(d)
        return out

    def _cat(self, unit: str) -> str:
        """What the main stream is waiting for when it waits on an op of ``unit``."""
        if unit == self.main:
            return "compute"
        return "cpu" if unit == "cpu" else "exposed_transfer"

    def _plan_dependencies(self) -> None:
        """Per op, what it waits for and which inputs its segment must fetch — all static.

        deps: (0, writer) its op; (1, tensor, writer) that version on the op's home tier (a
        write-back, or the writer itself); (2, tensor) the copy staged for the segment.
        fetch: (tensor, writer, fraction, {source tier: bytes}, writer in this segment).
        produce: outputs that are born here or have bytes homed off the op's tier, as
        (output index, tensor, (tensor, tier), its home bytes on the tier or None, its bytes
        homed elsewhere): the loop's static half of ``_produce``, computed once per tensor/tier.
        """
        ops, tensors = self.prog.ops, self.prog.tensors
        only_home = {t: next(iter(info.home)) if len(info.home) == 1 else None
                     for t, info in tensors.items()}
        home_of = {t: info.home for t, info in tensors.items()}
        cat = {u: self._cat(u) for u in ("gpu", "cpu", "comm")}
        seg_of = [op.seg for op in ops]
        mem_of = [op.mem for op in ops]
        unit_of = [op.unit for op in ops]
        wb_of = [op.writeback for op in ops]
        self.deps: list[tuple] = []
        self.fetch: list[tuple] = []
        self.produce: list[tuple] = []
        self.fetching: list[list[int]] = [[] for _ in self.prog.segments]  # ops with fetches
        deps_append, fetch_append, produce_append = (self.deps.append, self.fetch.append,
                                                     self.produce.append)
        empty = ()
        src_cache: dict[tuple, dict[str, int]] = {}
        unwritten: dict[tuple, tuple | None] = {}
        births = {info.birth for info in tensors.values()}  # (None among them: no op index)
        produce_cache: dict[tuple, tuple] = {}

        def out_entry(k: int, t: str, mem: str) -> tuple:
            """(k, t, (t, mem), home bytes on mem or None, bytes homed off mem)."""
            if only_home[t] == mem:  # (the common case: born where it lives)
                return (k, t, (t, mem), home_of[t][mem], 0)
            home = home_of[t]
            on_m = home.get(mem)
            return (k, t, (t, mem), on_m, sum(home.values()) - (on_m or 0))
        xfer = "exposed_transfer"
        # KV homed off the compute tier: per tensor the segment that last wrote it, the writer
        # before that segment and the fraction the segment wrote (what a read there has already)
        kv_off = {t for t, info in tensors.items()
                  if info.cls == "kv" and any(h != self.prog.fast for h in info.home)}
        kv_seg: dict[str, list] = {}
        kv_last: dict[str, int] = {}

        def from_home(t: str, mem: str, frac: float) -> tuple | None:
            """(dep, fetch) of reading ``t`` (no writer yet) on ``mem``; None if all there."""
            sources = {h: int(b * frac) for h, b in home_of[t].items() if h != mem}
            hit = unwritten[(t, mem, frac)] = (
                ((2, t, None, xfer), (t, None, frac, sources, False)) if sources else None)
            return hit

        missing = object()
        for op in ops:
            deps, fetch = [], []
            mem, seg, unit, no_fetch = op.mem, op.seg, op.unit, op.no_fetch
            # (writers and in_frac are per input by construction; zip's strict= keyword alone
            # costs ~0.2 us a call, a tenth of this loop on long decode runs)
            for t, w, frac in zip(op.inputs, op.writers, op.in_frac):  # noqa: B905
                if no_fetch and t in no_fetch:
                    continue
                if w is not None:
                    wseg = seg_of[w]
                    if wseg == seg and kv_off and t in kv_off:
                        before = kv_seg[t]
                        if frac - before[2] > 1e-9:
                            # decode attention reads the context so far: what this segment
                            # appended is here; the rest (the writer before it) is fetched from
                            # the KV's home. Also when the append ran elsewhere (FlexGen's CPU
                            # attention over a disk-homed KV cache, the new token's K/V from the
                            # GPU): the past tokens' read does not wait for this step's QKV
                            # (FlexGen: load_cache of the next GPU batch runs beside this one)
                            if unit_of[w] != unit:
                                deps.append((0, w, None, cat[unit_of[w]]))
                            w, frac = before[1], frac - before[2]
                            if w is not None:
                                wseg = seg_of[w]
                if w is None:  # no writer: the same entries for every op reading t on mem
                    if only_home[t] == mem:
                        continue
                    hit = unwritten.get((t, mem, frac), missing)
                    if hit is missing:
                        hit = from_home(t, mem, frac)
                    if hit is not None:
                        deps.append(hit[0])
                        fetch.append(hit[1])
                    continue
                wunit = unit_of[w]
                if wseg == seg and wunit == unit:  # same stream (so same tier): done, in order
                    continue
                wmem = mem_of[w]
                if wseg == seg:  # (by another unit)
                    if wmem == mem:
                        deps.append((0, w, None, cat[wunit]))
                        continue
                    if t not in wb_of[w]:  # the version lives only where written
                        deps.append((2, t, None, xfer))
                        fetch.append((t, w, frac, {wmem: int(tensors[t].bytes * frac)}, True))
                        continue
                if only_home[t] == mem:
                    if wunit != unit:
                        deps.append((1, t, w, cat[wunit] if wmem == mem else xfer))
                    continue
                home = home_of[t]
                if mem in home and wunit != unit:
                    deps.append((1, t, w, cat[wunit] if wmem == mem else xfer))
                key = (t, mem, frac)
                sources = src_cache.get(key)
                if sources is None:  # shared by every op reading t on mem (read-only)
                    sources = src_cache[key] = {h: int(b * frac) for h, b in home.items() if h != mem}
                if sources:
                    deps.append((2, t, None, xfer))
                    fetch.append((t, w, frac, sources, False))
            deps_append(tuple(deps) if deps else empty)
            if fetch:
                fetch_append(tuple(fetch))
                self.fetching[seg].append(op.index)
            else:
                fetch_append(empty)
            outs = op.outputs
            if kv_off:
                for k, t in enumerate(outs):
                    if t in kv_off:
                        before = kv_seg.get(t)
                        if before is None or before[0] != seg:
                            before = kv_seg[t] = [seg, kv_last.get(t), 0.0]
                        before[2] += op.out_frac[k]
                        kv_last[t] = op.index
            if not outs:
                produce_append(empty)
                continue
            idx = op.index
            if len(outs) == 1:  # (the common case, inline: no call, no comprehension's frame)
                t = outs[0]
                h = only_home[t]
                if h == mem:
                    produce_append(((0, t, (t, mem), home_of[t][mem], 0),)
                                   if idx in births and tensors[t].birth == idx else empty)
                elif h is not None:  # homed on one other tier
                    produce_append(((0, t, (t, mem), None, home_of[t][h]),))
                else:
                    produce_append((out_entry(0, t, mem),))
                continue
            if idx in births:
                produce_append(tuple([out_entry(k, t, mem) for k, t in enumerate(outs)
                                      if only_home[t] != mem or tensors[t].birth == idx]))
                continue
            key = (outs, mem)  # no output born here: the same for every op with these outputs
            hit = produce_cache.get(key)
            if hit is None:
                hit = produce_cache[key] = tuple([out_entry(k, t, mem) for k, t in enumerate(outs)
                                                  if only_home[t] != mem])
            produce_append(hit)

    def run(self) -> Result:
        with paused_gc():
            return self._run()

    def first_oom(self) -> OOM | None:
        """The step's first overflow, simulated only as far as it (None: nothing overflows).
        The run is the same event by event up to it, so the record is the whole run's."""
        with paused_gc():
            self._start()
            self.clock.run(until_oom=True)
        return self.clock.oom

    def _run(self) -> Result:
        wall = time.perf_counter()
        self._start()
        self.clock.run()
        if not all(self.done):  # pragma: no cover - a scheduling bug, never a user error
            left = [op.name for op in self.prog.ops if not self.done[op.index]]
            raise RuntimeError(f"simulation stalled before {left[0]!r} ({len(left)} ops left)")
        return self._result(time.perf_counter() - wall)

    def _start(self) -> None:
        """Allocate the resident state and start one process per stream."""
        for name, info in self.prog.tensors.items():
            if info.birth is None:
                for tier, nbytes in info.held.items():
                    self.pools[tier].alloc(name, nbytes, "step start (resident state)")
                    self.home_alloc.add((name, tier))
        streams: dict[str, list[int]] = {}
        for op in self.prog.ops:
            streams.setdefault(op.unit, []).append(op.index)
        for unit in sorted(streams):
            self.env.process(self._stream(unit, streams[unit]))

    # -- streams --------------------------------------------------------------------------------

    def _stream(self, unit: str, indices: list[int]):
        env = self.env
        ops, dur, deps, produce = self.prog.ops, self.dur, self.deps, self.produce
        spec = unit_spec(self.sys, unit) if unit != "comm" else None
        slow = spec.copy_slowdown if spec is not None else 0.0
        main = unit == self.main
        acct = self.acct
        rec = self.clock.recorder
        started, seg_stage = self.seg_started, self.seg_stage
        timeout = env.timeout
        finish = self._finish
        done, done_ev, left = self.done, self.done_ev, self.seg_left
        busy = 0.0
        t0 = 0.0
        behind = unit == "comm" and not main  # collectives wait for the compute (_comm_window)
        seg_prev = -1
        for i in indices:
            op = ops[i]
            s = op.seg
            if behind and s != seg_prev:
                seg_prev = s
                window = self._comm_window(s)
                if window is not None:
                    yield window
            if not started[s]:
                if s > 0 and not started[s - 1]:
                    t0 = env._now
                    yield self._started(s - 1)
                    if main:
                        acct[self._seg_cat(s - 1)] += env._now - t0
                # bounded staging buffers: write-backs of the segment that left the prefetch
                # window must drain before this one starts (DeepSpeed's and FlexGen's swappers)
                pending = [ev for drain in self.drain[s] for ev in self.seg_wb.get(drain, ())
                           if ev.callbacks is not None]
                if pending:
                    t0 = env._now
                    yield env.all_of(pending)
                    if main:
                        acct["memory_wait"] += env._now - t0
                for drain in self.drain[s]:
                    for st, _landed in self.wb_held.pop(drain, ()):
                        self._release(st)
                if not started[s]:  # (another stream may have started it meanwhile)
                    self._start_segment(s)
            for kind, a, b, cat in deps[i]:
                if kind == 0:
                    ev = self._done_event(a)
                elif kind == 1:
                    ev = self._avail(a, b, op.mem)
                else:
                    st = seg_stage[(s, a, op.mem)]
                    ev = st.event
                    if ev.callbacks is not None:
                        t0 = env._now
                        yield ev
                        if main:  # waiting for the producer, then for the copy itself
                            t_src = min(max(st.src_t, t0), env._now)
                            acct[st.src_cat] += t_src - t0
                            acct["exposed_transfer"] += env._now - t_src
                    continue
                if ev is not None and ev.callbacks is not None:
                    t0 = env._now
                    yield ev
                    if main:
                        acct[cat] += env._now - t0
            if produce[i]:
                self._produce(op, produce[i])
            t0 = env._now
            if slow > 0:
                yield self.clock.flows.start(Flow.op(dur[i], env.event(), op.mem, slow))
            else:
                yield timeout(dur[i])
            t1 = env._now
            busy += t1 - t0
            if main:
                acct["recompute" if op.recompute else "compute"] += t1 - t0
                self.main_end = t1
            elif unit == "cpu":
                self.cpu_spans.append((t0, t1))
            if rec is not None:
                rec.span(unit, op.name, t0, t1, {"flops": op.flops, "bytes": op.nbytes})
            # _finish's every-op half inline (a call per op is a tenth of the loop's own time)
            done[i] = 1
            if done_ev:
                ev = done_ev.pop(i, None)
                if ev is not None:
                    ev.succeed()
            left[s] -= 1
            if op.writeback or op.dies or not left[s]:
                finish(op)
        self.busy[unit] = busy
        self.unit_end[unit] = env._now

    def _seg_cat(self, s: int) -> str:
        units = {self.prog.ops[i].unit for i in self.prog.segments[s].ops}
        return "cpu" if "cpu" in units and self.main != "cpu" else "exposed_transfer"

    def _comm_window(self, s: int) -> simpy.Event | None:
        """Collectives of segment ``s`` wait until segment ``s - depth - 1`` is done.

        Why: the compute stream issues them. DeepSpeed ZeRO-3 all-gathers the next layers'
        parameters when a layer starts (its prefetch, bounded by ``stage3_prefetch_bucket_size``
        and ``stage3_max_live_parameters``) and FSDP rate-limits in-flight all-gathers
        (``limit_all_gathers``); neither runs the whole model's gathers ahead of the compute,
        which would hold every layer's gathered weights at once."""
        k = s - self.depth - 1
        if k < 0:
            return None
        pending = [ev for ev in map(self._done_event, self.prog.segments[k].ops) if ev is not None]
        return self.env.all_of(pending) if pending else None

    def _started(self, s: int) -> simpy.Event:
        if s not in self.seg_start_ev:
            self.seg_start_ev[s] = self.env.event()
        return self.seg_start_ev[s]

    def _start_segment(self, s: int) -> None:
        self.seg_started[s] = True
        if s in self.seg_start_ev:
            self.seg_start_ev[s].succeed()
        last = self.ahead[s]
        while self.issued < last:
            self.issued += 1
            self._issue(self.issued)

    # -- data dependencies and fetches ---------------------------------------------------------

    def _done_event(self, w: int) -> simpy.Event | None:
        """An event for op ``w``'s completion, or None if it has completed."""
        if self.done[w]:
            return None
        ev = self.done_ev.get(w)
        if ev is None:
            ev = self.done_ev[w] = self.env.event()
        return ev

    def _avail(self, t: str, w: int | None, tier: str) -> simpy.Event | None:
        """When version ``w`` (the writer's op index) of ``t`` is present on its home ``tier``."""
        if w is None:
            return None
        if self.prog.ops[w].mem == tier:
            return self._done_event(w)
        key = (t, w, tier)
        ev = self.avail.get(key)
        if ev is None:
            ev = self.avail[key] = self.env.event()
        return ev

    def _issue(self, s: int) -> None:
        """Stage every input of segment ``s`` that lives off its op's memory tier."""
        ops, fetch = self.prog.ops, self.fetch
        seg_stage, stages, held = self.seg_stage, self.stages, self.seg_held[s]
        for i in self.fetching[s]:  # (the segment's ops that fetch anything, in order)
            op = ops[i]
            mem = op.mem
            for t, w, frac, sources, same_seg in fetch[i]:
                skey = (s, t, mem)
                if skey in seg_stage:
                    continue
                key = (t, mem, w, frac)
                st = stages.get(key)
                if st is None:
                    st = stages[key] = self._fetch(t, op, w, sources, same_seg)
                    st.skey = key
                st.refs += 1
                seg_stage[skey] = st
                held.append(st)

    def _fetch(self, t: str, op, w: int | None, sources: dict[str, int], same_seg: bool) -> Stage:
        events, afters = [], []
        for src, nbytes in sources.items():
            after = self._done_event(w) if same_seg else self._avail(t, w, src)
            if after is not None and after.callbacks is not None:
                afters.append(after)
            events.append(self.clock.copier.copy(src, op.mem, nbytes, t, op.name,
                                                 alloc=0 if self.ring else None, after=after,
                                                 request=self.prog.tensors[t].chunk,
                                                 copies=self._copies(t)))
        ev = events[0] if len(events) == 1 else self.env.all_of(events)
        st = Stage(op.mem, t, sum(sources.values()), ev)
        if self.ring:  # the ring's buffer is taken when the fetch is issued
            self.pools[op.mem].alloc(t, st.bytes, op.name)
        st.src_t = self.env.now
        if afters:
            wop = self.prog.ops[w]
            if same_seg or self.prog.ops[w].mem in sources:
                st.src_cat = self._cat(wop.unit)

            def ready(_e, st=st):
                st.src_t = max(st.src_t, self.env.now)
            for a in afters:
                a.callbacks.append(ready)
        return st

    def _copies(self, t: str) -> int:
        """Separate copies a fetch of ``t`` is issued as: Plan.weight_copies for a layer's
        weights (a framework that fetches parameter by parameter), one otherwise."""
        n = self.prog.weight_copies
        if n > 1 and t[:1] == "L" and t.endswith(".weight") and self.prog.tensors[t].cls == "weight":
            return n
        return 1

    # -- outputs, write-backs, deaths ----------------------------------------------------------

    def _produce(self, op, outputs: tuple) -> None:
        home_alloc, work, pools = self.home_alloc, self.work, self.pools
        m, seg = op.mem, op.seg
        for k, t, tm, on_m, off in outputs:  # (see _plan_dependencies: all static)
            if on_m is not None and tm not in home_alloc:
                pools[m].alloc(t, on_m, op.name)
                home_alloc.add(tm)
            if off <= 0 or (t, seg) in work:
                continue
            st = self.seg_stage.get((seg, t, m))
            if st is None:
                nbytes = int(off * op.out_frac[k])
                st = Stage(m, t, nbytes, None)
                pools[m].alloc(t, nbytes, op.name)
            st.refs += 1
            work[(t, seg)] = st
            self.seg_work.setdefault(seg, []).append(t)

    def _finish(self, op) -> None:
        """Write-backs, deaths and the segment's end, after ``_stream`` marked ``op`` done and
        counted it off its segment."""
        seg = op.seg
        for t in op.writeback:
            self._writeback(op, t)
        if op.dies:
            tensors, home_alloc, pools, work = (self.prog.tensors, self.home_alloc, self.pools,
                                                self.work)
            for t in op.dies:
                for tier, nbytes in tensors[t].held.items():
                    if (t, tier) in home_alloc:
                        home_alloc.discard((t, tier))
                        pools[tier].free(t, nbytes)
                st = work.pop((t, seg), None)
                if st is not None:
                    self._release(st)
        if self.seg_left[seg] == 0:
            if seg == len(self.seg_left) - 1:  # the step's compute is over: the ring's tail
                for st, landed in self.wb_held.pop(-1, ()):
                    if landed.triggered:
                        self._release(st)
                    else:
                        landed.callbacks.append(lambda _e, st=st: self._release(st))
            for st in self.seg_held[seg]:
                self._release(st)
            self.seg_held[seg] = []
            for t in self.seg_work.pop(seg, ()):  # working copies no one needs any more
                st = self.work.pop((t, seg), None)
                if st is not None:
                    self._release(st)

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
                                        alloc=info.held[tier] if first else 0)
            target = self._avail(t, op.index, tier)
            ev.callbacks.append(lambda _e, target=target: target.succeed())
            events.append(ev)
        if events:
            self.seg_wb.setdefault(op.seg, []).extend(events)
        if st is None:
            return
        done = events[0] if len(events) == 1 else self.env.all_of(events)
        hold = self.ring_hold(op.seg, self.seg_started)
        if hold is not None:  # given back at a program point, not on the copy's landing
            self.wb_held.setdefault(hold, []).append((st, done))
        else:
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
