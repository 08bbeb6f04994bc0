"""The search space a planner preset allows, read from its ``options`` mapping.

Every planner (the MIP, FlexGen's search) searches the same kinds of decisions; a preset narrows
them: which tiers each class may live on (by tier name or kind), which activation policies and
optimizer devices are allowed, the prefetch depth, how many GPU batches to try.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memsim.errors import SpecError, did_you_mean
from memsim.hardware.overheads import usable_bytes
from memsim.hardware.spec import TIER_KINDS, System
from memsim.hardware.topology import Topology

KNOWN = {
    "tiers",
    "optimizer_device",
    "activations",
    "prefetch_depth",
    "max_gpu_batches",
    "cpu_attention",
    "gap",
    "max_num_seqs",
    "capacity_margin",
    "_cut",
}


@dataclass
class Space:
    tiers: dict[str, list[str]]  # class → allowed tier names (the compute tier first)
    optimizer_devices: tuple[str, ...] = ("gpu", "cpu")
    activations: tuple[str, ...] = ("keep", "offload", "recompute")
    prefetch_depth: int = 1
    max_gpu_batches: int = 16
    cpu_attention: tuple[bool, ...] = (False, True)
    gap: float = 0.005
    max_num_seqs: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512)
    capacity_margin: float = 0.002  # fraction of every tier held back (rounding, allocator slack)
    caps: dict[str, int] = field(default_factory=dict)
    max_step: float | None = None  # a throughput target as a step-time bound (cheapest_upgrade)
    slack_cap: dict[str, float] = field(default_factory=dict)  # GiB a tier may grow by (cheapest_upgrade)


def build_space(system: System, options: dict, file: str = "planner options",
                meta: dict | None = None) -> Space:
    unknown = sorted(set(options) - KNOWN)
    if unknown:
        raise SpecError(
            f"unknown option {unknown[0]!r}{did_you_mean(unknown[0], KNOWN)}",
            file=file,
            key=f"options.{unknown[0]}",
        )
    fast = system.fast_tier
    topo = Topology(system)
    reachable = [t for t in system.tiers if t == fast or _connected(topo, t, fast)]
    wanted = options.get("tiers") or {}
    tiers: dict[str, list[str]] = {}
    for cls in ("weight", "grad", "optimizer", "kv", "activation"):
        allowed = wanted.get(cls)
        names = reachable if allowed is None else _resolve(system, allowed, f"options.tiers.{cls}", file)
        tiers[cls] = sorted(set(names) & set(reachable), key=lambda t: (t != fast, t))
    space = Space(tiers=tiers)
    if "optimizer_device" in options:
        space.optimizer_devices = tuple(_listed(options["optimizer_device"]))
    if "activations" in options:
        space.activations = tuple(_listed(options["activations"]))
    if "cpu_attention" in options:
        space.cpu_attention = tuple(bool(v) for v in _listed(options["cpu_attention"]))
    if "max_num_seqs" in options:
        space.max_num_seqs = tuple(int(v) for v in _listed(options["max_num_seqs"]))
    for key in ("prefetch_depth", "max_gpu_batches"):
        if key in options:
            setattr(space, key, int(options[key]))
    for key in ("gap", "capacity_margin"):
        if key in options:
            setattr(space, key, float(options[key]))
    if system.cpu is None or system.gpu is None or system.cpu.memory == fast:
        # one compute unit (or the CPU computes from the compute tier): "gpu" means that unit, and
        # moving the step or attention to "the CPU" changes nothing but the plan's wording
        space.optimizer_devices = ("gpu",)
        space.cpu_attention = (False,)
    cut = options.get("_cut") or {}  # bytes the simulator showed the model under-counts (report.py)
    usable = usable_bytes(system, meta, space.capacity_margin)  # less the runtime's non-tensor bytes
    space.caps = {n: max(1, usable[n] - int(cut.get(n, 0))) for n in system.tiers}
    return space


def _connected(topo: Topology, a: str, b: str) -> bool:
    return any(a in c and b in c for c in topo.components())


def _listed(value) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def _resolve(system: System, allowed, key: str, file: str) -> list[str]:
    out: list[str] = []
    for item in _listed(allowed):
        if item in system.tiers:
            out.append(item)
        elif item in TIER_KINDS:
            out.extend(system.tiers_of(item))
        elif item in ("gpu", "compute"):
            out.append(system.fast_tier)
        else:
            choices = [*system.tiers, *TIER_KINDS]
            raise SpecError(f"unknown tier {item!r}{did_you_mean(item, choices)}", file=file, key=key)
    return out
