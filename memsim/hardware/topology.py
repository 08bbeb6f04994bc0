"""The machine as a graph: which links a copy crosses and how fast it can go.

Tiers are nodes and links are edges (a multigraph: two NVMe drives may each have a link to DRAM).
A copy takes the route with the fewest hops, ties broken by the widest bottleneck, so SSD → HBM
goes direct when a GPUDirect-Storage link exists and bounces through DRAM otherwise.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import networkx as nx

from memsim.errors import did_you_mean
from memsim.hardware.spec import Link, System


@dataclass(frozen=True)
class Hop:
    """One link crossed in one direction."""

    link: Link
    src: str
    dst: str

    @property
    def rate(self) -> float:
        return self.link.rate(self.src)

    @property
    def engine(self) -> str:
        """The copy engine that serves this direction (FIFO, like a CUDA copy engine)."""
        return f"{self.link.name}:{self.src}->{self.dst}"


@dataclass(frozen=True)
class Route:
    src: str
    dst: str
    hops: tuple[Hop, ...]

    @property
    def via(self) -> list[str]:
        """Tiers the data passes through on its way (bounce buffers), excluding both ends."""
        return [hop.dst for hop in self.hops[:-1]]

    @property
    def latency(self) -> float:
        return sum(hop.link.latency for hop in self.hops)


class Topology:
    """Routes and bottlenecks between the tiers of one System."""

    def __init__(self, system: System):
        self.system = system
        self.graph = nx.MultiGraph()
        self.graph.add_nodes_from(system.tiers)
        for link in system.links:
            self.graph.add_edge(*link.ends, key=link.name, link=link)
        self._routes: dict[tuple[str, str], Route] = {}

    def components(self) -> list[set[str]]:
        return [set(c) for c in nx.connected_components(self.graph)]

    def route(self, src: str, dst: str) -> Route:
        """The hops a copy from tier ``src`` to tier ``dst`` takes; raises if none exists."""
        key = (src, dst)
        if key in self._routes:
            return self._routes[key]
        for name in (src, dst):
            if name not in self.system.tiers:
                raise KeyError(f"unknown tier {name!r}{did_you_mean(name, self.system.tiers)}; tiers are "
                               f"{sorted(self.system.tiers)}")
        if src == dst:
            route = Route(src, dst, ())
        elif not nx.has_path(self.graph, src, dst):
            raise ValueError(f"no link path joins tier {src!r} to tier {dst!r} in {self.system.name}")
        else:
            best: tuple[int, float, tuple[Hop, ...]] | None = None
            for path in nx.all_shortest_paths(self.graph, src, dst):
                hops = tuple(self._widest_hop(a, b) for a, b in itertools.pairwise(path))
                width = min(h.rate for h in hops)
                if best is None or width > best[1]:
                    best = (len(hops), width, hops)
            assert best is not None
            route = Route(src, dst, best[2])
        self._routes[key] = route
        return route

    def _widest_hop(self, a: str, b: str) -> Hop:
        links = [data["link"] for data in self.graph.get_edge_data(a, b).values()]
        best = max(links, key=lambda link: link.rate(a))
        return Hop(best, a, b)

    def bottleneck(self, src: str, dst: str) -> float:
        """Bytes/s of one copy alone: the slowest of the source's read, every hop (and its shared
        port) and the destination's write."""
        if src == dst:
            return float("inf")
        tiers = self.system.tiers
        rates = [tiers[src].read_bw, tiers[dst].write_bw]
        for hop in self.route(src, dst).hops:
            rates.append(hop.rate)
            if hop.link.port:
                rates.append(self.system.ports[hop.link.port].bandwidth)
        return min(rates)

    def copy_time(self, src: str, dst: str, nbytes: float) -> float:
        """Time of one copy alone on an idle machine: latency + bytes / bottleneck."""
        if src == dst or nbytes <= 0:
            return 0.0
        return self.route(src, dst).latency + self.system.tiers[src].latency + nbytes / self.bottleneck(
            src, dst)

    def has_direct(self, src: str, dst: str) -> bool:
        return self.graph.has_edge(src, dst)
