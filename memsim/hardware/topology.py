"""The machine as a graph: which links a copy crosses and how fast it can go.

Tiers are nodes and links are edges (a multigraph: two NVMe drives may each have a link to DRAM).
A copy takes the route with the fewest hops, ties broken by the widest bottleneck, so SSD → HBM
goes direct when a GPUDirect-Storage link exists and bounces through DRAM otherwise.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

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
        # the multigraph as plain dicts: tier → neighbours, and each pair's links by name (one
        # dict for both directions), in the order the system lists them; networkx (a second
        # of import time) is loaded only to order a tie between two shortest paths
        self._adj: dict[str, dict[str, None]] = {t: {} for t in system.tiers}
        self._links: dict[frozenset[str], dict[str, Link]] = {}
        for link in system.links:
            a, b = link.ends
            for x, y in ((a, b), (b, a)):
                self._adj.setdefault(x, {})[y] = None
            self._links.setdefault(frozenset((a, b)), {})[link.name] = link
        self._graph = None
        self._routes: dict[tuple[str, str], Route] = {}

    @property
    def graph(self):
        """The networkx MultiGraph of tiers and links (built, and networkx imported, on first use)."""
        if self._graph is None:
            import networkx as nx

            graph = nx.MultiGraph()
            graph.add_nodes_from(self.system.tiers)
            for link in self.system.links:
                graph.add_edge(*link.ends, key=link.name, link=link)
            self._graph = graph
        return self._graph

    def components(self) -> list[set[str]]:
        """Tiers that links join, one set per connected group (in the order tiers are listed)."""
        seen: set[str] = set()
        out = []
        for start in self._adj:
            if start in seen:
                continue
            group, todo = {start}, [start]
            while todo:
                for nxt in self._adj[todo.pop()]:
                    if nxt not in group:
                        group.add(nxt)
                        todo.append(nxt)
            seen |= group
            out.append(group)
        return out

    def _shortest_paths(self, src: str, dst: str) -> list[list[str]]:
        """Every path of fewest hops from ``src`` to ``dst`` (none: not joined), in networkx's
        ``all_shortest_paths`` order; breadth-first search here unless there is a tie."""
        dist, count, pred = {src: 0}, {src: 1}, {src: ""}
        queue = deque([src])
        while queue:
            x = queue.popleft()
            for y in self._adj[x]:
                if y not in dist:
                    dist[y], count[y], pred[y] = dist[x] + 1, count[x], x
                    queue.append(y)
                elif dist[y] == dist[x] + 1:
                    count[y] += count[x]
        if dst not in dist:
            return []
        if count[dst] > 1:
            import networkx as nx

            return list(nx.all_shortest_paths(self.graph, src, dst))
        path = [dst]
        while path[-1] != src:
            path.append(pred[path[-1]])
        return [path[::-1]]

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
        elif not (paths := self._shortest_paths(src, dst)):
            raise ValueError(f"no link path joins tier {src!r} to tier {dst!r} in {self.system.name}")
        else:
            best: tuple[int, float, tuple[Hop, ...]] | None = None
            for path in paths:
                hops = tuple(self._widest_hop(a, b) for a, b in itertools.pairwise(path))
                width = min(h.rate for h in hops)
                if best is None or width > best[1]:
                    best = (len(hops), width, hops)
            assert best is not None
            route = Route(src, dst, best[2])
        self._routes[key] = route
        return route

    def _widest_hop(self, a: str, b: str) -> Hop:
        links = list(self._links[frozenset((a, b))].values())
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
        return frozenset((src, dst)) in self._links
