"""`memsim plan` end to end on catalog workloads: JSON keys, -o → simulate --plan, exit code 3."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from memsim.cli import app

runner = CliRunner()
KEYS = ("feasible", "step_time_s", "tokens_per_s", "peak_bytes", "capacity_bytes", "planner", "baselines")
CASES = {  # kept small so the suite stays fast: a short generation, 60 requests
    "training": ["--hardware", "h100-sxm", "--workload", "llama2-7b-train"],
    "inference": ["--hardware", "h100-sxm", "--workload", "llama3-8b-infer",
                  "--set", "inference.gen_len=4", "--set", "inference.batch_size=8"],
    "serving": ["--hardware", "h100-sxm", "--workload", "qwen2.5-7b-serve",
                "--set", "serving.num_requests=60"],
}


def _json(args: list[str]) -> tuple[int, dict]:
    res = runner.invoke(app, args)
    return res.exit_code, json.loads(res.stdout)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_plan_json_keys_and_reproduction(kind, tmp_path):
    out = tmp_path / "plan.yaml"
    code, doc = _json(["plan", *CASES[kind], "--json", "-o", str(out)])
    assert code == 0, doc
    for key in KEYS:
        assert key in doc
    assert doc["kind"] == kind and doc["feasible"] is True and doc["step_time_s"] > 0
    assert set(doc["planner"]) >= {"name", "status", "gap", "solve_s"}
    assert doc["baselines"] and all({"name", "feasible", "step_time_s"} <= set(b) for b in doc["baselines"])
    saved = yaml.safe_load(out.read_text())
    assert saved["fingerprint"] and saved["workload"]
    code, sim = _json(["simulate", *CASES[kind], "--plan", str(out), "--json"])
    assert code == 0
    assert sim["step_time_s"] == pytest.approx(doc["step_time_s"], rel=1e-12)


def test_plan_human_output_labels_sources():
    res = runner.invoke(app, ["plan", *CASES["training"]])
    assert res.exit_code == 0
    for text in ("simulated", "MIP estimate", "baselines", "zero-offload", "placement"):
        assert text in res.stdout


def test_infeasible_exits_3_with_diagnosis(tmp_path):
    box = tmp_path / "tiny-host.yaml"
    box.write_text("extends: h100-sxm\nname: tiny-host\n"
                   "tiers: {dram: {capacity: 64GiB}, nvme: {capacity: 64GiB}}\n")
    code, doc = _json(["plan", "--hardware", str(box), "--workload", "llama2-70b-train", "--json"])
    assert code == 3
    assert doc["feasible"] is False
    diag = doc["diagnosis"]
    assert diag["shortfalls"] and all(s["short_bytes"] > 0 for s in diag["shortfalls"])
    assert any("GiB" in s for s in diag["suggestions"])


def test_bad_planner_exits_2():
    res = runner.invoke(app, ["plan", *CASES["training"], "--planner", "zero-ofload"])
    assert res.exit_code == 2
    assert "zero-offload" in res.stderr if res.stderr_bytes is not None else res.output
