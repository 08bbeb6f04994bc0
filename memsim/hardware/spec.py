"""The System schema: tiers, links, ports and compute units, with units parsed on the way in.

Every field has a description: it is the help text of the schema and the "what was expected" of
every error message. Unknown keys are rejected (with a did-you-mean from the loader), and values
are checked up front, as SimPy does, so a bad file fails at load time naming the key.

A catalog file describes one *node*: HBM tiers are per GPU (``per_device: true``), host tiers
(DRAM, CXL, SSD) are shared by the GPUs of the node. ``System.device_view(n)`` gives the share of
one of ``n`` ranks that run on the node, which is what a per-rank planner reasons about.
"""

from __future__ import annotations

import bisect
import itertools
import math
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, PlainSerializer, model_validator

from memsim import units
from memsim.contracts.spec import Spec
from memsim.errors import did_you_mean
from memsim.hardware.gemm import gemm_utilisation
from memsim.kinds import tier_kind, tier_kinds

TIER_KINDS: tuple[str, ...] = tuple(tier_kinds())  # hardware/kinds/tiers.yaml
TierKind = Literal[TIER_KINDS]
LinkKind = Literal["pcie", "nvlink", "c2c", "cxl", "nvme", "memory-bus", "network", "sata"]
Dtype = Literal["fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4"]


def _parser(fn):
    def parse(value):
        try:
            return fn(value)
        except ValueError as exc:  # pydantic turns ValueError into a located validation error
            raise ValueError(str(exc)) from None

    return BeforeValidator(parse)


Bytes = Annotated[int, _parser(units.parse_bytes), PlainSerializer(lambda v: v, return_type=int)]
Bandwidth = Annotated[float, _parser(units.parse_bandwidth)]
Seconds = Annotated[float, _parser(units.parse_time)]
FlopRate = Annotated[float, _parser(units.parse_flops)]


class Curve(Spec):
    """A measured curve ``[[x, y], ...]`` interpolated log-linearly in x, clamped at both ends."""

    points: list[tuple[float, float]] = Field(min_length=1, description="[x, y] pairs, x increasing")

    @model_validator(mode="after")
    def _increasing(self) -> Curve:
        xs = [x for x, _ in self.points]
        if any(b <= a for a, b in itertools.pairwise(xs)) or xs[0] <= 0:
            raise ValueError("curve x values must be positive and strictly increasing")
        return self

    def at(self, x: float) -> float:
        xs = [p[0] for p in self.points]
        if x <= xs[0]:
            return self.points[0][1]
        if x >= xs[-1]:
            return self.points[-1][1]
        i = bisect.bisect_right(xs, x)
        (x0, y0), (x1, y1) = self.points[i - 1], self.points[i]
        t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
        return y0 + t * (y1 - y0)


def _curve(kind_x, kind_y):
    """Accept ``[[4KiB, 1GB/s], ...]`` in YAML and keep numbers inside."""

    def parse(value):
        if isinstance(value, dict | Curve):
            return value
        if not isinstance(value, list):
            raise ValueError("expected a list of [x, y] pairs")
        pts = []
        for pair in value:
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise ValueError(f"expected [x, y] pairs, got {pair!r}")
            pts.append((float(kind_x(pair[0])), float(kind_y(pair[1]))))
        return {"points": pts}

    return BeforeValidator(parse)


SizeCurve = Annotated[Curve, _curve(units.parse_bytes, units.parse_bandwidth)]
RowsCurve = Annotated[Curve, _curve(float, units.parse_flops)]
ConcurrencyCurve = Annotated[Curve, _curve(float, units.parse_bandwidth)]


