"""Where the built-in catalogs live, in a checkout and in an installed wheel.

The catalogs (``hardware/``, ``workloads/``, ``planners/``, ``validation/``, ``studies/``) sit at
the repository root where people browse them; ``memsim/data/<family>`` links to them so the wheel
ships them too, and ``memsim plan --hardware h100-sxm`` works from any directory after install.
"""

from __future__ import annotations

from pathlib import Path

FAMILIES = ("hardware", "workloads", "planners", "validation", "studies")
_PACKAGE = Path(__file__).resolve().parent


def catalog_dir(family: str) -> Path:
    """The folder of one catalog family: the packaged copy, else the checkout's root folder."""
    if family not in FAMILIES:
        raise ValueError(f"unknown catalog family {family!r}")
    packaged = _PACKAGE / "data" / family
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parent / family
