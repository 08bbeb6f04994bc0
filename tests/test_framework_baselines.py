"""The framework baselines: DeepSpeed ZeRO-Inference, ZeRO-Offload with checkpointing, ZeRO-3
Offload and FSDP CPU offload, each with its framework's defaults as explicit preset options."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from memsim.hardware import load_system
from memsim.planners import Plan, load_preset, run_preset
from memsim.planners.mip import NotApplicable
from memsim.sim import simulate
from memsim.workloads import build_trace, load_workload
from tests.conftest import small_system

SMALL_INFER = ["inference.batch_size=4", "inference.prompt_len=128", "inference.gen_len=4"]


def _run(name: str, system, trace, **options) -> Plan:
    preset = load_preset(name)
    preset = preset.model_copy(update={"options": {**preset.options, **options}})
    return run_preset(preset, system, trace)


@pytest.fixture(scope="module")
def infer():
    return build_trace(load_workload("llama3-8b-infer", SMALL_INFER))


@pytest.fixture(scope="module")
def train():
    return build_trace(load_workload("llama2-7b-train", ["training.seq_len=512"]))


def test_presets_carry_the_frameworks_knobs():
    """What a config emitter needs is in the preset, not hidden in code."""
    zi = load_preset("zero-inference").options
    assert zi["offload_param"] == "cpu" and zi["pin_memory"] is False and zi["kv_offload"] is False
    assert zi["prefetch_depth"] == 1 and zi["buffer_count"] == 5
    assert load_preset("zero-offload").options["checkpoint_activations"] == "auto"
    z3 = load_preset("zero3-offload").options
    assert z3["offload_param"] == "cpu" and z3["pin_memory"] is False
    fs = load_preset("fsdp-offload").options
    assert fs["offload_params"] is True and fs["pin_memory"] is True
    assert fs["backward_prefetch"] == "BACKWARD_PRE"


def test_zero_inference_streams_every_weight_from_pageable_host(infer):
    system = small_system()
    plan = _run("zero-inference", system, infer)
    assert plan.placement == {"weight": {"dram": 1.0}}
    assert plan.prefetch_depth == 1 and plan.pinned is False and not plan.cpu_attention


def test_zero_inference_kv_offload_moves_cache_and_attention_to_the_cpu(infer):
    plan = _run("zero-inference", small_system(), infer, kv_offload=True)
    assert plan.placement["kv"] == {"dram": 1.0} and plan.cpu_attention


def test_zero_inference_nvme_reads_through_pinned_buffers(infer):
    plan = _run("zero-inference", small_system(), infer, offload_param="nvme")
    assert plan.placement["weight"] == {"nvme": 1.0} and plan.pinned is True
    with pytest.raises(NotApplicable, match="ssd"):
        _run("zero-inference", small_system(ssd=None), infer, offload_param="nvme")
    with pytest.raises(NotApplicable, match="cpu or nvme"):
        _run("zero-inference", small_system(), infer, offload_param="disk")


def test_inference_baselines_refuse_training_and_back(infer, train):
    system = small_system()
    with pytest.raises(NotApplicable):
        _run("zero-inference", system, train)
    for name in ("zero-offload", "zero3-offload", "fsdp-offload"):
        with pytest.raises(NotApplicable):
            _run(name, system, infer)


def test_zero_inference_overlapped_fetch_beats_synchronous_loads(infer):
    """ZeRO-3's prefetch overlaps the next layer's fetch with compute; Accelerate's hook does not."""
    system = small_system(hbm="4GiB")
    zi = simulate(system, infer, _run("zero-inference", system, infer, pin_memory=True))
    sync = simulate(system, infer, _run("accelerate", system, infer, max_memory={"gpu": 0},
                                        pinned=True))
    assert zi.feasible and sync.feasible
    assert zi.step_time_s <= sync.step_time_s


def test_zero_offload_checkpoints_only_when_activations_do_not_fit(train):
    roomy = small_system(hbm="80GiB", dram="256GiB")
    tight = small_system(hbm="14GiB", dram="256GiB")  # 12.6 GiB weights + 2.4 activations
    assert _run("zero-offload", roomy, train).activations == "keep"
    assert _run("zero-offload", tight, train).activations == "recompute"
    assert _run("zero-offload", roomy, train, checkpoint_activations=True).activations == "recompute"
    assert _run("zero-offload", tight, train, checkpoint_activations=False).activations == "keep"


