"""Bandwidth as a fluid: copies (and, where copies slow compute, ops) progress at rates that
change whenever another transfer starts or ends.

* A copy engine per link direction serves one copy at a time, FIFO, like a CUDA copy engine, so a
  link direction never has two flows: queueing there is FIFO, not sharing.
* Links behind one ``port`` share its bandwidth per direction while several are busy (processor
  sharing: each active flow gets ``port_bw / n``). Direction is whether the copy leaves the link
  from ``ends[0]`` or ``ends[1]``, so links on a port should list their ends in the same order.
* Tiers share their read (and write) bandwidth among the flows reading (writing) them; a tier with
  a ``concurrency_curve`` (CXL) also caps every flow touching it (reading, writing or bouncing)
  at ``curve(n) / n``; SSD/flash reads run at ``read_size_curve(request size)``.
* An op flow (compute with ``copy_slowdown`` > 0) runs at ``1 / (1 + slowdown)`` while any copy
  touches its unit's memory tier, at full speed otherwise.

A flow's rate is the minimum of its own cap and its share of every resource it crosses; rates are
recomputed on every start and finish and the next finish is scheduled — a stale wake-up (a flow
set changed since) is ignored. Everything is ordered by insertion, so results are reproducible.
"""

from __future__ import annotations

from collections import deque

import simpy

from memsim.hardware.spec import System
from memsim.hardware.topology import Topology

# A finish within a picosecond of the wake-up is a finish (float rounding of remaining work).
FINISH_EPS_S = 1e-12
# Read request size for SSD/flash reads: DeepSpeed's async-IO default block size (1 MiB,
# `aio.block_size` in ZeRO-Infinity's config); smaller copies issue one request of their size.
IO_REQUEST_BYTES = 1 << 20
# Bounce buffer a multi-hop copy holds on each intermediate tier while in flight: two 64 MiB
# pinned chunks (double buffering, as DeepSpeed's swap buffers and FlexGen's pinned buffers do).
BOUNCE_CHUNK_BYTES = 64 << 20
BOUNCE_CHUNKS = 2


class Flow:
    """Work (bytes, or seconds for an op) in progress at a rate set by the manager."""

    __slots__ = (
        "cap",
        "done",
        "ports",
        "rate",
        "rd",
        "remaining",
        "req",
        "slow",
        "tier",
        "touch",
        "wr",
    )

    def __init__(self, work: float, cap: float, done: simpy.Event):
        self.remaining, self.cap, self.done = work, cap, done
        self.rate = cap
        self.ports: tuple[str, ...] = ()
        self.rd: str | None = None
        self.wr: str | None = None
        self.touch: tuple[str, ...] = ()
        self.req = 0.0
        self.slow = 0.0  # op flows: slowdown while a copy touches `tier`
        self.tier: str | None = None


class FlowManager:
    """Processor sharing of ports and tiers among active flows."""

    def __init__(self, env: simpy.Environment, system: System):
        self.env = env
        self.tiers = system.tiers
        self.port_bw = {name: p.bandwidth for name, p in system.ports.items()}
        self.flows: dict[int, Flow] = {}
        self.next_id = 0
        self.last = 0.0
        self.gen = 0
        self.count: dict[str, int] = {}  # resource → active flows on it
        self.touching: dict[str, int] = {}  # tier → active copies touching it

    # -- public ---------------------------------------------------------------------------------

    def start(self, flow: Flow) -> simpy.Event:
        self._advance()
        self.flows[self.next_id] = flow
        self.next_id += 1
        self._count(flow, +1)
        self._reschedule()
        return flow.done

    def copies_touching(self, tier: str) -> int:
        return self.touching.get(tier, 0)

    # -- internals ------------------------------------------------------------------------------

    def _count(self, flow: Flow, d: int) -> None:
        c = self.count
        for p in flow.ports:
            c[p] = c.get(p, 0) + d
        if flow.rd is not None:
            c["rd:" + flow.rd] = c.get("rd:" + flow.rd, 0) + d
        if flow.wr is not None:
            c["wr:" + flow.wr] = c.get("wr:" + flow.wr, 0) + d
        for t in flow.touch:
            self.touching[t] = self.touching.get(t, 0) + d

    def _advance(self) -> None:
        now = self.env.now
        dt = now - self.last
        if dt > 0:
            for f in self.flows.values():
                f.remaining -= f.rate * dt
        self.last = now

    def _rate(self, f: Flow) -> float:
        if f.tier is not None:  # an op slowed while copies touch its memory
            return f.cap / (1.0 + f.slow) if self.touching.get(f.tier, 0) else f.cap
        r = f.cap
        c = self.count
        for p in f.ports:
            r = min(r, self.port_bw[p.split("|", 1)[0]] / c[p])
        if f.rd is not None:
            t = self.tiers[f.rd]
            r = min(r, t.read_bandwidth(f.req) / c["rd:" + f.rd])
            if t.concurrency_curve is not None:
                n = self.touching[f.rd]
                r = min(r, t.concurrency_curve.at(n) / n)
        if f.wr is not None:
            t = self.tiers[f.wr]
            r = min(r, t.write_bw / c["wr:" + f.wr])
            if t.concurrency_curve is not None:
                n = self.touching[f.wr]
                r = min(r, t.concurrency_curve.at(n) / n)
        return r

    def _reschedule(self) -> None:
        self.gen += 1
        if not self.flows:
            return
        soonest = float("inf")
        for f in self.flows.values():
            f.rate = self._rate(f)
            t = f.remaining / f.rate
            if t < soonest:
                soonest = t
        gen = self.gen
        self.env.timeout(max(0.0, soonest)).callbacks.append(lambda _e: self._wake(gen))

    def _wake(self, gen: int) -> None:
        if gen != self.gen:
            return  # the flow set changed since this wake-up was scheduled
        self._advance()
        done = [k for k, f in self.flows.items() if f.remaining <= f.rate * FINISH_EPS_S]
        if not done:  # rounding left a sliver everywhere: finish the closest one
            done = [min(self.flows, key=lambda k: (self.flows[k].remaining / self.flows[k].rate, k))]
        for k in done:
            f = self.flows.pop(k)
            self._count(f, -1)
            f.done.succeed()
        self._reschedule()


