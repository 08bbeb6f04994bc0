"""Memory pools: one per tier, bytes in use over time, and the first OOM.

A pool never refuses an allocation: going over capacity records an OOM event (tier, time, op,
bytes needed, the largest live tensors) the first time it happens and the simulation goes on, so
``peak`` is the tier's full demand — what a user needs to know to size the machine.
"""

from __future__ import annotations

from collections.abc import Callable

import simpy

from memsim.contracts.result import OOM

OOM_LARGEST = 5  # live tensors named in an OOM report


class Pool:
    """Bytes in use on one tier, with peak, time-weighted integral and who holds them."""

    __slots__ = (
        "allocated",
        "area",
        "capacity",
        "clock",
        "freed",
        "last_t",
        "live",
        "name",
        "on_change",
        "on_oom",
        "peak",
        "used",
    )

    def __init__(self, name: str, capacity: int, clock: simpy.Environment,
                 on_oom: Callable[[Pool, str, int], None], on_change: Callable | None = None):
        self.name, self.capacity, self.clock = name, capacity, clock  # simulated time: clock.now
        self.on_oom, self.on_change = on_oom, on_change
        self.used = self.peak = 0
        self.area = 0.0  # ∫ used dt
        self.last_t = 0.0
        self.live: dict[str, int] = {}
        self.allocated = self.freed = 0  # totals, for conservation checks

    def _advance(self) -> None:
        now = self.clock._now  # (simpy's ``now`` without the property call: hot)
        self.area += self.used * (now - self.last_t)
        self.last_t = now

    def alloc(self, key: str, nbytes: int, op: str) -> None:
        if nbytes <= 0:
            return
        now = self.clock._now  # (``_advance`` inlined: alloc and free are the hottest calls)
        self.area += self.used * (now - self.last_t)
        self.last_t = now
        self.used += nbytes
        self.allocated += nbytes
        self.live[key] = self.live.get(key, 0) + nbytes
        if self.used > self.peak:
            self.peak = self.used
        if self.used > self.capacity:
            self.on_oom(self, op, nbytes)
        if self.on_change is not None:
            self.on_change(self)

    def free(self, key: str, nbytes: int) -> None:
        if nbytes <= 0:
            return
        now = self.clock._now  # (``_advance`` inlined)
        self.area += self.used * (now - self.last_t)
        self.last_t = now
        held = self.live.get(key, 0)
        if held < nbytes:
            raise AssertionError(f"{self.name}: freeing {nbytes} B of {key!r}, which holds {held} B")
        self.used -= nbytes
        self.freed += nbytes
        if held == nbytes:
            del self.live[key]
        else:
            self.live[key] = held - nbytes
        if self.on_change is not None:
            self.on_change(self)

    def largest(self, n: int = OOM_LARGEST) -> list[tuple[str, int]]:
        return sorted(self.live.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def mean(self, end: float) -> float:
        self._advance()
        return self.area / end if end > 0 else float(self.used)

    def oom_record(self, time_s: float, op: str) -> OOM:
        return OOM(tier=self.name, time_s=time_s, op=op, needed_bytes=self.used,
                   capacity_bytes=self.capacity, largest=self.largest())
