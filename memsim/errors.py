"""The two ways memsim says no, as networkx does: bad input, and no solution.

``SpecError`` (exit code 2) is the user's mistake: it names the file, the key path and what was
expected, so the CLI prints one line instead of a traceback. ``Infeasible`` (exit code 3) means
the input was fine but nothing fits: it carries a diagnosis per tier and the smallest change that
would fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from difflib import get_close_matches


class MemsimError(Exception):
    """Base of every error memsim raises on purpose."""

    exit_code = 1


class SpecError(MemsimError):
    """Bad input: a file, a key path inside it, and what was wrong."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        self.file, self.key, self.message = file, key, message
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


def did_you_mean(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """`` (did you mean 'capacity'?)`` when a close match exists, else ``''``."""
    close = get_close_matches(str(name), sorted(map(str, choices)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass
class Shortfall:
    """One tier that does not fit: how many bytes it needs beyond what it has."""

    tier: str
    needed_bytes: int
    capacity_bytes: int

    @property
    def short_bytes(self) -> int:
        return max(0, self.needed_bytes - self.capacity_bytes)


@dataclass
class Diagnosis:
    """Why a case cannot run and the smallest single change that would make it run."""

    summary: str
    shortfalls: list[Shortfall] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "summary": self.summary,
            "shortfalls": [
                {"tier": s.tier, "needed_bytes": s.needed_bytes, "capacity_bytes": s.capacity_bytes,
                 "short_bytes": s.short_bytes}
                for s in self.shortfalls
            ],
            "suggestions": list(self.suggestions),
        }


class Infeasible(MemsimError):
    """Nothing fits: carries the diagnosis the CLI prints with exit code 3."""

    exit_code = 3

    def __init__(self, diagnosis: Diagnosis):
        self.diagnosis = diagnosis
        super().__init__(diagnosis.summary)
