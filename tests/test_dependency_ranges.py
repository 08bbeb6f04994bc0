"""The dependency contract: every requirement in pyproject.toml has a tested range, and the
versions CI installs (.ci/constraints.txt) lie inside those ranges. A new highspy once changed what
every MIP solve printed; a range with an upper bound and a pinned CI keep the next release from
breaking users silently."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra if not r.startswith("memsim")]
    return reqs


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[_norm(name)] = Version(version)
    return pins


def test_every_dependency_has_a_lower_and_an_upper_bound():
    for req in _requirements():
        if req.name == "packaging":  # only the tests use it, any release will do
            continue
        ops = {spec.operator for spec in req.specifier}
        assert ">=" in ops and "<" in ops, f"{req} needs a tested range (>=low,<high)"


def test_ci_pins_every_dependency_inside_its_range():
    pins = _pins()
    for req in _requirements():
        assert _norm(req.name) in pins, f"{req.name} is not pinned in .ci/constraints.txt"
        assert req.specifier.contains(pins[_norm(req.name)], prereleases=True), \
            f"{req.name}=={pins[_norm(req.name)]} is outside {req.specifier}"


def test_ci_and_readme_install_from_the_constraints_file():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("pip install"))
    assert "-c .ci/constraints.txt" in command
    assert command in readme  # .ci/run runs exactly README's second Quickstart command
