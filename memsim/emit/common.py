"""What every framework emitter shares: the devices a framework can name, and the memsim tiers
they stand for on a given System.

Frameworks name three kinds of place: the GPU, host memory ("cpu") and a disk folder ("nvme",
"disk", an offload directory). memsim's tiers are richer (CXL expanders, several SSDs), so an
emitter first collapses a plan's placement onto those three places, and an importer maps them
back: "cpu" is the CPU's own memory tier, the disk is the largest SSD or flash tier (the one the
baselines pick, memsim.planners.baselines).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from memsim.catalog import catalog_dir
from memsim.errors import SpecError
from memsim.hardware.spec import System
from memsim.kinds import tier_kind
from memsim.workloads.trace import Trace

GIB = 1 << 30
DEVICES = ("gpu", "cpu", "disk")


@dataclass(frozen=True)
class Places:
    """The tiers standing for a framework's GPU, host memory and disk on one System."""

    gpu: str
    cpu: str | None
    disk: str | None

    def tier(self, device: str, file: str, key: str) -> str:
        tier = getattr(self, device)
        if tier is None:
            what = "host memory beside the GPU" if device == "cpu" else "an SSD or flash tier"
            raise SpecError(f"{key} puts bytes on {device!r}, but this system has no {what}",
                            file=file, key=key)
        return tier


def places(system: System) -> Places:
    host = system.cpu.memory if system.cpu is not None and system.cpu.memory != system.fast_tier else None
    disks = [t for t, v in system.tiers.items() if tier_kind(v.kind).storage]
    disk = max(disks, key=lambda t: (system.tiers[t].capacity, t)) if disks else None
    return Places(system.fast_tier, host, disk)


def device_of(system: System, tier: str) -> str:
    """The framework device a memsim tier collapses to (CXL memory is host memory to a framework:
    a CPU-less NUMA node it reaches with numactl, not a device it can name)."""
    if tier == system.fast_tier:
        return "gpu"
    kind = system.tiers[tier].kind
    return "disk" if tier_kind(kind).storage else "cpu"


def collapse(system: System, split: dict[str, float], cls: str, notes: list[str],
             framework: str) -> dict[str, float]:
    """A class's tier fractions as fractions per framework device, with a note for every tier
    the framework cannot name separately."""
    where = places(system)
    out = dict.fromkeys(DEVICES, 0.0)
    for tier, frac in split.items():
        device = device_of(system, tier)
        standin = getattr(where, device)
        if tier != standin and frac > 0:
            notes.append(f"{framework} cannot name tier {tier}: its {frac:.0%} of the {cls} bytes "
                         f"go to {device} ({standin})")
        out[device] += frac
    return out


def split_of(system: System, devices: dict[str, float], file: str, key: str) -> dict[str, float]:
    """Device fractions back to a memsim placement (zero shares dropped; empty if all on GPU)."""
    where = places(system)
    split: dict[str, float] = {}
    for device, frac in devices.items():
        if frac > 0:
            tier = where.tier(device, file, key)
            split[tier] = split.get(tier, 0.0) + frac
    return {} if set(split) <= {where.gpu} else split


def weight_bytes(trace: Trace) -> dict[str, int]:
    """Weight bytes of one layer, of the embedding and of the head (the units a device_map or a
    partial offload counts in)."""
    layers = int(trace.meta.get("layers") or 1)
    total = trace.bytes_by_class().get("weight", 0)
    embed = sum(t.bytes for n, t in trace.tensors.items() if t.cls == "weight" and n.startswith("embed"))
    head = sum(t.bytes for n, t in trace.tensors.items() if t.cls == "weight" and n.startswith("head"))
    return {"total": total, "embed": embed, "head": head, "layer": (total - embed - head) // max(1, layers),
            "layers": layers}


def hub_id(trace: Trace) -> str | None:
    """The HF hub id of the trace's catalog model (its config's ``_name_or_path``), if known."""
    name = str(trace.meta.get("model") or "")
    path = catalog_dir("workloads") / "models" / f"{name}.json"
    if not name or not path.is_file():
        return None
    hub = json.loads(path.read_text()).get("_name_or_path")
    return hub if isinstance(hub, str) and "/" in hub else None


def need(trace: Trace, kinds: tuple[str, ...], framework: str, hint: str) -> None:
    """Refuse (exit 2) a workload kind the framework does not run: nothing honest to emit."""
    if trace.kind not in kinds:
        raise SpecError(f"{framework} does not run {trace.kind} workloads ({hint})", key="--emit")


def largest_share(devices: dict[str, float], among: tuple[str, ...]) -> str:
    """The device among ``among`` holding most of the bytes (ties: the later, slower one)."""
    return max(among, key=lambda d: (devices.get(d, 0.0), among.index(d)))


def parse_mapping(text: str, file: str) -> dict:
    """A JSON or YAML mapping from text; a syntax error or duplicate key is a SpecError."""
    import yaml

    from memsim.specio import _UniqueKeyLoader

    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise SpecError(f"{where}invalid JSON/YAML: {problem}", file=file) from None
    if not isinstance(data, dict):
        raise SpecError("expected a mapping at the top level", file=file)
    return data
