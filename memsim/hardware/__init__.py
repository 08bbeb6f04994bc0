"""Machines: the System schema, its topology, and the catalog of real systems."""

from memsim.hardware.catalog import list_systems, load_system
from memsim.hardware.spec import Compute, Link, Port, System, Tier
from memsim.hardware.topology import Route, Topology

__all__ = ["Compute", "Link", "Port", "Route", "System", "Tier", "Topology", "list_systems", "load_system"]
