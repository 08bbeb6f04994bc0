"""Running a study: expand, skip what is cached, run the rest, write table, plots and report.

Every answered point is stored as ``DIR/points/<hash>.json`` the moment it finishes (written to a
temporary file and renamed, so an interruption never leaves half a file). A re-run computes only
points whose hash has no stored result — new axis values, changed files, or points that failed
with an unexpected ``error`` (not stored, so retried: such failures may be transient, e.g. a worker
killed by Ctrl-C); ``ok``, ``infeasible`` and ``bad_input`` are answers and stay cached.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import memsim
from memsim.studies.backends import run_tasks
from memsim.studies.grid import Point, expand
from memsim.studies.points import point_hash
from memsim.studies.report import best_row, build_rows, metric_warnings, write_outputs
from memsim.studies.spec import Study, load_study

Progress = Callable[[int, int], None]  # (finished, to compute)


@dataclass
class StudyRun:
    """What a run produced: one row per point, the best row, and where the files are."""

    study: Study
    out_dir: Path
    rows: list[dict]
    best: dict | None
    computed: int
    cached: int
    files: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row["status"]] = out.get(row["status"], 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict:
        return {"name": self.study.name, "dir": str(self.out_dir), "points": len(self.rows),
                "computed": self.computed, "cached": self.cached, "statuses": self.counts(),
                "best": self.best, "files": self.files, "warnings": self.warnings, "rows": self.rows}


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def cached_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing or unreadable: compute it again
    # unexpected errors are retried; infeasible and bad_input are answers
    return record if record.get("status") in ("ok", "infeasible", "bad_input") else None


@contextmanager
def _shared_simulations(folder: Path) -> Iterator[None]:
    """Points share their simulations through ``folder`` (memsim/sim/memo.py): the baselines
    beside each plan recur across an axis that changes only the planner."""
    before = os.environ.get("MEMSIM_SIM_CACHE_DIR")
    os.environ["MEMSIM_SIM_CACHE_DIR"] = str(folder.resolve())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MEMSIM_SIM_CACHE_DIR", None)
        else:
            os.environ["MEMSIM_SIM_CACHE_DIR"] = before


def default_out(study: Study) -> Path:
    """``out/studies/NAME`` under the working directory (``/out/`` is git-ignored in a checkout)."""
    return Path("out") / "studies" / study.name


def plan_points(study: Study) -> list[tuple[Point, str]]:
    """Every point with its content hash (files are read once per distinct name)."""
    return [(p, point_hash(p.inputs.to_dict(), memsim.__version__)) for p in expand(study)]


def run_study(study: Study | str | Path, out_dir: str | Path | None = None, *, backend: str = "local",
              jobs: int | None = None, ray_address: str | None = None,
              progress: Progress | None = None) -> StudyRun:
    """Run every point not yet cached under ``out_dir`` and write results.csv, plots, report.md."""
    if not isinstance(study, Study):
        study = load_study(study)
    out = Path(out_dir or default_out(study))
    (out / "points").mkdir(parents=True, exist_ok=True)
    hashed = plan_points(study)
    records: dict[str, dict] = {}
    tasks: list[tuple[str, dict]] = []
    queued: set[str] = set()
    for point, key in hashed:
        if key in records or key in queued:
            continue  # two points with the same inputs (e.g. a label-only axis) run once
        record = cached_record(out / "points" / f"{key}.json")
        if record is not None:
            records[key] = record
        else:
            tasks.append((key, point.inputs.to_dict()))
            queued.add(key)
    cached = len(records)
    timing: dict[str, dict] = {}
    started = time.time()

    def on_done(key: str, record: dict) -> None:
        timing[key] = record.pop("timing", {})
        record["hash"] = key
        if record["status"] != "error":  # errors are retried, so only answers are stored
            _write_json(out / "points" / f"{key}.json", record)
        records[key] = record
        if progress:
            progress(len(records) - cached, len(tasks))

    if progress:
        progress(0, len(tasks))
    with _shared_simulations(out / "sims"):
        run_tasks(backend, tasks, on_done, jobs, ray_address)
    rows = build_rows(study, hashed, records)
    best = best_row(study, rows)
    files = write_outputs(study, rows, best, out)
    _write_json(out / "run.json", {
        "study": study.name, "source": study.source, "memsim": memsim.__version__, "backend": backend,
        "jobs": jobs, "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - started, 3), "points": len(rows), "computed": len(tasks),
        "cached": cached, "computed_hashes": sorted(k for k, _ in tasks), "timing": timing})
    files["run"] = str(out / "run.json")
    return StudyRun(study, out, rows, best, len(tasks), cached, files, metric_warnings(study, rows, records))
