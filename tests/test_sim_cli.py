"""`memsim simulate` end to end: JSON keys, exit codes 2 and 3, the timeline file."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from memsim.cli import app
from memsim.contracts.plan import Plan

runner = CliRunner()
SMALL = ("--set", "inference.gen_len=8")  # fewer decode iterations: the same code paths, faster
KEYS = {"feasible", "step_time_s", "tokens_per_s", "peak_bytes", "capacity_bytes", "planner",
        "baselines", "mfu", "breakdown", "link_busy", "serving", "oom", "source"}


def run(*args: str):
    return runner.invoke(app, ["simulate", *args])


def test_inference_json_has_the_design_keys():
    r = run("--hardware", "h100-sxm", "--workload", "llama3-8b-infer", *SMALL, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert set(doc) >= KEYS
    assert doc["feasible"] is True and doc["source"] == "simulated"
    assert doc["planner"] == {"name": "resident", "status": "given", "gap": None, "solve_s": None}
    assert doc["baselines"] == []
    assert doc["step_time_s"] > 0 and doc["tokens_per_s"] > 0 and 0 < doc["mfu"] < 1
    assert set(doc["peak_bytes"]) == set(doc["capacity_bytes"]) == {"hbm", "dram", "nvme"}
    assert all(isinstance(v, int) for v in doc["peak_bytes"].values())
    assert doc["peak_bytes"]["hbm"] > 16 * 10**9  # Llama-3-8B weights in bf16 at least
    assert sum(doc["breakdown"].values()) == pytest.approx(doc["step_time_s"])


def test_model_too_big_for_the_gpu_exits_3_naming_the_tier():
    r = run("--hardware", "h100-sxm", "--workload", "llama2-70b-train", "--json")
    assert r.exit_code == 3
    doc = json.loads(r.stdout)
    assert doc["feasible"] is False
    short = doc["diagnosis"]["shortfalls"]
    assert short[0]["tier"] == "hbm" and short[0]["short_bytes"] > 0
    assert doc["oom"]["tier"] == "hbm"
    human = run("--hardware", "h100-sxm", "--workload", "llama2-70b-train")
    assert human.exit_code == 3
    assert "hbm" in human.output


def test_a_bigger_gpu_via_set_fits():
    r = run("--hardware", "h100-sxm", "--workload", "llama2-70b-train",
            "--set", "hardware.tiers.hbm.capacity=2TiB", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["feasible"] is True


def test_plan_of_another_workload_exits_2(tmp_path):
    path = tmp_path / "plan.yaml"
    Plan(workload="someone-else", fingerprint="0123456789abcdef").save(path)
    r = run("--hardware", "h100-sxm", "--workload", "llama3-8b-infer", "--plan", str(path))
    assert r.exit_code == 2
    assert "plan.yaml" in r.output and "fingerprint" in r.output


def test_plan_with_an_unknown_tier_exits_2(tmp_path):
    path = tmp_path / "plan.yaml"
    Plan(placement={"weight": {"cxl": 1.0}}).save(path)
    r = run("--hardware", "h100-sxm", "--workload", "llama3-8b-infer", "--plan", str(path))
    assert r.exit_code == 2
    assert "cxl" in r.output and "placement.weight.cxl" in r.output


def test_plan_file_offloading_weights_and_timeline(tmp_path):
    plan, timeline = tmp_path / "plan.yaml", tmp_path / "t.json"
    Plan(placement={"weight": {"hbm": 0.5, "dram": 0.5}}).save(plan)
    r = run("--hardware", "h100-sxm", "--workload", "llama3-8b-infer", *SMALL, "--plan", str(plan),
            "--timeline", str(timeline), "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["link_busy"]["pcie-gpu:dram->hbm"] > 0
    assert doc["planner"]["name"] == "manual"
    events = json.loads(timeline.read_text())["traceEvents"]
    assert {e["ph"] for e in events} >= {"M", "X", "C"}


def test_human_output_has_summary_and_tier_tables():
    r = run("--hardware", "h100-sxm", "--workload", "llama3-8b-infer", *SMALL)
    assert r.exit_code == 0, r.output
    assert "step time" in r.output and "hbm" in r.output and "peak/capacity" in r.output
