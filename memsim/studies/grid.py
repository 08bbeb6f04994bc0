"""Expanding a study's axes into points: the product of the axes, zipped axes in lockstep, filtered.

A point is its coordinates (axis key → value, as written in the study) plus the inputs of one
case (hardware, workload, planner, time limit, ``--set`` overrides). Order is the axes' order, so
the same study always yields the same points in the same order.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memsim import units
from memsim.studies.spec import BASE_KEYS, Axis, Scalar, Study, parse_filter, resolve_near

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
        "==": operator.eq, "!=": operator.ne}


@dataclass(frozen=True)
class PointInputs:
    """Everything one case depends on, as plain data a worker process can receive."""

    run: str
    hardware: str
    workload: str
    planner: str | None  # None: a ``run: simulate`` point with every byte resident
    time_limit: float
    overrides: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"run": self.run, "hardware": self.hardware, "workload": self.workload,
                "planner": self.planner, "time_limit": self.time_limit, "overrides": list(self.overrides)}


@dataclass(frozen=True)
class Point:
    index: int
    coords: dict[str, Scalar] = field(hash=False)
    inputs: PointInputs


def format_value(value: Scalar) -> str:
    """A value as ``--set`` text that reads back (YAML) as the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text:  # YAML 1.1 reads 1e+20 as a string; 1.0e+20 as a float
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    return str(value)


def numeric(value: Any) -> float | None:
    """A number for comparisons and plot axes: plain numbers, or quantities with units."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    for parse in (units.parse_bytes, units.parse_bandwidth, units.parse_flops, units.parse_time):
        try:
            return float(parse(value))
        except (ValueError, TypeError):
            continue
    return None


def _compare(left: Any, op: str, right: Any) -> bool:
    """Numbers (units understood: 512GiB > 64GiB) compare as numbers, anything else as text."""
    a, b = numeric(left), numeric(right)
    if a is not None and b is not None:
        return _OPS[op](a, b)
    return _OPS[op](str(left), str(right))


def _axis_rows(axis: Axis) -> list[dict[str, Scalar]]:
    columns = [(a.key, a.resolved()) for a in axis.members()]
    return [{key: values[i] for key, values in columns} for i in range(len(columns[0][1]))]


def expand(study: Study) -> list[Point]:
    """Every point of the study, in axis order, after the filters."""
    filters = [parse_filter(f) for f in study.filters]
    labels = study.label_keys()
    points: list[Point] = []
    for combo in itertools.product(*(_axis_rows(a) for a in study.axes)):
        coords: dict[str, Scalar] = {}
        for part in combo:
            coords.update(part)
        if all(_compare(coords[key], op, value) for key, op, value in filters):
            points.append(Point(len(points), coords, _inputs(study, coords, labels)))
    return points


def planner_ref(name: str, folder: Path) -> str:
    """A planner preset file (``kv-on-cxl.yaml``) is found next to the study; a name stays a name."""
    if name.endswith((".yaml", ".yml", ".json")):
        return resolve_near(name, "planners", folder)
    return name


def _planner(study: Study, base: dict[str, Any], folder: Path) -> str | None:
    """The planner a point runs: ``run: simulate`` simulates everything resident unless the study
    names a planner (in ``base`` or as an axis), as ``memsim simulate`` does without ``--planner``."""
    named = "planner" in study.base.model_fields_set or "planner" in study.axis_keys()
    if study.run == "simulate" and not named:
        return None
    return planner_ref(str(base["planner"]), folder)


def _inputs(study: Study, coords: dict[str, Scalar], labels: set[str]) -> PointInputs:
    base: dict[str, Any] = {k: getattr(study.base, k) for k in BASE_KEYS}
    overrides = list(study.base.set)
    for key, value in coords.items():
        if key in labels:
            continue
        if key in BASE_KEYS:
            base[key] = value
        else:
            overrides.append(f"{key}={format_value(value)}")
    folder = study.folder
    return PointInputs(run=study.run,
                       hardware=resolve_near(str(base["hardware"]), "hardware", folder),
                       workload=resolve_near(str(base["workload"]), "workloads", folder),
                       planner=_planner(study, base, folder),
                       time_limit=float(base["time_limit"]),
                       overrides=tuple(overrides))