def test_param_offload_baselines_home_everything_on_the_host(train):
    system = small_system(hbm="8GiB", dram="256GiB")
    z3 = _run("zero3-offload", system, train)
    fsdp = _run("fsdp-offload", system, train)
    for plan in (z3, fsdp):
        assert plan.placement == {c: {"dram": 1.0} for c in ("weight", "grad", "optimizer")}
        assert plan.optimizer_device == "cpu" and plan.prefetch_depth == 1
    assert z3.pinned is False and fsdp.pinned is True
    nvme = _run("zero3-offload", system, train, offload_param="nvme", offload_optimizer="nvme")
    assert nvme.placement["weight"] == {"nvme": 1.0} and nvme.placement["optimizer"] == {"nvme": 1.0}


@pytest.mark.slow
def test_the_zero_offload_tutorial_job_fits_one_v100():
    """DeepSpeed's tutorial trains a 10B GPT-2 on one V100 32GB with checkpointing: memsim must say
    it fits (with checkpointing) and that it does not without."""
    system = load_system("v100-dgx2")
    trace = build_trace(load_workload("gpt2-10b-zero-offload"))
    plan = _run("zero-offload", system, trace)
    assert plan.activations == "recompute"
    fits = simulate(system, trace, plan)
    assert fits.feasible
    assert fits.peak_bytes["hbm"] <= fits.capacity_bytes["hbm"]
    keep = simulate(system, trace, _run("zero-offload", system, trace, checkpoint_activations=False))
    assert not keep.feasible and keep.oom.tier == "hbm"


@pytest.mark.slow
def test_cli_simulate_zero_inference_json():
    args = [sys.executable, "-m", "memsim", "simulate", "--hardware", "a6000-workstation",
            "--workload", "llama3-8b-infer", "--planner", "zero-inference", "--json"]
    for s in SMALL_INFER:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["planner"]["name"] == "zero-inference" and doc["feasible"]
    assert doc["link_busy"]


@pytest.mark.slow
def test_framework_cases_report_published_rows():
    from memsim.studies.reproduce import run_case

    training = {f.key: f for f in run_case("zero-offload-v100").figures}
    assert training["run0-fits"].memsim == 1.0 and training["run0-fits"].diff == 0
    assert 20 < training["run0"].memsim < 80  # TFLOP/s of a V100 step, recompute counted
    rows = run_case("zero-inference-a6000").figures
    assert len(rows) == 11 and all(f.memsim and f.memsim > 0 for f in rows)
    assert all(0.33 < f.memsim / f.published < 3 for f in rows)  # generous sanity bounds


def test_vllm_cpu_offload_gb_splits_the_weights(infer):
    system = small_system()
    weights = infer.bytes_by_class()["weight"]
    plan = _run("vllm-cpu-offload", system, infer, cpu_offload_gb=weights / 4 / 2**30)
    assert plan.placement["weight"]["dram"] == pytest.approx(0.25, abs=1e-6)
    assert plan.prefetch_depth == 0 and plan.pinned is True
    assert _run("vllm-cpu-offload", system, infer, cpu_offload_gb=0).placement == {}
    # auto offloads only when the weights do not fit beside the KV cache and activations
    assert _run("vllm-cpu-offload", small_system(hbm="80GiB"), infer).placement == {}
    assert _run("vllm-cpu-offload", small_system(hbm="8GiB"), infer).placement["weight"]["dram"] > 0.3


@pytest.mark.slow
def test_vllm_cpu_offload_serving_loads_are_synchronous():
    """Serving with offloaded weights: compute waits for the step's weight reads (prefetch 0)."""
    import copy

    system = small_system(hbm="24GiB")
    trace = build_trace(load_workload("llama3-8b-serve-csv"))
    plan = _run("vllm-cpu-offload", system, trace, cpu_offload_gb=4)
    assert plan.serving is not None and plan.serving.preempt == "swap"
    assert plan.serving.swap_bytes == 4 * 2**30
    sync = simulate(system, trace, plan)
    overlapped = copy.deepcopy(plan)
    overlapped.prefetch_depth = 1
    fast = simulate(system, trace, overlapped)
    assert sync.feasible and fast.feasible
    assert sync.step_time_s > fast.step_time_s
    assert sync.breakdown["exposed_transfer"] > fast.breakdown["exposed_transfer"]