class Tier(Spec):
    """One memory or storage tier: a pool of bytes with its own read and write bandwidth."""

    kind: TierKind = Field(description=" | ".join(TIER_KINDS))
    capacity: Bytes = Field(gt=0, description="usable bytes, e.g. 80GiB (per device when per_device)")
    read_bw: Bandwidth = Field(gt=0, description="sustained sequential read bandwidth, e.g. 7GB/s")
    write_bw: Bandwidth = Field(gt=0, description="sustained sequential write bandwidth")
    latency: Seconds = Field(0.0, ge=0, description="access latency added to each transfer, e.g. 80us")
    per_device: bool | None = Field(
        None, description="capacity and bandwidth are per GPU (default: true for hbm, false otherwise)")
    read_size_curve: SizeCurve | None = Field(
        None, description="read throughput by request size [[size, bandwidth], ...] (flash, SSD)")
    concurrency_curve: ConcurrencyCurve | None = Field(
        None, description="aggregate bandwidth by concurrent streams [[streams, bandwidth], ...] (CXL; a "
                       "calibrated disk: reads and writes at once)")
    queue_depth: int = Field(
        1, ge=1, description="queue depth the read_size_curve was measured at (records how the "
                             "curve was taken; the curve itself is what the simulator uses)")
    duplex: bool | None = Field(
        None, description="reads and writes run at once, each at its full rate (default: false for "
                          "ssd and flash, whose reads and writes take turns on one device; true "
                          "otherwise)")
    source: str | None = Field(None, description="where the numbers come from")
    max_capacity: Bytes | None = Field(
        None, description="the most this tier's platform takes (DIMM slots × largest DIMM, drive "
                          "bays × largest drive; per node): upgrade suggestions grow the tier up to "
                          "it; absent: the tier cannot grow (a cloud VM, a laptop)")

    @model_validator(mode="after")
    def _max_above_capacity(self) -> Tier:
        if self.max_capacity is not None and self.max_capacity < self.capacity:
            raise ValueError(f"max_capacity ({self.max_capacity} bytes) is below capacity "
                             f"({self.capacity} bytes)")
        return self

    @property
    def is_per_device(self) -> bool:
        return tier_kind(self.kind).per_device if self.per_device is None else self.per_device

    @property
    def is_duplex(self) -> bool:
        """False where reads and writes share one device, served in turn (measured on this
        project's own VM disk: 0.9 GB/s reads and 1.2 GB/s writes alone, 0.59 GB/s each at once;
        memsim.sim.flows gives each 1 / (1/0.9 + 1/1.2) = 0.51)."""
        return tier_kind(self.kind).duplex if self.duplex is None else self.duplex

    def read_bandwidth(self, request_bytes: float | None = None, streams: int = 1) -> float:
        """Read bandwidth for one request size and concurrency, from the curves when present."""
        bw = self.read_bw
        if self.read_size_curve is not None and request_bytes:
            bw = min(bw, self.read_size_curve.at(request_bytes))
        if self.concurrency_curve is not None:
            bw = min(bw, self.concurrency_curve.at(max(1, streams)))
        return bw

    def write_bandwidth(self, streams: int = 1) -> float:
        bw = self.write_bw
        if self.concurrency_curve is not None:
            bw = min(bw, self.concurrency_curve.at(max(1, streams)))
        return bw


# Per-lane, per-direction payload bandwidth after line encoding (PCI-SIG base specs:
# Gen3 8 GT/s 128b/130b, Gen4 16 GT/s, Gen5 32 GT/s, Gen6 64 GT/s PAM4 with FLIT encoding).
PCIE_GBPS_PER_LANE = {3: 0.985e9, 4: 1.969e9, 5: 3.938e9, 6: 7.563e9}


class Link(Spec):
    """A full-duplex connection between two tiers; each direction has its own copy engine."""

    name: str = Field(description="unique link name, e.g. pcie-gpu0")
    kind: LinkKind = Field(description="pcie | nvlink | c2c | cxl | nvme | memory-bus | network | sata")
    ends: tuple[str, str] = Field(description="the two tier names it connects, e.g. [hbm, dram]")
    bandwidth: Bandwidth | None = Field(None, gt=0, description="bandwidth per direction, e.g. 64GB/s")
    bandwidth_reverse: Bandwidth | None = Field(
        None, gt=0, description="bandwidth from ends[1] to ends[0] when it differs")
    pageable_bandwidth: Bandwidth | None = Field(
        None, gt=0, description="bandwidth per direction of a copy from pageable (unpinned) host "
        "memory, which the driver stages through its own pinned buffer; unset = same as pinned")
    pcie_gen: int | None = Field(None, ge=3, le=6, description="PCIe generation, if bandwidth is derived")
    lanes: int | None = Field(None, ge=1, le=32, description="PCIe lanes, if bandwidth is derived")
    efficiency: float = Field(1.0, gt=0, le=1, description="achievable fraction of the raw bandwidth")
    latency: Seconds = Field(0.0, ge=0, description="per-transfer setup latency, e.g. 2us")
    descriptor_latency: Seconds | None = Field(None, ge=0, description=(
        "cost of each further copy descriptor of one batched submission (cuMemcpyBatchAsync): "
        "the batch pays latency once, then this per descriptor; unset = latency (no saving)"))
    port: str | None = Field(None, description="upstream port it shares with other links (a switch)")
    source: str | None = Field(None, description="where the numbers come from")

    @model_validator(mode="after")
    def _bandwidth_known(self) -> Link:
        if self.bandwidth is None:
            if self.pcie_gen is None or self.lanes is None:
                raise ValueError("give either bandwidth or both pcie_gen and lanes")
            self.__dict__["bandwidth"] = PCIE_GBPS_PER_LANE[self.pcie_gen] * self.lanes
        if self.descriptor_latency is not None and self.descriptor_latency > self.latency:
            raise ValueError("descriptor_latency exceeds latency: a descriptor of a batch cannot "
                             "cost more than a copy call of its own")
        return self

    def rate(self, src: str, pinned: bool = True) -> float:
        """Achievable bytes/s when the copy leaves from ``src`` (one of ``ends``).

        ``pinned=False`` is a copy from pageable host memory: the driver stages it through a
        pinned bounce buffer, so it runs at ``pageable_bandwidth`` when the link has one.
        """
        raw = self.bandwidth if src == self.ends[0] else (self.bandwidth_reverse or self.bandwidth)
        if not pinned and self.pageable_bandwidth is not None:
            raw = min(raw, self.pageable_bandwidth)
        return raw * self.efficiency


