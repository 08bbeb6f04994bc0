"""Moved to :mod:`memsim.hardware.overheads` (a GPU runtime's cost model, not simulation); this
name stays for code that still imports it from here."""

from memsim.hardware.overheads import (  # noqa: F401
    LINES,
    compute_capability,
    cublas_workspace,
    describe,
    reserved_lines,
    resident_room,
    rounding_waste,
    runtime_data,
    usable_bytes,
)
