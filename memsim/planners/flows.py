"""Copies as load on shared resources: what overlap costs when several streams share a link.

A copy from tier ``src`` to ``dst`` crosses the hops of ``Topology.route`` (one copy engine per
link direction), the shared ports of those links, the source tier's read side and the
destination's write side. Each resource has a rate; bytes of every copy that crosses it in a
stage add up, and the stage lasts at least ``sum(bytes) / rate`` on every resource. That is
FlexGen's overlap model (a stage is as long as its slowest stream), over any tiers and links.
"""

from __future__ import annotations

from collections import defaultdict

from memsim.hardware.spec import System
from memsim.hardware.topology import Topology


class Flows:
    """Accumulates linear byte expressions per resource; ``loads()`` gives (rate, expr) pairs."""

    def __init__(self, system: System):
        self.system = system
        self.topo = Topology(system)
        self._bytes: dict[str, list] = defaultdict(list)
        self._rate: dict[str, float] = {}

    def resources(self, src: str, dst: str) -> list[tuple[str, float]]:
        """(resource name, bytes/s) of every resource a ``src → dst`` copy loads."""
        if src == dst:
            return []
        tiers = self.system.tiers
        out = [(f"read:{src}", tiers[src].read_bw), (f"write:{dst}", tiers[dst].write_bw)]
        for hop in self.topo.route(src, dst).hops:
            out.append((hop.engine, hop.rate))
            if hop.link.port:
                port = self.system.ports[hop.link.port]
                # a port's bandwidth is per direction: key it by the direction of travel
                out.append((f"port:{hop.link.port}:{hop.src}->{hop.dst}", port.bandwidth))
        return out

    def add(self, src: str, dst: str, nbytes) -> None:
        """Add a copy of ``nbytes`` (a number or a pulp expression) from ``src`` to ``dst``."""
        for name, rate in self.resources(src, dst):
            self._bytes[name].append(nbytes)
            self._rate[name] = rate

    def add_busy(self, name: str, seconds) -> None:
        """Add seconds of work on a non-copy resource (the CPU, a comm stream)."""
        self._bytes[name].append(seconds)
        self._rate[name] = 1.0

    def loads(self) -> list[tuple[str, float, list]]:
        return [(name, self._rate[name], self._bytes[name]) for name in sorted(self._bytes)]

    def reachable(self, src: str, dst: str) -> bool:
        return any(src in c and dst in c for c in self.topo.components())


def slowness(flows: Flows, tier: str, fast: str) -> float:
    """How much slower than 1 GB/s a round trip between ``tier`` and ``fast`` is: the weight of a
    byte homed there in tie-breaks, so equal-time plans prefer the faster tier."""
    rates = [r for _, r in flows.resources(tier, fast) + flows.resources(fast, tier)]
    return 1e9 / min(rates) if rates else 0.0
