"""Chrome-trace (Perfetto) export: one track per stream and copy engine, a counter per tier.

Times in the trace are microseconds (Chrome's unit); ``displayTimeUnit`` asks viewers for ms.
"""

from __future__ import annotations

import json
from pathlib import Path

PID = 1


class Recorder:
    """Collects X (span) and C (counter) events while the simulation runs."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.tids: dict[str, int] = {}

    def _tid(self, track: str) -> int:
        if track not in self.tids:
            self.tids[track] = len(self.tids) + 1
        return self.tids[track]

    def span(self, track: str, name: str, start: float, end: float, args: dict | None = None) -> None:
        ev = {"name": name, "ph": "X", "pid": PID, "tid": self._tid(track),
              "ts": start * 1e6, "dur": (end - start) * 1e6}
        if args:
            ev["args"] = args
        self.events.append(ev)

    def counter(self, tier: str, t: float, used: int) -> None:
        self.events.append({"name": f"{tier} bytes", "ph": "C", "pid": PID, "ts": t * 1e6,
                            "args": {"bytes": used}})

    def finish(self) -> list[dict]:
        """Track names first (metadata events), then every event in time order (stable)."""
        meta = [{"name": "process_name", "ph": "M", "pid": PID, "args": {"name": "memsim"}}]
        meta += [{"name": "thread_name", "ph": "M", "pid": PID, "tid": tid, "args": {"name": track}}
                 for track, tid in self.tids.items()]
        return meta + sorted(self.events, key=lambda e: e["ts"])


def write_timeline(events: list[dict], path: str | Path) -> None:
    """Write events as a Chrome-trace JSON document that Perfetto and chrome://tracing open."""
    doc = {"traceEvents": events, "displayTimeUnit": "ms"}
    Path(path).write_text(json.dumps(doc, separators=(",", ":")) + "\n")
