"""Serving under vLLM's tensor/pipeline parallelism: one GPU's KV pool and per-token costs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from memsim.errors import SpecError
from memsim.hardware import load_system
from memsim.sim import simulate
from memsim.workloads import load_trace, load_workload, workload_architecture
from memsim.workloads.accounting import kv_bytes

SMALL = ["serving.num_requests=50"]


def test_vllm_engine_args_set_serving_parallel():
    w = load_workload("llama2-70b-serve", ["serving.vllm.tensor_parallel_size=4",
                                           "serving.vllm.pipeline_parallel_size=2"])
    assert (w.serving.parallel.tensor, w.serving.parallel.pipeline) == (4, 2)
    with pytest.raises(SpecError) as err:
        load_trace("llama2-70b-serve", ["serving.parallel.tensor=3"])
    assert err.value.key == "serving.parallel.tensor"


def test_per_gpu_token_costs_by_hand():
    w = load_workload("llama2-70b-serve", [*SMALL, "serving.parallel.tensor=8"])
    arch = workload_architecture(w)
    tc = load_trace("llama2-70b-serve", [*SMALL, "serving.parallel.tensor=8"]).meta["token_costs"]
    # 8 KV heads over 8 ranks: one head per GPU, all 80 layers
    assert tc["kv_bytes_per_token"] == kv_bytes(arch, 1, 16) // 8
    assert tc["tp"] == 8 and tc["tp_comm_bytes_per_token"] == arch.hidden * 2
    full = load_trace("llama2-70b-serve", SMALL).meta["token_costs"]
    # matrices split 8 ways; norms, and nothing else, replicated
    assert full["weight_bytes"] / 8 < tc["weight_bytes"] < 1.01 * full["weight_bytes"] / 8


@pytest.fixture(scope="module")
def a100():
    return load_system("a100-80gb-sxm")


def test_more_tensor_parallelism_gives_each_gpu_more_kv_blocks(a100):
    stats = [simulate(a100, load_trace("llama2-70b-serve", [*SMALL, f"serving.parallel.tensor={t}"])).serving
             for t in (2, 4, 8)]
    assert stats[0].kv_blocks < stats[1].kv_blocks < stats[2].kv_blocks
    for s in stats:
        assert s.kv_pool_bytes == s.kv_blocks * s.kv_block_bytes


@pytest.mark.slow
def test_serving_json_reports_kv_blocks_and_pool_bytes():
    cmd = [sys.executable, "-m", "memsim", "simulate", "-H", "a100-80gb-sxm", "-w", "llama2-70b-serve",
           "--set", SMALL[0], "--set", "serving.vllm.tensor_parallel_size=4", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    serving = json.loads(out.stdout)["serving"]
    assert serving["kv_blocks"] > 0
    assert serving["kv_pool_bytes"] == serving["kv_blocks"] * serving["kv_block_bytes"]