class Port(Spec):
    """An upstream port (PCIe switch, CXL root port) whose bandwidth its links share."""

    bandwidth: Bandwidth = Field(gt=0, description="bandwidth per direction of the shared port")
    source: str | None = None


class Compute(Spec):
    """A compute unit: peak FLOP/s per dtype and the memory it computes from (roofline)."""

    kind: Literal["gpu", "cpu"] = Field(description="gpu | cpu")
    model: str | None = Field(None, description="product name, e.g. 'NVIDIA H100 SXM5 80GB'")
    count: int = Field(1, ge=1, description="units of this kind in the node (GPUs per node)")
    memory: str = Field(description="tier name this unit reads its operands from, e.g. hbm")
    peak_flops: dict[Dtype, FlopRate] = Field(
        description="dense peak FLOP/s per dtype, e.g. {bf16: 989TFLOP/s}", min_length=1)
    mem_bw: Bandwidth = Field(gt=0, description="memory bandwidth for the roofline, e.g. 3.35TB/s")
    matmul_efficiency: float = Field(
        0.7, gt=0, le=1, description="achievable fraction of peak FLOP/s on large GEMMs")
    memory_efficiency: float = Field(
        0.8, gt=0, le=1, description="achievable fraction of mem_bw on streaming kernels")
    launch_overhead: Seconds = Field(0.0, ge=0, description="fixed cost per op (kernel launch), e.g. 5us")
    copy_slowdown: float = Field(
        0.0, ge=0, le=1,
        description="fractional slowdown of this unit's ops while a copy reads or writes its memory "
                    "tier (memory-bandwidth interference; measured by `memsim calibrate`)")
    achieved_flops: dict[str, FlopRate] = Field(
        default_factory=dict,
        description="measured FLOP/s by op kind or kind/phase (e.g. matmul/decode: 4.3TFLOP/s); "
                    "replaces the compute side of the roofline for those ops (FlexGen's fitted "
                    "constants, or what `memsim calibrate` measured)")
    achieved_bandwidth: dict[str, Bandwidth] = Field(
        default_factory=dict,
        description="measured bytes/s of memory traffic by op kind or kind/phase (e.g. "
                    "attention/decode: 24.6GB/s); replaces the memory side of the roofline "
                    "(mem_bw x memory_efficiency) for those ops: the rate a framework's "
                    "implementation of the op streams its operands, copies it makes included")
    first_touch_bw: Bandwidth | None = Field(
        None, gt=0,
        description="bytes/s this unit writes into freshly allocated memory, which the OS maps on "
                    "first touch (a page fault and a zeroed page per 4 KiB): a large CPU tensor is "
                    "a new mapping each time (glibc serves blocks above its mmap threshold with "
                    "mmap and unmaps them on free). Unset: such writes stream like any other")
    achieved_flops_by_rows: dict[str, RowsCurve] = Field(
        default_factory=dict,
        description="measured GEMM FLOP/s by the rows of its left operand (the tokens; a square "
                    "attention: its sequence length), per op kind "
                    "or kind/phase, e.g. matmul/forward: [[128, 93GFLOP/s], [512, 100GFLOP/s]]; "
                    "a GEMM over few tokens runs below a big one's rate. Used before "
                    "achieved_flops for ops whose trace gives their shape (written by `memsim "
                    "calibrate`)")
    sm_count: int | None = Field(
        None, ge=1, description="streaming multiprocessors (GPU datasheet): with it a GEMM's rate "
                                "follows its shape's tile and wave quantization "
                                "(memsim.hardware.gemm); absent: one flat matmul_efficiency")
    gemm_tiles: list[tuple[int, int]] = Field(
        default_factory=lambda: [(256, 128), (128, 256), (128, 128)],
        description="output tiles [rows, cols] the GEMM library picks from for large GEMMs "
                    "(cuBLAS: 256x128, 128x256, 128x128)")
    source: str | None = None

    def rate(self, kind: str, phase: str, dtype: str, rows: int = 0,
             shape: tuple[int, ...] | None = None) -> float:
        """FLOP/s an op of this kind and phase achieves: measured if known (at its rows, when a
        curve by rows was measured), else peak × efficiency, times the wave utilisation of a
        matmul's (m, k, n) ``shape`` when the unit gives its ``sm_count``."""
        if rows and self.achieved_flops_by_rows:
            curve = (self.achieved_flops_by_rows.get(f"{kind}/{phase}")
                     or self.achieved_flops_by_rows.get(kind))
            if curve is not None:
                return curve.at(rows)
        measured = self.achieved_flops.get(f"{kind}/{phase}") or self.achieved_flops.get(kind)
        if measured:
            return measured
        if self.sm_count and kind == "matmul" and shape and len(shape) == 3:
            return self.flops(dtype) * gemm_utilisation(tuple(shape), phase, self.sm_count,
                                                        self.gemm_tiles)
        return self.flops(dtype)

    def flops(self, dtype: str) -> float:
        """Achievable FLOP/s for a dtype; falls back to the closest wider dtype it has."""
        order = ["fp8", "int8", "fp16", "bf16", "tf32", "fp32", "fp64"]
        if dtype in self.peak_flops:
            return self.peak_flops[dtype] * self.matmul_efficiency
        start = order.index(dtype) if dtype in order else order.index("fp32")
        for candidate in order[start:] + order[:start][::-1]:
            if candidate in self.peak_flops:
                return self.peak_flops[candidate] * self.matmul_efficiency
        raise KeyError(dtype)  # unreachable: peak_flops is non-empty

    def op_time(self, flops: float, nbytes: float, dtype: str = "bf16", kind: str = "matmul",
                phase: str = "forward", rows: int = 0, shape: tuple[int, ...] | None = None) -> float:
        """Roofline: the slower of compute and memory traffic, plus launch overhead. ``rows``: a
        GEMM's left-operand rows (0: unknown); ``shape``: its forward (m, k, n), if known."""
        return max(flops / self.rate(kind, phase, dtype, rows, shape),
                   nbytes / self.bandwidth(kind, phase)) + self.launch_overhead

    def bandwidth(self, kind: str = "", phase: str = "") -> float:
        """Bytes/s an op of this kind and phase streams: measured if known, else the roofline's
        mem_bw x memory_efficiency."""
        if self.achieved_bandwidth:
            measured = (self.achieved_bandwidth.get(f"{kind}/{phase}")
                        or self.achieved_bandwidth.get(kind))
            if measured:
                return measured
        return self.mem_bw * self.memory_efficiency