class Engine:
    """One copy engine (a link direction): FIFO, one copy at a time; tracks busy time."""

    __slots__ = ("busy", "busy_s", "env", "name", "queue", "since")

    def __init__(self, name: str, env: simpy.Environment):
        self.name, self.env = name, env
        self.busy = False
        self.queue: deque[simpy.Event] = deque()
        self.busy_s = 0.0
        self.since = 0.0

    def acquire(self) -> simpy.Event:
        ev = self.env.event()
        if self.busy:
            self.queue.append(ev)
        else:
            self.busy, self.since = True, self.env.now
            ev.succeed()
        return ev

    def release(self) -> None:
        now = self.env.now
        self.busy_s += now - self.since
        self.since = now
        if self.queue:
            self.queue.popleft().succeed()
        else:
            self.busy = False


class Copier:
    """Copies between tiers along the topology's routes, through FIFO engines and shared flows."""

    def __init__(self, env: simpy.Environment, system: System, flows: FlowManager, pools: dict,
                 recorder=None):
        self.env, self.system, self.flows, self.pools = env, system, flows, pools
        self.topo = Topology(system)
        self.engines: dict[str, Engine] = {}
        self.recorder = recorder
        self.log: list[tuple[str, str, int, float, float]] = []  # (src, dst, bytes, start, end)
        self._plans: dict[tuple[str, str], tuple] = {}
        self.started = 0

    def _plan(self, src: str, dst: str) -> tuple:
        key = (src, dst)
        if key not in self._plans:
            route = self.topo.route(src, dst)
            engines = []
            for hop in route.hops:
                if hop.engine not in self.engines:
                    self.engines[hop.engine] = Engine(hop.engine, self.env)
                engines.append(self.engines[hop.engine])
            ports = tuple(f"{hop.link.port}|{'fwd' if hop.src == hop.link.ends[0] else 'rev'}"
                          for hop in route.hops if hop.link.port)
            cap = min(hop.rate for hop in route.hops)
            latency = route.latency + self.system.tiers[src].latency
            self._plans[key] = (sorted(engines, key=lambda e: e.name), ports, cap, latency,
                                tuple(route.via))
        return self._plans[key]

    def copy(self, src: str, dst: str, nbytes: int, key: str, op: str, *,
             alloc: int | None = None, after: simpy.Event | None = None) -> simpy.Event:
        """Start a copy once ``after`` has fired; the returned event fires when the bytes have
        arrived. ``alloc`` bytes (default: the copy's) are allocated on ``dst`` under ``key`` when
        the copy starts, as a real buffer must be (0 when updating bytes already there); the caller
        frees the source when it wants the bytes to *move* rather than be duplicated."""
        self.started += 1
        done = self.env.event()
        self.env.process(self._run(src, dst, nbytes, key, op, done,
                                   nbytes if alloc is None else alloc, after))
        return done

    def _run(self, src, dst, nbytes, key, op, done, alloc, after):
        if after is not None and after.callbacks is not None:
            yield after
        engines, ports, cap, latency, via = self._plan(src, dst)
        for engine in engines:  # global name order: no deadlock between multi-hop copies
            yield engine.acquire()
        start = self.env.now
        self.pools[dst].alloc(key, alloc, op)
        bounce = min(nbytes, BOUNCE_CHUNK_BYTES * BOUNCE_CHUNKS)
        for tier in via:
            self.pools[tier].alloc("bounce:" + key, bounce, op)
        if latency > 0:
            yield self.env.timeout(latency)
        if nbytes > 0:
            flow = Flow(float(nbytes), cap, self.env.event())
            flow.ports, flow.rd, flow.wr = ports, src, dst
            flow.touch = (src, *via, dst)
            flow.req = float(min(nbytes, IO_REQUEST_BYTES))
            yield self.flows.start(flow)
        for tier in via:
            self.pools[tier].free("bounce:" + key, bounce)
        for engine in engines:
            engine.release()
        end = self.env.now
        self.log.append((src, dst, nbytes, start, end))
        if self.recorder is not None:
            for engine in engines:
                self.recorder.span(engine.name, key, start, end, {"bytes": nbytes, "op": op})
        done.succeed()
