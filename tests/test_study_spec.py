"""Study files: validation with errors that name the key, and expansion into points."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from memsim.cli import app
from memsim.errors import SpecError
from memsim.specio import parse_assignment
from memsim.studies import expand, load_study
from memsim.studies.grid import format_value, numeric
from memsim.studies.points import point_hash
from memsim.studies.spec import Range


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = "base: {hardware: h100-sxm, workload: own.yaml, planner: mip}\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    # a user's workload next to the study (real: --dry-run loads every case)
    (tmp_path / "own.yaml").write_text("extends: llama2-7b-train\nname: own\n")
    return tmp_path


def test_grid_is_the_product_with_zip_and_filters(folder: Path):
    path = write(folder, "name: g\n" + BASE + textwrap.dedent("""
    axes:
      - {key: hardware.tiers.dram.capacity, range: {start: 256, stop: 1024, step: 256, unit: GiB}}
      - zip:
          - {key: year, label: true, values: [2024, 2026]}
          - {key: hardware.compute.gpu.peak_flops.bf16, values: [989TFLOP/s, 2967TFLOP/s]}
      - {key: planner, values: [mip, zero-offload]}
    filters: ["hardware.tiers.dram.capacity <= 512GiB", "planner != zero-offload"]
    """))
    points = expand(load_study(path))
    assert [p.coords["hardware.tiers.dram.capacity"] for p in points] == ["256GiB"] * 2 + ["512GiB"] * 2
    assert [p.coords["year"] for p in points] == [2024, 2026, 2024, 2026]
    first = points[1].inputs
    assert first.overrides == ("hardware.tiers.dram.capacity=256GiB",
                               "hardware.compute.gpu.peak_flops.bf16=2967TFLOP/s")  # the label is not applied
    assert first.planner == "mip" and first.hardware == "h100-sxm"
    assert Path(first.workload) == (folder / "own.yaml").resolve()  # relative to the study file
    assert [p.index for p in points] == [0, 1, 2, 3]


def test_log2_range_and_unit_aware_filter():
    assert Range(start=1, stop=64, log2=True).values() == [1, 2, 4, 8, 16, 32, 64]
    assert Range(start=0.5, stop=1.5, step=0.25).values() == [0.5, 0.75, 1, 1.25, 1.5]
    assert numeric("1TiB") == 2**40 and numeric("3.35TB/s") == 3.35e12 and numeric("dram") is None


@pytest.mark.parametrize("value", [1e20, 0.1, 3, True, "512GiB", 2.5e-7])
def test_format_value_reads_back_as_the_same_value(value):
    assert parse_assignment(f"k={format_value(value)}")[1] == value


def test_hash_changes_with_inputs_and_file_contents(folder: Path):
    own = folder / "own.yaml"
    inputs = {"run": "plan", "hardware": "h100-sxm", "workload": str(own), "planner": "mip",
              "time_limit": 5.0, "overrides": ["training.micro_batch=2"]}
    first = point_hash(inputs, "0.1.0")
    assert point_hash(dict(inputs), "0.1.0") == first
    assert point_hash({**inputs, "overrides": ["training.micro_batch=4"]}, "0.1.0") != first
    assert point_hash(inputs, "0.2.0") != first
    own.write_text("name: own\ndescription: changed\n")
    assert point_hash(inputs, "0.1.0") != first


@pytest.mark.parametrize(("body", "key", "words"), [
    ("axes: [{key: a, valuez: [1]}]", "axes.0.valuez", "did you mean 'values'"),
    ("axes: [{key: a, values: [1], range: {start: 1, stop: 2, step: 1}}]", "axes.0", "exactly one of"),
    ("axes: [{zip: [{key: a, values: [1, 2]}, {key: b, values: [1]}]}]", "axes.0", "differ in length"),
    ("axes: [{key: a, values: [1]}]\nfilters: ['b < 3']", "", "not an axis key"),
    ("axes: [{key: a, values: [1]}]\nfilters: ['a ~ 3']", "filters", "key OP value"),
    ("axes: [{key: a, range: {start: 4, stop: 1, step: 1}}]", "axes.0.range", "below start"),
    ("target: {metric: tokens_per_s}", "target", "at_least or at_most"),
    ("costs: {usd_per_gpu_hr: 2}", "costs.usd_per_gpu_hr", "did you mean 'usd_per_gpu_hour'"),
])
def test_bad_study_names_the_key(folder: Path, body: str, key: str, words: str):
    path = write(folder, "name: bad\n" + BASE + body + "\n")
    with pytest.raises(SpecError) as info:
        load_study(path)
    assert info.value.file == str(path)
    assert (info.value.key or "").startswith(key)
    assert words in str(info.value)


def test_unknown_base_hardware_names_base_hardware(folder: Path):
    path = write(folder, "name: bad\nbase: {hardware: h100-sx, workload: own.yaml}\n")
    with pytest.raises(SpecError) as info:
        load_study(path)
    assert info.value.key == "base.hardware" and "h100-sxm" in str(info.value)  # did-you-mean


def test_cli_bad_study_exits_2_naming_the_key(folder: Path):
    path = write(folder, "name: bad\n" + BASE + "axes: [{key: a, valuez: [1]}]\n")
    result = CliRunner().invoke(app, ["study", str(path)])
    assert result.exit_code == 2
    assert "axes.0.valuez" in result.output and "Traceback" not in result.output


def test_dry_run_lists_points_as_one_json_document(folder: Path):
    path = write(folder, "name: dry\n" + BASE + "axes: [{key: training.micro_batch, values: [1, 2, 4]}]\n")
    result = CliRunner().invoke(app, ["study", str(path), "--dry-run", "--json", "-o", str(folder / "out")])
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(result.stdout)
    assert [p["training.micro_batch"] for p in doc["points"]] == [1, 2, 4]
    assert not any(p["cached"] for p in doc["points"])
    assert len({p["hash"] for p in doc["points"]}) == 3


def test_unknown_study_name_lists_the_built_in_ones():
    with pytest.raises(SpecError) as info:
        load_study("llm-in-a-flas")
    assert "did you mean 'llm-in-a-flash'" in str(info.value) and "memory-wall-trend" in str(info.value)


@pytest.mark.parametrize("name", ["cxl-llama70b-finetune", "kv-offload-128k", "flexgen-t4-opt30b",
                                  "llm-in-a-flash", "memory-wall-trend"])
def test_every_example_study_loads_and_expands(name: str):
    study = load_study(name)
    points = expand(study)
    assert len(points) >= 4 and study.description
    assert len({p.inputs for p in points}) == len(points)  # no two points run the same case


def test_ray_backend_without_ray_exits_2_with_the_install_hint(folder: Path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # `import ray` raises ImportError
    path = write(folder, "name: noray\n" + BASE + "axes: [{key: training.micro_batch, values: [1]}]\n")
    result = CliRunner().invoke(app, ["study", str(path), "--backend", "ray", "-o", str(folder / "out")])
    assert result.exit_code == 2
    assert "pip install 'memsim[ray]'" in result.output


def test_unknown_backend_exits_2(folder: Path):
    path = write(folder, "name: nob\n" + BASE + "axes: [{key: training.micro_batch, values: [1]}]\n")
    result = CliRunner().invoke(app, ["study", str(path), "--backend", "dask", "-o", str(folder / "out")])
    assert result.exit_code == 2 and "local, ray" in result.output


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 4), min_size=1, max_size=3), zipped=st.integers(1, 3))
def test_points_are_the_product_of_the_axes(lengths: list[int], zipped: int):
    from memsim.studies.spec import Axis, Base, Study

    axes = [Axis(key=f"training.k{i}", values=list(range(n))) for i, n in enumerate(lengths)]
    axes.append(Axis(zip=[Axis(key="label", label=True, values=[f"v{j}" for j in range(zipped)]),
                          Axis(key="training.z", values=list(range(zipped)))]))
    study = Study(name="p", base=Base(hardware="h100-sxm", workload="llama2-7b-train"), axes=axes)
    points = expand(study)
    expected = zipped
    for n in lengths:
        expected *= n
    assert len(points) == expected
    assert len({p.inputs.overrides for p in points}) == expected  # every case distinct
    for p in points:  # a zip moves in lockstep; its label is not applied
        assert p.coords["label"] == f"v{p.coords['training.z']}"
        assert not any(o.startswith("label=") for o in p.inputs.overrides)


def test_frontier_keeps_points_no_other_beats_on_cost_and_throughput():
    from memsim.studies.report import frontier

    rows = [{"point": i, "status": s, "usd_per_hour": c, "tokens_per_s": t}
            for i, (s, c, t) in enumerate([("ok", 5.0, 100.0), ("ok", 6.0, 90.0), ("ok", 7.0, 150.0),
                                           ("infeasible", 1.0, None), ("ok", 5.0, 80.0), ("ok", 9.0, 150.0)])]
    assert [r["point"] for r in frontier(rows)] == [0, 2]


def test_an_unexpected_failure_is_an_error_record_and_is_retried(tmp_path: Path):
    import json

    from memsim.studies.points import run_point
    from memsim.studies.runner import cached_record

    inputs = {"run": "plan", "hardware": "h100-sxm", "workload": "llama2-7b-train", "planner": "mip",
              "time_limit": 1.0, "overrides": []}
    record = run_point(inputs, function="no-such-point-function")
    assert record["status"] == "error" and record["reason"].startswith("KeyError")
    assert record["system"]["gpus"] == 8  # what was learned before the failure is kept
    path = tmp_path / "p.json"
    path.write_text(json.dumps(record))
    assert cached_record(path) is None  # errors are computed again on the next run
    path.write_text(json.dumps({**record, "status": "infeasible"}))
    assert cached_record(path)["status"] == "infeasible"  # answers stay cached


def test_cli_set_applies_to_every_point(folder: Path):
    path = write(folder, "name: s\n" + BASE + "axes: [{key: training.micro_batch, values: [1, 2]}]\n")
    study = load_study(path, ["training.seq_len=1024"])
    assert all(p.inputs.overrides[0] == "training.seq_len=1024" for p in expand(study))
    runner = CliRunner()
    plain = json.loads(runner.invoke(app, ["study", str(path), "--dry-run", "--json"]).stdout)
    changed = json.loads(runner.invoke(app, ["study", str(path), "--dry-run", "--json",
                                             "--set", "training.seq_len=1024"]).stdout)
    assert {p["hash"] for p in plain["points"]}.isdisjoint(p["hash"] for p in changed["points"])
