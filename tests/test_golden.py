"""The golden set (tests/golden/): every case's full JSON document is what it was when the
golden files were written, floats within ``golden.REL`` relative (see tests/golden.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("golden", Path(__file__).with_name("golden.py"))
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)

CASES = golden.cases()


def _param(case: dict):
    marks = [pytest.mark.slow] if case.get("slow") else []
    return pytest.param(case, id=case["name"], marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_golden_document(case: dict) -> None:
    want = json.loads((golden.GOLDEN / f"{case['name']}.json").read_text())
    assert golden.differences(want, golden.document(case)) == []


def test_differences_sees_a_change() -> None:
    doc = {"a": 1.0, "b": [1, {"c": "x"}], "d": 2}
    assert golden.differences(doc, json.loads(json.dumps(doc))) == []
    assert golden.differences(doc, {**doc, "a": 1.0 + 1e-12}) == []
    assert golden.differences(doc, {**doc, "a": 1.0 + 1e-6}) != []
    assert golden.differences(doc, {**doc, "b": [1, {"c": "y"}]}) == [".b[1].c: 'x' -> 'y'"]
    assert golden.differences(doc, {**doc, "d": 3}) != []
    assert golden.differences(doc, {"a": 1.0}) != []


def test_every_case_has_its_golden_file() -> None:
    names = {c["name"] for c in CASES}
    assert len(names) == len(CASES) >= 8
    assert names == {p.stem for p in golden.GOLDEN.glob("*.json")}
