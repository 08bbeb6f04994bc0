"""Validation suites: named workloads × named plans, as YAML in ``validation/``.

A suite is data: which workloads (paths relative to the suite file, or catalog names), which
plans (inline Plan mappings, or paths to plan files), and which pairs to run (``cases``; all
pairs when omitted). Loading checks everything up front, so a typo fails before minutes of
measuring, naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from memsim.contracts.plan import Plan
from memsim.contracts.spec import Spec
from memsim.errors import SpecError, did_you_mean
from memsim.specio import catalog_names, load_mapping, resolve, validate

# Untimed steps a replay runs before the timed ones: the simulator predicts a steady-state step,
# and a replay's first two are not (memsim.validation.replay.replay says why).
WARMUP = 2


class SuiteSpec(Spec):
    """The YAML schema of a suite."""

    name: str = Field(description="suite name, used in recorded result file names")
    description: str = Field("", description="what the suite exercises")
    repeats: int = Field(3, ge=1, description="timed steps per case; the median is reported")
    rounds: int = Field(1, ge=1, description="times every case is replayed, in turn, each from "
                        "its own setup; a case reports its median round")
    warmup: int = Field(WARMUP, ge=0, description="untimed steps per case before the timed ones: the "
                        "simulator predicts a steady-state step")
    workloads: dict[str, str] = Field(
        min_length=1, description="alias → workload YAML (relative to the suite) or catalog name")
    plans: dict[str, dict | str] = Field(
        min_length=1, description="alias → inline Plan mapping, or a plan file relative to the suite")
    cases: list[str] | None = Field(
        None, description="'workload/plan' pairs to run, in order (default: every pair)")


@dataclass
class SuiteCase:
    name: str
    workload: str  # resolved path or catalog name
    plan: Plan
    plan_file: str


@dataclass
class Suite:
    name: str
    description: str
    repeats: int
    warmup: int
    rounds: int
    cases: list[SuiteCase]
    path: Path


def load_suite(name_or_path: str | Path) -> Suite:
    """A Suite from ``validation/<name>.yaml`` or a path; every reference is checked here."""
    try:
        path = resolve(name_or_path, "validation")
    except SpecError:
        names = catalog_names("validation")
        raise SpecError(f"no suite named {str(name_or_path)!r}{did_you_mean(str(name_or_path), names)}; "
                        f"suites in the catalog: {', '.join(names) or 'none'}", key="--suite") from None
    spec = validate(SuiteSpec, load_mapping(path, "validation"), str(path))
    workloads = {alias: _workload_ref(path, alias, ref) for alias, ref in spec.workloads.items()}
    plans = {alias: _plan(path, alias, ref) for alias, ref in spec.plans.items()}
    pairs = spec.cases or [f"{w}/{p}" for w in spec.workloads for p in spec.plans]
    cases = []
    for i, pair in enumerate(pairs):
        w, sep, p = pair.partition("/")
        if not sep:
            raise SpecError(f"expected 'workload/plan', got {pair!r}", file=str(path), key=f"cases.{i}")
        if w not in workloads:
            raise SpecError(f"unknown workload {w!r}{did_you_mean(w, workloads)}", file=str(path),
                            key=f"cases.{i}")
        if p not in plans:
            raise SpecError(f"unknown plan {p!r}{did_you_mean(p, plans)}", file=str(path),
                            key=f"cases.{i}")
        plan, plan_file = plans[p]
        cases.append(SuiteCase(pair, workloads[w], plan, plan_file))
    return Suite(spec.name, spec.description, spec.repeats, spec.warmup, spec.rounds, cases, path)


def _workload_ref(suite: Path, alias: str, ref: str) -> str:
    candidate = suite.parent / ref
    if candidate.is_file():
        return str(candidate)
    try:
        return str(resolve(ref, "workloads"))
    except SpecError as exc:
        raise SpecError(f"{exc.message}", file=str(suite), key=f"workloads.{alias}") from None


def _plan(suite: Path, alias: str, ref: dict | str) -> tuple[Plan, str]:
    where = f"{suite}: plans.{alias}"
    if isinstance(ref, dict):
        return Plan.from_dict(ref, file=where), where
    candidate = suite.parent / ref
    if not candidate.is_file():
        raise SpecError(f"plan file {ref!r} not found next to the suite", file=str(suite),
                        key=f"plans.{alias}")
    return Plan.load(candidate), str(candidate)
