"""Memory tier kinds as data (``hardware/kinds/tiers.yaml``): one entry per kind, read once.

Code that treats kinds differently (which tiers are per GPU, which are block devices, what a GB
of each costs in a diagnosis) asks this table instead of naming kinds, so a new kind is one entry.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import yaml

from memsim.catalog import catalog_dir


@dataclass(frozen=True)
class Kind:
    """One kind's entry; the keys are documented in the YAML file."""

    name: str
    per_device: bool
    duplex: bool
    storage: bool
    slack_price: float
    link: str | None = None
    grow: str = ""

    def growth(self, tier: str) -> str:
        """How a diagnosis names growing ``tier`` of this kind: 'HBM (a larger GPU)', 'dram',
        'host (cxl)'."""
        return self.grow or (tier if tier == self.name else f"{tier} ({self.name})")


@functools.cache
def tier_kinds() -> dict[str, Kind]:
    """Every tier kind by name, in the file's order."""
    with open(catalog_dir("hardware") / "kinds" / "tiers.yaml") as fh:
        table = yaml.safe_load(fh)
    return {name: Kind(name=name, **entry) for name, entry in table.items()}


def tier_kind(name: str) -> Kind:
    return tier_kinds()[name]


def storage_kinds() -> tuple[str, ...]:
    """The kinds that are block devices (ssd, flash)."""
    return tuple(k for k, v in tier_kinds().items() if v.storage)
