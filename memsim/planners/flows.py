"""Copies as load on shared resources: what overlap costs when several streams share a link.

A copy from tier ``src`` to ``dst`` crosses the hops of ``Topology.route`` (one copy engine per
link direction, all held at the slowest hop's rate while a multi-hop copy is in flight), the
shared ports of those links, the source tier's read side and the destination's write side. Each
resource has a rate; bytes of every copy that crosses it in a stage add up, and the stage lasts
at least ``sum(bytes) / rate`` on every resource. That is FlexGen's overlap model (a stage is as
long as its slowest stream), over any tiers and links.
"""

from __future__ import annotations

from collections import defaultdict

from memsim.hardware.spec import System
from memsim.hardware.topology import Topology


class Flows:
    """Accumulates the seconds each copy keeps each resource busy, as linear expressions."""

    def __init__(self, system: System, like: Flows | None = None):
        """``like``: another Flows of the same system whose topology and routes this one shares
        (a MIP builds one per stage; routing is most of their cost)."""
        self.system = system
        self.topo = like.topo if like is not None else Topology(system)
        self._routes: dict[tuple[str, str], list[tuple[str, float]]] = (
            like._routes if like is not None else {})
        self._seconds: dict[str, list] = defaultdict(list)

    def resources(self, src: str, dst: str) -> list[tuple[str, float]]:
        """(resource name, bytes/s) of every resource a ``src → dst`` copy loads."""
        got = self._routes.get((src, dst))
        if got is None:
            got = self._routes[src, dst] = self._resources(src, dst)
        return list(got)

    def _resources(self, src: str, dst: str) -> list[tuple[str, float]]:
        if src == dst:
            return []
        out = [self._tier_side(src, read=True), self._tier_side(dst, read=False)]
        hops = self.topo.route(src, dst).hops
        # a multi-hop copy holds every copy engine of its route at once and moves at the slowest
        # hop's rate (pipelined through a bounce buffer, as the simulator does): each engine is
        # busy for bytes / bottleneck, not bytes / its own rate
        cap = min(hop.rate for hop in hops)
        for hop in hops:
            out.append((hop.engine, cap))
            if hop.link.port:
                port = self.system.ports[hop.link.port]
                # a port's bandwidth is per direction: key it by the direction of travel
                out.append((f"port:{hop.link.port}:{hop.src}->{hop.dst}", port.bandwidth))
        return out

    def _tier_side(self, tier: str, read: bool) -> tuple[str, float]:
        """The tier-side resource of a copy: its read or write bandwidth (one resource for both
        on a half-duplex tier, as the simulator shares it); for a tier whose
        bandwidth depends on concurrency (CXL), one resource for reads and writes together (the
        curve is the device's aggregate), at half the streams its links can carry at once (one
        FIFO copy engine per link direction): a linear model cannot know the concurrency."""
        t = self.system.tiers[tier]
        if t.concurrency_curve is None:
            if not t.is_duplex:  # reads and writes take turns on one device (SSD, flash)
                return f"io:{tier}", t.read_bw if read else t.write_bw
            return (f"read:{tier}", t.read_bw) if read else (f"write:{tier}", t.write_bw)
        streams = max(1, sum(tier in link.ends for link in self.system.links))
        return f"rw:{tier}", min(t.read_bandwidth(streams=streams), t.write_bandwidth(streams=streams))

    def add(self, src: str, dst: str, nbytes) -> None:
        """Add a copy of ``nbytes`` (a number or a pulp expression) from ``src`` to ``dst``: each
        resource it crosses is busy ``nbytes / rate`` seconds, at that copy's rate there (an engine
        runs slower for a multi-hop copy than for a direct one)."""
        for name, rate in self.resources(src, dst):
            self._seconds[name].append(nbytes * (1.0 / rate))

    def loads(self) -> list[tuple[str, float, list]]:
        """(resource, 1.0, [seconds terms]) per resource; the stage lasts at least their sum."""
        return [(name, 1.0, self._seconds[name]) for name in sorted(self._seconds)]

    def reachable(self, src: str, dst: str) -> bool:
        return any(src in c and dst in c for c in self.topo.components())


def slowness(flows: Flows, tier: str, fast: str) -> float:
    """How much slower than 100 GB/s a round trip between ``tier`` and ``fast`` is: the weight of
    a byte homed there in tie-breaks, so equal-time plans prefer the faster tier."""
    rates = [r for _, r in flows.resources(tier, fast) + flows.resources(fast, tier)]
    return 1e11 / min(rates) if rates else 0.0