class Fabric(Spec):
    """A GPU's share of a collective fabric: NVLink/NVSwitch inside a node, or its NIC between
    nodes. Collectives (memsim.hardware.collectives) run over it; it joins no tiers."""

    kind: Literal["nvlink", "pcie", "network"] = Field(description="nvlink | pcie | network")
    bandwidth: Bandwidth = Field(gt=0, description="bandwidth per GPU per direction, e.g. 450GB/s")
    latency: Seconds = Field(0.0, ge=0, description="per-step latency of one ring/tree hop, e.g. 5us")
    efficiency: float = Field(1.0, gt=0, le=1, description="achievable fraction (NCCL bus bandwidth)")
    source: str | None = Field(None, description="where the numbers come from")


class System(Spec):
    """A machine: named tiers, the links between them, shared ports and compute units."""

    name: str = Field(description="catalog name, e.g. h100-sxm")
    description: str = Field("", description="one line for `memsim hardware list`")
    tiers: dict[str, Tier] = Field(min_length=1, description="tier name → tier")
    links: list[Link] = Field(default_factory=list, description="connections between tiers")
    ports: dict[str, Port] = Field(default_factory=dict, description="shared upstream ports")
    compute: dict[str, Compute] = Field(min_length=1, description="compute units, e.g. gpu and cpu")
    usd_per_hour: float | None = Field(None, ge=0, description="rental price of the node, for studies")
    sources: list[str] = Field(default_factory=list, description="documents the numbers come from")
    calibration: dict | None = Field(None, description="how and when `memsim calibrate` measured this")
    nodes: int = Field(1, ge=1, description="identical nodes in the cluster (each as described here)")
    nvlink: Fabric | None = Field(None, description="GPU-to-GPU fabric inside a node (absent: "
                                                    "collectives cross PCIe)")
    network: Fabric | None = Field(None, description="inter-node link per GPU (bandwidth per "
                                                     "direction, latency)")
    overheads: bool = Field(
        True, description="reserve the GPU's non-tensor memory (CUDA context, cuBLAS workspace, "
        "NCCL buffers, allocator rounding; hardware/overheads/gpu-runtime.yaml) on its tier; "
        "false: pure tensor accounting, for idealised comparisons")

    @model_validator(mode="after")
    def _references_exist(self) -> System:
        names = set(self.tiers)
        seen: set[str] = set()
        for i, link in enumerate(self.links):
            for end in link.ends:
                if end not in names:
                    raise ValueError(f"links[{i}] ({link.name}): unknown tier {end!r}"
                                     f"{did_you_mean(end, names)}; tiers are {sorted(names)}")
            if link.ends[0] == link.ends[1]:
                raise ValueError(f"links[{i}] ({link.name}): a link must join two different tiers")
            if link.port is not None and link.port not in self.ports:
                raise ValueError(f"links[{i}] ({link.name}): unknown port {link.port!r}; ports are "
                                 f"{sorted(self.ports)}")
            if link.name in seen:
                raise ValueError(f"links[{i}]: duplicate link name {link.name!r}")
            seen.add(link.name)
        for cname, unit in self.compute.items():
            if unit.memory not in names:
                raise ValueError(f"compute.{cname}.memory: unknown tier {unit.memory!r}"
                                 f"{did_you_mean(unit.memory, names)}; tiers are {sorted(names)}")
        return self

    # -- convenience views used by planners and the simulator --------------------------------

    @property
    def gpu(self) -> Compute | None:
        return next((c for c in self.compute.values() if c.kind == "gpu"), None)

    @property
    def cpu(self) -> Compute | None:
        return next((c for c in self.compute.values() if c.kind == "cpu"), None)

    @property
    def fast_tier(self) -> str:
        """The tier the main compute unit (the GPU if any) computes from."""
        unit = self.gpu or self.cpu or next(iter(self.compute.values()))
        return unit.memory

    def tiers_of(self, kind: str) -> list[str]:
        return [name for name, tier in self.tiers.items() if tier.kind == kind]

    def rank_view(self, data_parallel: int) -> System:
        """What one data-parallel rank sees: ranks fill the node's GPUs, sharing its host tiers."""
        gpu = self.gpu
        return self.device_view(min(data_parallel, gpu.count) if gpu else 1)

    def device_view(self, ranks: int) -> System:
        """The share of one of ``ranks`` ranks on this node: shared host tiers, links and ports
        divide their capacity and bandwidth; per-device tiers are kept whole."""
        if ranks <= 1:
            return self
        view = self.model_copy(deep=True)
        for tier in view.tiers.values():
            if not tier.is_per_device:
                tier.__dict__["capacity"] = tier.capacity // ranks
                tier.__dict__["read_bw"] = tier.read_bw / ranks
                tier.__dict__["write_bw"] = tier.write_bw / ranks
        per_device = {n for n, t in self.tiers.items() if t.is_per_device}
        for link in view.links:
            if not (set(link.ends) & per_device):  # host-side links are shared by every rank
                link.__dict__["bandwidth"] = link.bandwidth / ranks
                if link.bandwidth_reverse:
                    link.__dict__["bandwidth_reverse"] = link.bandwidth_reverse / ranks
        for port in view.ports.values():
            port.__dict__["bandwidth"] = port.bandwidth / ranks
        for unit in view.compute.values():
            if unit.kind == "cpu":  # the host CPU is shared too: its peak and its measured rates
                for dtype in unit.peak_flops:
                    unit.peak_flops[dtype] /= ranks
                for key in unit.achieved_flops:
                    unit.achieved_flops[key] /= ranks
                for key in unit.achieved_bandwidth:
                    unit.achieved_bandwidth[key] /= ranks
                if unit.first_touch_bw:
                    unit.__dict__["first_touch_bw"] = unit.first_touch_bw / ranks
                for curve in unit.achieved_flops_by_rows.values():
                    curve.__dict__["points"] = [(x, y / ranks) for x, y in curve.points]
                unit.__dict__["mem_bw"] = unit.mem_bw / ranks
        view.__dict__["name"] = f"{self.name}/{ranks}"
        return view
