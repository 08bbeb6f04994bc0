"""The study file: a base case, the axes to vary, and what to collect, cost and plot.

A study is data (YAML, loaded through ``memsim.specio`` so a mistake names the file and key).
Loading resolves the base hardware, workload and planner names relative to the study file, so a
study that ships its own ``extends:`` files runs from any directory; it has no other side effect.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from memsim.errors import SpecError, did_you_mean
from memsim.specio import catalog_names, load_spec, resolve

Scalar = str | int | float | bool
# Axis keys that pick a field of the base case instead of overriding a key inside a spec file.
BASE_KEYS = ("hardware", "workload", "planner", "time_limit")
_FILTER = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(<=|>=|==|!=|<|>)\s*([^\s<>=!].*?)\s*$")


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Base(StudySpec):
    """The case every point starts from; each axis changes one of its keys."""

    hardware: str = Field(description="hardware catalog name or path to a YAML file (relative to the study)")
    workload: str = Field(description="workload catalog name or path to a YAML file (relative to the study)")
    planner: str = Field("mip", description="planner name or preset (as `memsim plan --planner`)")
    time_limit: float = Field(5.0, gt=0, description="seconds the planner may search per point")
    set: list[str] = Field(default_factory=list,
                           description="--set overrides applied to every point, e.g. training.micro_batch=2")

    @field_validator("set")
    @classmethod
    def _assignments(cls, value: list[str]) -> list[str]:
        for item in value:
            if "=" not in item or not item.split("=", 1)[0].strip():
                raise ValueError(f"expected key.path=value, got {item!r}")
        return value


class Range(StudySpec):
    """Numbers from ``start`` to ``stop`` inclusive: ``step`` apart, or doubling with ``log2``."""

    start: float = Field(description="first value")
    stop: float = Field(description="last value (inclusive)")
    step: float | None = Field(None, gt=0, description="distance between values (linear range)")
    log2: bool = Field(False, description="double from start to stop instead of stepping")
    unit: str = Field("", description="unit appended to every value, e.g. GiB → 256GiB")

    @model_validator(mode="after")
    def _shape(self) -> Range:
        if self.stop < self.start:
            raise ValueError(f"stop ({self.stop:g}) is below start ({self.start:g})")
        if self.log2 == (self.step is not None):
            raise ValueError("give exactly one of step or log2: true")
        if self.log2 and self.start <= 0:
            raise ValueError("a log2 range needs start > 0")
        if len(self.numbers()) > 10_000:
            raise ValueError("range has more than 10000 values")
        return self

    def numbers(self) -> list[float]:
        if self.log2:
            count = math.floor(math.log2(self.stop / self.start) + 1e-9) + 1
            return [self.start * 2**i for i in range(count)]
        count = math.floor((self.stop - self.start) / self.step + 1e-9) + 1
        return [self.start + i * self.step for i in range(min(count, 10_001))]

    def values(self) -> list[Scalar]:
        out: list[Scalar] = []
        for x in self.numbers():
            number: Scalar = round(x) if abs(x - round(x)) < 1e-9 else round(x, 12)
            out.append(f"{number}{self.unit}" if self.unit else number)
        return out


class Axis(StudySpec):
    """One key and the values it takes (a list or a range), or ``zip``: axes that move together."""

    key: str | None = Field(None, description="dotted key to vary (training.micro_batch, "
                            "hardware.tiers.cxl.capacity), or hardware / workload / planner / time_limit")
    values: list[Scalar] | None = Field(None, min_length=1, description="the values, in order")
    range: Range | None = Field(None, description="a numeric range instead of a list")
    label: bool = Field(False, description="a coordinate for tables and plots only, not applied to the "
                                           "case (e.g. the year of a zipped hardware-trend axis)")
    zip: list[Axis] | None = Field(None, min_length=2, description="axes of equal length varied in "
                                   "lockstep: the i-th point takes the i-th value of each")

    @model_validator(mode="after")
    def _one_source(self) -> Axis:
        if self.zip is not None:
            if self.key or self.values is not None or self.range is not None or self.label:
                raise ValueError("a zip axis has only `zip:`; put key and values inside each member")
            if any(a.zip is not None for a in self.zip):
                raise ValueError("zip axes cannot be nested")
            lengths = {a.key: len(a.resolved()) for a in self.zip}
            if len(set(lengths.values())) > 1:
                raise ValueError(f"zipped axes differ in length: {lengths}")
            return self
        if not self.key:
            raise ValueError("an axis needs a key (or zip: [...])")
        if (self.values is None) == (self.range is None):
            raise ValueError(f"axis {self.key!r}: give exactly one of values or range")
        if self.key in BASE_KEYS and self.label:
            raise ValueError(f"axis {self.key!r} cannot be a label: it picks the base {self.key}")
        if any(isinstance(v, str) and "\n" in v for v in self.values or ()):
            raise ValueError(f"axis {self.key!r}: values must be single-line scalars")
        return self

    def members(self) -> list[Axis]:
        """The simple axes this one stands for: itself, or its zipped members."""
        return list(self.zip) if self.zip is not None else [self]

    def resolved(self) -> list[Scalar]:
        return list(self.values) if self.values is not None else self.range.values()


class Costs(StudySpec):
    """Hourly prices of the parts of a system, to cost each point (cloud list prices, say)."""

    usd_per_gpu_hour: float = Field(0.0, ge=0, description="dollars per GPU per hour (HBM included)")
    usd_per_gib_dram: float = Field(0.0, ge=0, description="dollars per GiB of DRAM per hour")
    usd_per_gib_cxl: float = Field(0.0, ge=0, description="dollars per GiB of CXL memory per hour")
    usd_per_tb_nvme: float = Field(0.0, ge=0, description="dollars per TB of SSD or flash per hour")


class Target(StudySpec):
    """Which point is best: the one that minimises (or maximises) a column among feasible points
    that meet an optional bound, e.g. the cheapest system reaching 1000 tokens/s."""

    metric: str | None = Field(None, description="column the bound applies to, e.g. tokens_per_s")
    at_least: float | None = Field(None, description="keep points whose metric is at least this")
    at_most: float | None = Field(None, description="keep points whose metric is at most this")
    minimize: str | None = Field(None, description="column to minimise, e.g. cost (usd_per_hour)")
    maximize: str | None = Field(None, description="column to maximise, e.g. tokens_per_s")

    @model_validator(mode="after")
    def _consistent(self) -> Target:
        if (self.at_least is not None or self.at_most is not None) and not self.metric:
            raise ValueError("at_least / at_most need a metric")
        if self.metric and self.at_least is None and self.at_most is None:
            raise ValueError(f"metric {self.metric!r} needs at_least or at_most")
        if self.minimize and self.maximize:
            raise ValueError("give one of minimize or maximize")
        if not self.minimize and not self.maximize:  # default: cheapest that meets the bound, else fastest
            if self.metric:
                self.__dict__["minimize"] = "cost"
            else:
                self.__dict__["maximize"] = "tokens_per_s"
        return self

    @property
    def objective(self) -> tuple[str, bool]:
        """(column, larger is better)."""
        column = self.minimize or self.maximize
        return ("usd_per_hour" if column == "cost" else column), self.maximize is not None


class PlotSpec(StudySpec):
    """One PNG: ``y`` against ``x``, a line per value of ``series``."""

    x: str = Field(description="axis key on the x axis")
    y: str = Field("tokens_per_s", description="metric on the y axis")
    series: str | None = Field(None, description="axis key giving one line per value")
    logx: bool = Field(False, description="logarithmic x axis")
    logy: bool = Field(False, description="logarithmic y axis")
    title: str | None = Field(None, description="figure title")


class Study(StudySpec):
    """A what-if study: a base case, the axes to vary, and what to collect, cost and plot."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", description="short name, used for file names")
    description: str = Field("", description="the question the study answers")
    run: Literal["plan", "simulate"] = Field(
        "plan", description="plan: plan_case (planner + simulation); simulate: simulate the workload "
                            "with every byte resident on the compute tier, or with base.planner's "
                            "plan when the study names one (as memsim simulate --planner)")
    base: Base = Field(description="the case every point starts from")
    axes: list[Axis] = Field(default_factory=list, description="keys to vary; points are their product")
    filters: list[str] = Field(default_factory=list,
                               description="keep points where `key OP value` holds (OP: < <= > >= == !=)")
    costs: Costs | None = Field(None, description="hourly prices; default: the hardware's usd_per_hour")
    target: Target | None = Field(None, description="which point the report calls best")
    metrics: list[str] = Field(
        default_factory=lambda: ["feasible", "step_time_s", "tokens_per_s"],
        description="result keys (dotted, e.g. peak_bytes.hbm) to put in the table")
    plots: list[PlotSpec] | None = Field(None, description="figures; default: chosen from the axes")
    _source: str = PrivateAttr("")

    @property
    def source(self) -> str:
        """The file the study was read from ('' when built in code)."""
        return self._source

    @property
    def folder(self) -> Path:
        """Relative hardware and workload paths are looked up here first."""
        return Path(self._source).parent if self._source else Path.cwd()

    @field_validator("filters")
    @classmethod
    def _filters(cls, value: list[str]) -> list[str]:
        for text in value:
            if not _FILTER.match(text):
                raise ValueError(f"expected `key OP value` with OP one of < <= > >= == !=, got {text!r}")
        return value

    @model_validator(mode="after")
    def _keys(self) -> Study:
        keys = self.axis_keys()
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"key {dupes[0]!r} is varied by two axes")
        for i, text in enumerate(self.filters):
            key = _FILTER.match(text).group(1)
            if key not in keys:
                raise ValueError(f"filters[{i}]: {key!r} is not an axis key; axes are {keys}")
        for i, plot in enumerate(self.plots or ()):
            for role in ("x", "series"):
                key = getattr(plot, role)
                if key is not None and key not in keys:
                    raise ValueError(f"plots[{i}].{role}: {key!r} is not an axis key; axes are {keys}")
        return self

    def axis_keys(self) -> list[str]:
        return [a.key for axis in self.axes for a in axis.members()]

    def shown_keys(self) -> list[str]:
        """Axis keys worth a column in a terminal: a zip with a label is shown by its labels."""
        keys: list[str] = []
        for axis in self.axes:
            labels = [a.key for a in axis.members() if a.label]
            keys.extend(labels or [a.key for a in axis.members()])
        return keys

    def label_keys(self) -> set[str]:
        return {a.key for axis in self.axes for a in axis.members() if a.label}


