"""Collective costs over a cluster's topology: NVLink inside a node, the network between nodes.

Ring algorithms, costed as NCCL's performance notes define bus bandwidth
(NVIDIA/nccl-tests, doc/PERFORMANCE.md): an all-reduce of S bytes over n ranks moves
2(n−1)/n·S through each rank's link, an all-gather, reduce-scatter or all-to-all (n−1)/n·S, a
point-to-point send S. Each of the ring's steps (2(n−1) for all-reduce, n−1 otherwise) pays the
fabric's hop latency. A group that fits inside one node runs on its NVLink fabric, or over PCIe
when the node has none; a group spanning nodes is limited by each GPU's network link (a flat
ring crosses it), which is what makes the rank order of a layout matter.
"""

from __future__ import annotations

from dataclasses import dataclass

from memsim.errors import SpecError
from memsim.hardware.spec import System

#: bytes through each rank's link per byte of payload, per ring algorithm (nccl-tests busbw)
BUS_FACTOR = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
    "send_recv": lambda n: 1.0,
}


@dataclass(frozen=True)
class Path:
    """The fabric a group's ring runs on: achievable bytes/s per direction and hop latency."""

    kind: str
    rate: float
    latency: float


def group_path(system: System, size: int, stride: int = 1) -> Path:
    """Where a group of ``size`` ranks ``stride`` apart (consecutive ranks fill a node) talks."""
    gpus = system.gpu.count if system.gpu else 1
    if size * stride <= gpus or size == 1:
        if system.nvlink is not None:
            f = system.nvlink
            return Path(f.kind, f.bandwidth * f.efficiency, f.latency)
        pcie = next((ln for ln in system.links if ln.kind == "pcie"), None)
        if pcie is None:
            raise SpecError("no nvlink fabric and no pcie link for GPU collectives", key="nvlink")
        # peer traffic without NVLink goes GPU → host PCIe → GPU: each GPU's own x16 link
        return Path("pcie", pcie.bandwidth * pcie.efficiency, pcie.latency)
    if system.network is None:
        raise SpecError(f"a group of {size} ranks spans nodes of {gpus} GPUs, but the system has no "
                        "network link", key="network")
    f = system.network
    return Path(f.kind, f.bandwidth * f.efficiency, f.latency)


def trace_comm_path(system: System, data_parallel: int) -> Path | None:
    """The fabric a single-rank trace's collectives (comm ops, bytes through the rank's link)
    cross: an nvlink/network link among the tiers' links if the file gives one, else the GPU
    fabric of a ``data_parallel`` group (NVLink in a node, PCIe when it has none, the network
    across nodes); None when the system has none of them. A trace's comm op counts the bytes a
    rank sends plus those it receives (memsim.workloads.training); the fabric is full duplex, so
    they take bytes / (2 · rate)."""
    for kind in ("nvlink", "network"):
        for link in system.links:
            if link.kind == kind:
                return Path(kind, link.rate(link.ends[0]), link.latency)
    try:
        return group_path(system, max(2, data_parallel))
    except SpecError:
        return None


def collective_time(system: System, kind: str, nbytes: float, size: int, stride: int = 1) -> float:
    """Seconds one ``kind`` collective of ``nbytes`` (the full tensor) takes over the group."""
    if size <= 1 and kind != "send_recv":
        return 0.0
    path = group_path(system, size, stride)
    steps = 1 if kind == "send_recv" else (2 if kind == "all_reduce" else 1) * (size - 1)
    return BUS_FACTOR[kind](size) * nbytes / path.rate + steps * path.latency


def check_cluster(system: System, gpus: int, key: str = "training.parallel") -> None:
    """Exit-2 error when a layout needs more GPUs than ``nodes`` × GPUs per node."""
    per_node = system.gpu.count if system.gpu else 1
    if gpus > system.nodes * per_node:
        raise SpecError(f"the layout needs {gpus} GPUs but {system.name} has {system.nodes} node(s) × "
                        f"{per_node} GPUs = {system.nodes * per_node}; raise hardware.nodes", key=key)
