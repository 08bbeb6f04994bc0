"""A reproduction case and what it yields: the types every kind module shares.

A leaf module (it imports no other ``reproduce*`` module), so the runner (reproduce.py), the
dispatch table (reproduce_kinds.py) and the kind modules form no import cycle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import Field

from memsim.contracts.spec import Spec

GAP = 0.10  # a relative difference above this needs a note saying why


class CaseSpec(Spec):
    """One reproduction: the published figures, their source and memsim's setup."""

    name: str = Field(description="case name (the --case argument)")
    title: str = Field(description="one line heading the case in the document")
    kind: str = Field(description="how the case is evaluated: zero, flexgen, paged, checkpoint, kivi, "
                                  "flash, headinfer, framework, parallel, checkpoint_module, "
                                  "prefix_trace, prefix_serving, kv_budget, kv_capacity, "
                                  "goodput, kv_transfer, swap_submit")
    quick: bool = Field(False, description="part of the reduced set that --quick runs")
    order: int = Field(100, description="position in the document (then by name)")
    source: str = Field(description="the publication the figures come from")
    setup: dict[str, Any] = Field(default_factory=dict, description="memsim setup of the case")
    published: dict[str, Any] = Field(default_factory=dict, description="published figures")
    columns: list[dict[str, Any]] | None = Field(None, description="per-column setups (ZeRO)")
    runs: list[dict[str, Any]] | None = Field(None, description="per-run setups (FlexGen)")
    notes: dict[str, str] = Field(default_factory=dict, description="figure key -> why memsim's figure "
                                                                    "may differ from the published one")


@dataclass
class Figure:
    """One row: a published figure beside memsim's, where memsim's came from, and why they differ."""

    key: str
    label: str
    unit: str  # GB, GiB, tokens/s, x (ratio), % (stored as a fraction)
    published: float | tuple[float, float] | None
    memsim: float | None
    source: str  # accounting formula | simulated | MIP plan simulated | ...
    note: str = ""

    @property
    def diff(self) -> float | None:
        """memsim / published − 1; inside a published range counts as 0, outside as the nearest end."""
        if self.memsim is None or self.published is None:
            return None
        if isinstance(self.published, tuple):
            lo, hi = self.published
            if lo <= self.memsim <= hi:
                return 0.0
            ref = lo if self.memsim < lo else hi
        else:
            ref = self.published
        return self.memsim / ref - 1 if ref else None

    @property
    def gap(self) -> bool:
        d = self.diff
        return d is not None and abs(d) > GAP

    def to_dict(self) -> dict:
        out = asdict(self)
        out["published"] = list(self.published) if isinstance(self.published, tuple) else self.published
        out["diff"] = self.diff
        return out


@dataclass
class CaseResult:
    name: str
    title: str
    source: str
    setup: list[str]  # how memsim was set up, one line each
    figures: list[Figure]
    notes: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)  # memsim commands that show the same figures

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "figures"},
                "figures": [f.to_dict() for f in self.figures]}