def parse_filter(text: str) -> tuple[str, str, Any]:
    """``"training.micro_batch <= 4"`` → ("training.micro_batch", "<=", 4)."""
    import yaml

    key, op, raw = _FILTER.match(text).groups()
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key, op, value


def resolve_near(name: str, family: str, folder: Path) -> str:
    """A catalog name stays a name; a path is made absolute, relative to the study file."""
    candidate = Path(name)
    if not candidate.is_absolute() and (folder / candidate).exists():
        return str((folder / candidate).resolve())
    if candidate.suffix in (".yaml", ".yml", ".json") or candidate.exists():
        return str(resolve(candidate, family).resolve())
    resolve(name, family)  # raises a SpecError with a did-you-mean when the name is unknown
    return name


def load_study(name_or_path: str | Path, extra_set: Iterable[str] = ()) -> Study:
    """Read and check a study; base names and axis values naming files are resolved up front.

    ``extra_set`` are ``--set`` overrides added to the base case's ``set`` (every point)."""
    try:
        path = resolve(name_or_path, "studies")
    except SpecError as exc:
        if exc.file:  # a path that does not exist
            raise
        names = catalog_names("studies")
        raise SpecError(f"no study named {str(name_or_path)!r}{did_you_mean(str(name_or_path), names)}; "
                        f"built-in studies: {', '.join(names)}") from None
    study = load_spec(Study, path, "studies")
    for text in extra_set:
        if "=" not in text or not text.split("=", 1)[0].strip():
            raise SpecError(f"--set expects key.path=value, got {text!r}")
        study.base.set.append(text)
    folder = path.parent
    for key, family in (("hardware", "hardware"), ("workload", "workloads"), ("planner", "planners")):
        if key == "planner" and not study.base.planner.endswith((".yaml", ".yml", ".json")):
            continue  # a preset or registry name: the planner reports an unknown one per point
        try:
            setattr(study.base, key, resolve_near(getattr(study.base, key), family, folder))
        except SpecError as exc:
            raise SpecError(exc.message, file=str(path), key=f"base.{key}") from None
    for i, axis in enumerate(study.axes):
        for j, a in enumerate(axis.members()):
            if a.key in ("hardware", "workload", "planner") and a.values is not None:
                family = {"hardware": "hardware", "workload": "workloads", "planner": "planners"}[a.key]
                where = f"axes.{i}.zip.{j}.values" if axis.zip is not None else f"axes.{i}.values"
                try:
                    for v in a.values:
                        if a.key != "planner" or str(v).endswith((".yaml", ".yml", ".json")):
                            resolve_near(str(v), family, folder)
                except SpecError as exc:
                    raise SpecError(exc.message, file=str(path), key=where) from None
    study._source = str(path)
    return study
