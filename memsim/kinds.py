"""Tier kinds and workload kinds as data: ``hardware/kinds/tiers.yaml`` and
``workloads/kinds/workloads.yaml``, one entry per kind, each read once.

Code that treats kinds differently (which tiers are per GPU or block devices, what a GB of each
costs in a diagnosis; which builder makes a workload's trace, how the headline names its job)
asks these tables instead of naming kinds, so a new kind is one entry. A neutral module: the
hardware schema, the workloads, the planners and the headline all read it.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import yaml

from memsim.catalog import catalog_dir


@dataclass(frozen=True)
class TierKind:
    """One memory tier kind; the keys are documented in ``hardware/kinds/tiers.yaml``."""

    name: str
    per_device: bool
    duplex: bool
    storage: bool
    slack_price: float
    link: str | None = None
    grow: str = ""
    gpu_runtime: bool = False

    def growth(self, tier: str) -> str:
        """How a diagnosis names growing ``tier`` of this kind: 'HBM (a larger GPU)', 'dram',
        'host (cxl)'."""
        return self.grow or (tier if tier == self.name else f"{tier} ({self.name})")


@dataclass(frozen=True)
class WorkloadKind:
    """One workload kind; the keys are documented in ``workloads/kinds/workloads.yaml``."""

    name: str
    builder: str
    job: str
    extras: dict[str, str] = field(default_factory=dict)

    def build(self) -> Callable:
        """The trace builder, ``(Workload, Architecture) -> Trace``, imported when first asked."""
        module, fn = self.builder.split(":")
        return getattr(importlib.import_module(module), fn)

    def job_text(self, job: dict) -> str:
        """The headline's words for a ``job`` document of this kind."""
        return self.job.format(**job) + "".join(
            more.format(**job) for key, more in self.extras.items() if job.get(key, 1) > 1)


def _table(family: str, name: str) -> dict:
    with open(catalog_dir(family) / "kinds" / name) as fh:
        return yaml.safe_load(fh)


@functools.cache
def tier_kinds() -> dict[str, TierKind]:
    """Every tier kind by name, in the file's order."""
    return {name: TierKind(name=name, **entry) for name, entry in _table("hardware", "tiers.yaml").items()}


def tier_kind(name: str) -> TierKind:
    return tier_kinds()[name]


def storage_kinds() -> tuple[str, ...]:
    """The tier kinds that are block devices (ssd, flash)."""
    return tuple(k for k, v in tier_kinds().items() if v.storage)


@functools.cache
def workload_kinds() -> dict[str, WorkloadKind]:
    """Every workload kind by name, in the file's order."""
    return {name: WorkloadKind(name=name, **entry)
            for name, entry in _table("workloads", "workloads.yaml").items()}
