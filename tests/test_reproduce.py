"""memsim reproduce: the document is generated from the case YAMLs, deterministically, and the
ZeRO Table 1 rows are exact; quick cases (a few seconds each) run end to end through the CLI."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from memsim.cli import app
from memsim.studies.reproduce import Figure, case_names, load_case, reproduce, select

runner = CliRunner()


def test_every_case_loads_with_a_source_and_published_figures():
    names = case_names()
    assert {"zero-table1", "flexgen-t4", "pagedattention", "sublinear-memory", "kivi", "llm-in-a-flash",
            "headinfer"} <= set(names)
    for name in names:
        spec, _ = load_case(name)
        assert spec.source.strip(), name
        assert spec.published or spec.columns or spec.runs, name


def test_zero_table1_rows_are_exact():
    results, text = reproduce(["zero-table1"])
    figures = results[0].figures
    published = {f.key: f.published for f in figures}
    assert published == {"stage0": 120.0, "stage1": 31.4, "stage2": 16.6, "stage3": 1.9}
    # 2+2+12 bytes per parameter of 7.5B, sharded over 64 ranks as each stage shards it
    exact = {"stage0": 16 * 7.5, "stage1": 4 * 7.5 + 12 * 7.5 / 64, "stage2": 2 * 7.5 + 14 * 7.5 / 64,
             "stage3": 16 * 7.5 / 64}
    for f in figures:
        assert f.memsim == pytest.approx(exact[f.key], rel=1e-12)
        assert round(f.memsim, 1) == f.published  # exact at the published precision
        assert "matches at the published precision" in f.note
        assert f.source == "accounting formula"
    assert "| 31.40 GB | 31.41 GB | +0.0% |" in text


@pytest.mark.slow
def test_quick_cli_writes_each_case_with_published_and_memsim_figures(tmp_path):
    out = tmp_path / "repro.md"
    res = runner.invoke(app, ["reproduce", "--quick", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    quick = select(quick=True)
    assert [c["name"] for c in doc["cases"]] == quick
    assert {"zero-table1", "pagedattention", "sublinear-memory"} <= set(quick)
    text = out.read_text()
    for case in doc["cases"]:
        assert f"`--case {case['name']}`" in text
        for f in case["figures"]:
            assert f["memsim"] is not None, (case["name"], f["label"])
            assert f["label"] in text
    paged = next(c for c in doc["cases"] if c["name"] == "pagedattention")
    share = {f["key"]: f["memsim"] for f in paged["figures"]}
    # contiguous max-length reservation wastes most of the KV memory; 16-token pages almost none
    assert share["contiguous_share"] < 0.5 < 0.9 < share["paged_share"]
    assert share["throughput_gain"] > 1
    chen_case = next(c for c in doc["cases"] if c["name"] == "sublinear-memory")
    chen = {f["key"]: f["memsim"] for f in chen_case["figures"]}
    assert chen["reduction"] > 3 and 0 < chen["extra_time"] < 1
    # a run of the same cases regenerates the document byte for byte
    again = tmp_path / "again.md"
    res2 = runner.invoke(app, ["reproduce", "--quick", "-o", str(again)])
    assert res2.exit_code == 0, res2.output
    assert again.read_bytes() == out.read_bytes()
    assert "wrote" in res2.stdout


def test_unknown_case_is_a_spec_error_with_a_suggestion(tmp_path):
    res = runner.invoke(app, ["reproduce", "--case", "zero-tabel1", "-o", str(tmp_path / "x.md")])
    assert res.exit_code == 2
    assert "zero-table1" in res.output
    assert not (tmp_path / "x.md").exists()


def test_relative_difference_of_ranges_and_gaps():
    inside = Figure("k", "l", "x", (2.0, 4.0), 3.0, "simulated")
    below = Figure("k", "l", "x", (2.0, 4.0), 1.5, "simulated")
    point = Figure("k", "l", "GB", 48.0, 54.0, "simulated")
    assert inside.diff == 0 and not inside.gap
    assert below.diff == pytest.approx(-0.25) and below.gap
    assert point.diff == pytest.approx(0.125) and point.gap
    assert Figure("k", "l", "GB", None, 1.0, "simulated").diff is None


def test_document_marks_unexplained_gaps():
    from memsim.studies.reproduce import CaseResult
    from memsim.studies.reproduce_doc import render

    r = CaseResult("c", "T", "S", ["setup"], [Figure("a", "fig", "GB", 10.0, 20.0, "simulated")])
    text = render([r])
    assert "+100.0% ⚠" in text and "gap not explained yet" in text
    assert re.search(r"^## T$", text, re.M)


def test_a_users_case_file_runs_and_a_bad_key_names_file_and_key(tmp_path):
    from memsim.specio import read_yaml
    from memsim.studies.reproduce import cases_dir

    mine = read_yaml(cases_dir() / "zero-table1.yaml")
    mine["columns"] = mine["columns"][-1:]
    good = tmp_path / "mine.yaml"
    good.write_text(yaml.safe_dump(mine))
    results, _ = reproduce([str(good)])
    assert [f.key for f in results[0].figures] == ["stage3"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**mine, "publishd": {}}))
    res = runner.invoke(app, ["reproduce", "--case", str(bad), "-o", str(tmp_path / "x.md")])
    assert res.exit_code == 2
    assert "bad.yaml" in res.output and "publishd" in res.output and "published" in res.output
