"""``inference.batch_size: auto``: the planner searches the batch with the policy
(memsim/planners/batch.py), through ``python -m memsim plan`` as users run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from memsim.api import plan_case

CASE = ["-H", "t4-gcp", "-w", "phi3-mini-infer", "--set", "inference.prompt_len=256",
        "--set", "inference.gen_len=8"]
SETS = ["inference.prompt_len=256", "inference.gen_len=8"]


def memsim(*args: str) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "memsim", *args, "--json"], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "80"}, timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def auto() -> dict:
    code, doc = memsim("plan", *CASE, "--set", "inference.batch_size=auto")
    assert code == 0, doc
    return doc


@pytest.mark.slow
def test_plan_json_reports_the_chosen_batch(auto: dict) -> None:
    bs, plan = auto["batch_search"], auto["plan"]
    assert bs["batch_size"] == plan["gpu_batch_size"] * plan["num_gpu_batches"]
    assert (bs["gpu_batch_size"], bs["num_gpu_batches"]) == (plan["gpu_batch_size"],
                                                             plan["num_gpu_batches"])
    assert auto["feasible"] and bs["latency_s"] == auto["step_time_s"]
    # the trace the plan was simulated on is the chosen batch's: batch × gen_len tokens a step
    assert auto["step_time_s"] * auto["tokens_per_s"] == pytest.approx(bs["batch_size"] * 8)
    sims = [c for c in bs["candidates"] if c["simulated"]]
    assert 1 <= len(sims) <= 4 and all(c["feasible"] for c in sims)
    assert auto["tokens_per_s"] == pytest.approx(max(c["tokens_per_s"] for c in sims), rel=1e-9)
    sizes = [c["batch_size"] for c in bs["candidates"]]
    assert sizes == sorted(sizes) and sizes[:4] == [1, 2, 4, 8]
    assert any(c["estimate_s"] is None for c in bs["candidates"])  # the doubling ran out of memory
    one = next(c for c in bs["candidates"] if c["batch_size"] == 1)
    assert auto["tokens_per_s"] > 2 * one["estimated_tokens_per_s"]  # batching amortises the weights
    assert any("batch search: batch" in n for n in auto["notes"])


@pytest.mark.slow
def test_the_chosen_batch_planned_fixed_is_the_same_plan(auto: dict) -> None:
    fixed = plan_case("t4-gcp", "phi3-mini-infer",
                      overrides=[*SETS, f"inference.batch_size={auto['batch_search']['batch_size']}"])
    doc = fixed.to_dict()
    assert "batch_search" not in doc  # a given batch's document is as it was
    assert doc["tokens_per_s"] == pytest.approx(auto["tokens_per_s"], rel=1e-9)


@pytest.mark.slow
def test_latency_bound_is_met(auto: dict) -> None:
    bound = 0.5 * auto["step_time_s"]
    got = plan_case("t4-gcp", "phi3-mini-infer", overrides=[
        *SETS, "inference.batch_size=auto", f"inference.max_latency_s={bound}"])
    bs = got.batch_search
    assert bs["max_latency_s"] == bound and got.result.step_time_s <= bound
    assert bs["batch_size"] < auto["batch_search"]["batch_size"]
    assert all(c["estimate_s"] is None or c["estimate_s"] <= bound or not c["simulated"]
               for c in bs["candidates"])


def test_unmeetable_latency_bound_exits_3() -> None:
    code, doc = memsim("plan", *CASE, "--set", "inference.batch_size=auto",
                       "--set", "inference.max_latency_s=1e-6")
    assert code == 3 and "max_latency_s" in json.dumps(doc)


def test_latency_bound_without_auto_exits_2() -> None:
    code, doc = memsim("plan", *CASE, "--set", "inference.max_latency_s=10")
    assert code == 2 and "max_latency_s" in doc["error"]


def test_simulate_an_auto_batch_exits_2() -> None:
    code, doc = memsim("simulate", *CASE, "--set", "inference.batch_size=auto")
    assert code == 2 and doc["key"] == "inference.batch_size"


def test_auto_with_a_fixed_planner_exits_2() -> None:
    code, doc = memsim("plan", *CASE, "--set", "inference.batch_size=auto", "--planner", "resident")
    assert code == 2 and doc["key"] == "inference.batch_size"


@pytest.mark.slow
def test_printed_reproduce_command_simulates_the_plan(auto: dict, tmp_path) -> None:
    out = tmp_path / "plan.yaml"
    proc = subprocess.run([sys.executable, "-m", "memsim", "plan", *CASE, "--set",
                           "inference.batch_size=auto", "-o", str(out)], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "200"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    batch = auto["batch_search"]["batch_size"]
    assert f"--set inference.batch_size={batch} --plan {out}" in " ".join(proc.stdout.split())
    assert "batch size" in proc.stdout  # the policy table's row
    code, doc = memsim("simulate", *CASE, "--set", f"inference.batch_size={batch}", "--plan", str(out))
    assert code == 0 and doc["tokens_per_s"] == pytest.approx(auto["tokens_per_s"], rel=1e-9)
