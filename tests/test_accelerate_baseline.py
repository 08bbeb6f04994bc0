"""The HF Accelerate offload baseline: synchronous per-layer weight loads from pageable memory."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

from memsim.hardware import load_system
from memsim.planners import Plan, load_preset, run_preset
from memsim.planners.mip import NotApplicable
from memsim.sim import simulate
from memsim.sim.hostmem import pageable_view
from memsim.workloads import build_trace, load_workload

SMALL = ["inference.batch_size=4", "inference.prompt_len=128", "inference.gen_len=4"]


@pytest.fixture(scope="module")
def case():
    system = load_system("a100-80gb-pcie")
    trace = build_trace(load_workload("llama3-8b-infer", SMALL))
    return system, trace


def _accelerate(system, trace, **options) -> Plan:
    preset = load_preset("accelerate")
    preset = preset.model_copy(update={"options": {**preset.options, **options}})
    return run_preset(preset, system, trace)


def test_weights_that_fit_stay_on_the_gpu(case):
    system, trace = case
    plan = _accelerate(system, trace)
    assert plan.placement == {} and plan.prefetch_depth == 0 and plan.pinned is False


def test_max_memory_splits_gpu_then_host(case):
    system, trace = case
    weights = trace.bytes_by_class()["weight"]
    plan = _accelerate(system, trace, max_memory={"gpu": weights // 4})
    split = plan.placement["weight"]
    assert split[system.fast_tier] == pytest.approx(0.25, abs=1e-6)
    assert split[system.cpu.memory] == pytest.approx(0.75, abs=1e-6)


def test_spills_to_disk_when_host_is_capped():
    system = load_system("t4-gcp")
    trace = build_trace(load_workload("opt-30b-flexgen", ["inference.batch_size=1",
                                                          "inference.gen_len=2"]))
    weights = trace.bytes_by_class()["weight"]
    plan = _accelerate(system, trace, max_memory={"gpu": 0, "cpu": weights // 2})
    assert plan.placement["weight"] == pytest.approx({"dram": 0.5, "ssd": 0.5})


def test_not_for_training():
    system = load_system("a100-80gb-pcie")
    trace = build_trace(load_workload("llama2-7b-train"))
    with pytest.raises(NotApplicable):
        _accelerate(system, trace)


def test_pageable_view_uses_the_links_pageable_rate(case):
    system, _ = case
    link = next(lk for lk in system.links if lk.name == "pcie-gpu")
    slow = next(lk for lk in pageable_view(system).links if lk.name == "pcie-gpu")
    assert slow.rate("dram") == pytest.approx(link.rate("dram", pinned=False))
    assert slow.rate("dram") < 0.5 * link.rate("dram")  # bandwidthTest: 3.3 vs 17.3+ GB/s


@pytest.mark.slow
def test_synchronous_pageable_loads_are_slower_than_prefetching(case):
    system, trace = case
    weights = trace.bytes_by_class()["weight"]
    baseline = _accelerate(system, trace, max_memory={"gpu": weights // 2})
    slow = simulate(system, trace, baseline)
    pinned = copy.deepcopy(baseline)
    pinned.pinned = True
    sync_pinned = simulate(system, trace, pinned)
    prefetch = copy.deepcopy(pinned)
    prefetch.prefetch_depth = 1
    fast = simulate(system, trace, prefetch)
    assert slow.feasible and sync_pinned.feasible and fast.feasible
    # pageable copies run at 3.3 of ~25 GB/s: the same synchronous schedule is much slower
    assert slow.step_time_s > 2 * sync_pinned.step_time_s
    # overlapping the loads with compute never loses, and wins where there is compute to hide behind
    assert fast.step_time_s < sync_pinned.step_time_s
    assert slow.breakdown["exposed_transfer"] > 0.5 * slow.step_time_s


def test_plan_file_round_trips_pinned(tmp_path):
    plan = Plan(prefetch_depth=0, pinned=False)
    path = tmp_path / "plan.yaml"
    plan.save(path)
    assert Plan.load(path).pinned is False


@pytest.mark.slow
def test_cli_simulate_accelerate_json():
    """Shrinking HBM below the weights makes the preset offload; stdout is one JSON document."""
    args = [sys.executable, "-m", "memsim", "simulate", "--hardware", "a100-80gb-pcie",
            "--workload", "llama3-8b-infer", "--planner", "accelerate", "--json"]
    for s in SMALL:
        args += ["--set", s]
    env = {**os.environ, "COLUMNS": "80"}

    def run(*extra: str) -> dict:
        proc = subprocess.run([*args, *extra], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)

    resident = run()
    offloaded = run("--set", "hardware.tiers.hbm.capacity=12GiB")
    for doc in (resident, offloaded):
        assert doc["planner"]["name"] == "accelerate" and doc["feasible"]
    assert offloaded["tokens_per_s"] < 0.5 * resident["tokens_per_s"]
    assert offloaded["link_busy"]


@pytest.mark.slow
def test_reproduction_case_runs_the_preset_against_published_figures():
    from memsim.studies.reproduce import run_case

    result = run_case("accelerate-offload")
    figures = {f.key: f for f in result.figures}
    assert {"run0", "run1", "run2", "run1-prefetch"} <= set(figures)
    assert abs(figures["run0"].diff) < 0.10  # resident on the GPU: no offload, matches
    assert figures["run1"].memsim > 0 and figures["run1-prefetch"].memsim > 1  # overlap helps
    assert "pageable" in " ".join(result.setup)
