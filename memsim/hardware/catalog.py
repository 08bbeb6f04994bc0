"""Loading Systems from the catalog or a user's file, and checking what the schema cannot."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from memsim.errors import SpecError
from memsim.hardware.spec import System
from memsim.hardware.topology import Topology
from memsim.specio import catalog_names, load_spec, resolve

PREFIX = "hardware."


def load_system(name_or_path: str | Path | System, overrides: Iterable[str] = ()) -> System:
    """A System from a catalog name or a YAML path, with ``--set hardware.x.y=v`` overrides.

    Overrides without the ``hardware.`` prefix are ignored here (they belong to the workload).
    """
    if isinstance(name_or_path, System):
        return name_or_path
    mine = [o[len(PREFIX):] for o in overrides if o.startswith(PREFIX)]
    system = load_spec(System, name_or_path, "hardware", mine)
    path = str(resolve(name_or_path, "hardware"))
    parts = Topology(system).components()
    if len(parts) > 1:
        islands = " | ".join(", ".join(sorted(p)) for p in parts)
        raise SpecError(f"the topology is disconnected: no link joins {islands}", file=path, key="links")
    return system


def list_systems() -> list[System]:
    """Every catalog system, sorted by name."""
    return [load_system(name) for name in catalog_names("hardware")]
