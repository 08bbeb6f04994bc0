"""Checking a study's cases before any point runs.

A point whose values the schema rejects is an answer (``bad_input``: a batch of 0 on one axis value
says so in the table and the study goes on). But when *every* point is rejected, the mistake is in
the study itself — an axis key typo, a bad ``--set`` — and running it would only produce a table of
failures; docs/studies.md promises exit 2 before anything runs, so that is checked here, cheaply:
each distinct case's hardware and workload are loaded (validated), nothing is planned or simulated.
"""

from __future__ import annotations

from memsim.errors import SpecError


def _load_error(hardware: str, workload: str, overrides: tuple[str, ...]) -> SpecError | None:
    from memsim.hardware import load_system
    from memsim.workloads import load_workload

    try:
        load_system(hardware, overrides)
        load_workload(workload, overrides)
    except SpecError as exc:
        return exc
    return None


def _culprit(study, exc: SpecError) -> str | None:
    """Where in the study the rejected key comes from: an axis, or a --set / base.set line."""
    key = exc.key or ""
    bare = key.removeprefix("hardware.")
    for i, axis in enumerate(study.axes):
        for a in axis.members():
            if a.key and a.key.removeprefix("hardware.") in (key, bare):
                return f"axes.{i}"
    for text in study.base.set:
        if text.split("=", 1)[0].strip().removeprefix("hardware.") in (key, bare):
            return "base.set"
    return None


def check_points(study, source: str) -> None:
    """Raise a SpecError (exit 2) naming the study's culprit key when no point of ``study`` loads."""
    from memsim.studies.grid import expand

    points = expand(study)
    if not points:
        return
    seen: dict[tuple, SpecError | None] = {}
    first: SpecError | None = None
    for point in points:
        p = point.inputs
        case = (p.hardware, p.workload, p.overrides)
        if case not in seen:
            seen[case] = _load_error(*case)
        if seen[case] is None:
            return  # at least one point loads: failing points are answers, recorded per point
        first = first or seen[case]
    where = _culprit(study, first)
    raise SpecError(f"no point can run: {first}", file=source, key=where)
