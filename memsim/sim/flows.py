"""Bandwidth as a fluid: copies (and, where copies slow compute, ops) progress at rates that
change whenever another transfer starts or ends.

* A copy engine per link direction serves one copy at a time, FIFO, like a CUDA copy engine, so a
  link direction never has two flows: queueing there is FIFO, not sharing.
* Links behind one ``port`` share its bandwidth per direction while several are busy (processor
  sharing: each active flow gets ``port_bw / n``). Direction is whether the copy leaves the link
  from ``ends[0]`` or ``ends[1]``, so links on a port should list their ends in the same order.
* Tiers share their read (and write) bandwidth among the flows reading (writing) them; a
  half-duplex tier (SSD and flash by default, ``Tier.duplex``) shares one device among readers
  and writers together. The device serves the streams' requests in turn, all of one size
  (``IO_REQUEST_BYTES``), so every stream moves the same bytes per second: 1 / Σ 1/bandwidth
  over the streams, each at its direction's bandwidth (n streams of one direction: bandwidth / n).
  A reader at 2.0 GB/s beside a writer at 3.1 GB/s gets 1.22 GB/s each, not 1.0 and 1.57 (each
  direction half the device's time): a 2-vCPU VM's virtio disk moves 1.3-1.5 GB/s each way, about
  equal, in the replays that read and write at once. A tier with a ``concurrency_curve`` (CXL;
  a calibrated disk, for reads and writes at once) also caps every flow touching it (reading,
  writing or bouncing) at ``curve(n) / n``; SSD/flash reads run at
  ``read_size_curve(request size)``.
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
    """Work (bytes, or seconds for an op) in progress at a rate set by the manager.

    ``shares``: (resource, bandwidth) pairs the flow divides with the other flows on that
    resource (a port direction, a tier's reads or writes); ``curves``: (tier, concurrency curve)
    pairs that cap it at ``curve(n) / n`` for the n copies touching the tier; ``touch``: tiers it
    counts as a copy touching; an op flow has ``tier`` and runs at ``slowed`` while a copy touches
    it. Built once per route and request size by ``Copier`` (``FlowManager.copy_flow``)."""

    __slots__ = ("cap", "curves", "done", "rate", "remaining", "shares", "slowed", "tier", "touch")

    def __init__(self, work: float, cap: float, done: simpy.Event, shares: tuple = (),
                 curves: tuple = (), touch: tuple[str, ...] = ()):
        self.remaining, self.cap, self.done = work, cap, done
        self.rate = cap
        self.shares, self.curves, self.touch = shares, curves, touch
        self.tier: str | None = None
        self.slowed = cap

    @classmethod
    def op(cls, seconds: float, done: simpy.Event, tier: str, slow: float) -> Flow:
        """An op of ``seconds`` alone, slowed by ``1 + slow`` while a copy touches ``tier``."""
        f = cls(seconds, 1.0, done)
        f.tier = tier
        f.slowed = f.cap / (1.0 + slow)
        return f


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
        # half-duplex devices ("io:" resources): active flows by bandwidth, and while flows of
        # different bandwidths share one, the rate each gets (see the module docstring)
        self.mix: dict[str, dict[float, int]] = {}
        self.fair: dict[str, float] = {}
        self.touching: dict[str, int] = {}  # tier → active copies touching it
        self._curve_at: dict[tuple[str, int], float] = {}  # (tier, n) → concurrency_curve(n)
        self._shapes: dict[tuple, tuple] = {}

    # -- public ---------------------------------------------------------------------------------

    def start(self, flow: Flow) -> simpy.Event:
        self._advance()
        self.flows[self.next_id] = flow
        self.next_id += 1
        c = self.count
        for key, bw in flow.shares:
            c[key] = c.get(key, 0) + 1
            if key[:3] == "io:":
                self._mix(key, bw, 1)
        touching = self.touching
        for t in flow.touch:
            touching[t] = touching.get(t, 0) + 1
        self._reschedule()
        return flow.done

    def shape(self, ports: tuple[str, ...], src: str, dst: str, req: float) -> tuple[tuple, tuple]:
        """(shares, curves) of a copy ``src`` → ``dst`` over ``ports`` in requests of ``req``
        bytes: each port direction at its bandwidth, the source's read bandwidth for that
        request size, the destination's write bandwidth, and the tiers' concurrency curves."""
        key = (ports, src, dst, req)
        out = self._shapes.get(key)
        if out is None:
            shares = [(p, self.port_bw[p.split("|", 1)[0]]) for p in ports]
            rd, wr = self.tiers[src], self.tiers[dst]
            # a half-duplex tier (SSD, flash) serves its readers and writers in turns: one
            # resource, each flow at its direction's bandwidth over the flows sharing it
            shares.append(("rd:" + src if rd.is_duplex else "io:" + src, rd.read_bandwidth(req)))
            shares.append(("wr:" + dst if wr.is_duplex else "io:" + dst, wr.write_bw))
            curves = tuple((name, t.concurrency_curve) for name, t in ((src, rd), (dst, wr))
                           if t.concurrency_curve is not None)
            out = self._shapes[key] = (tuple(shares), curves)
        return out

    # -- internals ------------------------------------------------------------------------------

    def _advance(self) -> None:
        now = self.env._now
        dt = now - self.last
        if dt > 0:
            for f in self.flows.values():
                f.remaining -= f.rate * dt
        self.last = now

    def _reschedule(self) -> None:
        """Every flow's rate: the least of its cap and its share of each resource it crosses."""
        self.gen += 1
        if not self.flows:
            return
        soonest = float("inf")
        c, touching, fair = self.count, self.touching, self.fair
        for f in self.flows.values():
            if f.tier is not None:  # an op slowed while copies touch its memory
                r = f.slowed if touching.get(f.tier, 0) else f.cap
            else:
                r = f.cap
                for key, bw in f.shares:
                    v = fair[key] if fair and key in fair else bw / c[key]
                    if v < r:
                        r = v
                for tier, curve in f.curves:
                    n = touching[tier]
                    at = self._curve_at.get((tier, n))
                    if at is None:
                        at = self._curve_at[(tier, n)] = curve.at(n)
                    v = at / n
                    if v < r:
                        r = v
            f.rate = r
            t = f.remaining / r
            if t < soonest:
                soonest = t
        gen = self.gen
        self.env.timeout(soonest if soonest > 0.0 else 0.0).callbacks.append(
            lambda _e: self._wake(gen))

    def _mix(self, key: str, bw: float, n: int) -> None:
        """Count a flow of bandwidth ``bw`` on or off half-duplex device ``key``; while flows of
        more than one bandwidth share it, ``fair[key]`` is the rate each gets."""
        mix = self.mix.setdefault(key, {})
        left = mix.get(bw, 0) + n
        if left:
            mix[bw] = left
        else:
            del mix[bw]
        if len(mix) > 1:
            self.fair[key] = 1.0 / sum(k / b for b, k in mix.items())
        else:
            self.fair.pop(key, None)

    def _wake(self, gen: int) -> None:
        if gen != self.gen:
            return  # the flow set changed since this wake-up was scheduled
        self._advance()
        flows = self.flows
        done = [k for k, f in flows.items() if f.remaining <= f.rate * FINISH_EPS_S]
        if not done:  # rounding left a sliver everywhere: finish the closest one
            done = [min(flows, key=lambda k: (flows[k].remaining / flows[k].rate, k))]
        c, touching = self.count, self.touching
        for k in done:
            f = flows.pop(k)
            for key, bw in f.shares:
                c[key] -= 1
                if key[:3] == "io:":
                    self._mix(key, bw, -1)
            for t in f.touch:
                touching[t] -= 1
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
        self._plans: dict[tuple, tuple] = {}
        self.started = 0
        self.serial = False  # Plan.staging == "serial": multi-hop copies hop by hop (sim.staging)

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
                                tuple(route.via), (src, *route.via, dst))
        return self._plans[key]

    def copy(self, src: str, dst: str, nbytes: int, key: str, op: str, *,
             alloc: int | None = None, after: simpy.Event | None = None,
             request: int = 0, copies: int = 1, setup: float | None = None) -> simpy.Event:
        """Start a copy once ``after`` has fired; the returned event fires when the bytes have
        arrived. ``alloc`` bytes (default: the copy's) are allocated on ``dst`` under ``key`` when
        the copy starts, as a real buffer must be (0 when updating bytes already there); the caller
        frees the source when it wants the bytes to *move* rather than be duplicated.
        ``request``: bytes per read request when smaller than ``IO_REQUEST_BYTES`` (a tensor
        scattered in chunks, such as sparse FFN neurons); 0: the default. ``copies``: the bytes
        go as that many back-to-back copies (one per parameter tensor, Plan.weight_copies), each
        paying the route's per-transfer latency: t = copies · latency + bytes / rate, the shape
        of a measured cudaMemcpy size sweep (t4-gcp.yaml [6]). ``setup``: seconds the copies'
        submission costs in place of ``copies · latency`` (one batched or kernel submission of
        them, memsim.sim.swap)."""
        self.started += 1
        env = self.env
        done = env.event()
        env.process(self._run(src, dst, nbytes, key, op, done,
                              nbytes if alloc is None else alloc, after, request, copies, setup))
        return done

    def latency(self, src: str, dst: str) -> float:
        """Seconds one copy call from ``src`` to ``dst`` pays before its bytes move."""
        return (self._plans.get((src, dst)) or self._plan(src, dst))[3]

    def _run(self, src, dst, nbytes, key, op, done, alloc, after, request=0, copies=1, setup=None):
        if after is not None and after.callbacks is not None:
            yield after
        plan = self._plans.get((src, dst)) or self._plan(src, dst)
        engines, ports, cap, latency, via, touch = plan
        if via and self.serial:
            from memsim.sim.staging import run_serial

            start = self.env._now
            yield from run_serial(self, src, dst, nbytes, key, op, request, alloc, copies)
            self.log.append((src, dst, nbytes, start, self.env._now))
            done.succeed()
            return
        for engine in engines:  # global name order: no deadlock between multi-hop copies
            yield engine.acquire()
        env = self.env
        start = env._now
        pools = self.pools
        if alloc > 0:
            pools[dst].alloc(key, alloc, op)
        if via:
            bounce = min(nbytes, BOUNCE_CHUNK_BYTES * BOUNCE_CHUNKS)
            for tier in via:
                pools[tier].alloc("bounce:" + key, bounce, op)
        if setup is not None:
            if setup > 0:
                yield env.timeout(setup)
        elif latency > 0:
            yield env.timeout(latency * copies)
        if nbytes > 0:
            flows = self.flows
            shares, curves = flows.shape(ports, src, dst, float(min(nbytes, request or IO_REQUEST_BYTES)))
            yield flows.start(Flow(float(nbytes), cap, env.event(), shares, curves, touch))
        if via:
            for tier in via:
                pools[tier].free("bounce:" + key, bounce)
        for engine in engines:
            engine.release()
        end = env._now
        self.log.append((src, dst, nbytes, start, end))
        if self.recorder is not None:
            for engine in engines:
                self.recorder.span(engine.name, key, start, end, {"bytes": nbytes, "op": op})
        done.succeed()
