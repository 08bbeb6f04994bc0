"""Serving by hand: one request's TTFT and time between tokens from the roofline; preemption."""

from __future__ import annotations

import pytest

from memsim.contracts.plan import Plan, ServingPolicy
from memsim.sim import simulate
from memsim.sim.serving import ServingEngine
from memsim.sim.synthetic import serving_trace
from memsim.workloads.trace import Requests
from tests.conftest import make_system


def iteration(system, trace, new: int, ctx_sum: int, kv_read: int, phase: str) -> float:
    tc, gpu = trace.meta["token_costs"], system.gpu
    dense = gpu.op_time(new * tc["flops_per_token"],
                        tc["weight_bytes"] + new * tc["activation_bytes_per_token"], "bf16", "matmul", phase)
    attn = gpu.op_time(ctx_sum * tc["attn_flops_per_token_ctx"], (kv_read + new) * tc["kv_bytes_per_token"],
                       "bf16", "attention", phase)
    return dense + attn + gpu.launch_overhead * (2 * tc["layers"] - 2)


def test_one_request_ttft_and_tbt_follow_the_roofline():
    system = make_system()
    trace = serving_trace(n=1, layers=4, params=1e9)
    trace.requests = Requests([0.5], [100], [4])
    r = simulate(system, trace)
    prefill = iteration(system, trace, 100, 100 * 101 // 2, 100, "prefill")
    decodes = [iteration(system, trace, 1, 100 + i, 100 + i, "decode") for i in (1, 2, 3)]
    assert r.serving.completed == 1
    assert r.serving.ttft_s["p50"] == pytest.approx(prefill)
    assert r.step_time_s == pytest.approx(0.5 + prefill + sum(decodes))
    assert r.serving.tbt_s["mean"] == pytest.approx(sum(decodes) / 3)
    assert r.breakdown["idle"] == pytest.approx(0.5)
    assert r.tokens_per_step == 4
    # KV: 103 tokens cached at the end in ceil(103/16) = 7 blocks: 9 empty slots in the last one
    assert 0 < r.serving.kv_fragmentation < 1


def test_chunked_prefill_splits_a_long_prompt_over_iterations():
    system = make_system()
    trace = serving_trace(n=1, layers=4, params=1e9)
    trace.requests = Requests([0.0], [5000], [1])
    policy = ServingPolicy(max_num_batched_tokens=2048)
    r = simulate(system, trace, Plan(serving=policy))
    chunks = [(2048, 0), (2048, 2048), (904, 4096)]
    expect = sum(iteration(system, trace, k, k * c + k * (k + 1) // 2, c + k, "prefill") for k, c in chunks)
    assert r.serving.ttft_s["p50"] == pytest.approx(expect)


@pytest.mark.parametrize("preempt", ["swap", "recompute"])
def test_a_small_kv_pool_preempts_and_still_finishes(preempt):
    system = make_system(tiers__hbm={"kind": "hbm", "capacity": "16GB", "read_bw": "1000TB/s",
                                     "write_bw": "1000TB/s"})
    trace = serving_trace(n=100, rate_per_s=100.0, prompt=256, output=64, seed=3)
    policy = ServingPolicy(max_num_seqs=64, max_num_batched_tokens=4096, preempt=preempt,
                           swap_tier="dram", swap_bytes=4 * 10**9)
    engine = ServingEngine(system, trace, Plan(serving=policy), False)
    r = engine.run()
    assert r.serving.preemptions > 0 and r.serving.completed == 100
    assert r.serving.kv_utilization > 0.5  # the pool was the limit
    if preempt == "swap":
        assert r.peak_bytes["dram"] > 0 and r.link_busy["pcie:hbm->dram"] > 0
    else:
        assert r.peak_bytes["dram"] == 0 and r.breakdown["recompute"] > 0


def test_weights_off_the_gpu_are_streamed_every_iteration():
    system = make_system()
    trace = serving_trace(n=20, rate_per_s=5.0, layers=4, params=1e9)
    resident = simulate(system, trace)
    half = simulate(system, trace, Plan(placement={"weight": {"hbm": 0.5, "dram": 0.5}}))
    assert half.peak_bytes["hbm"] < resident.peak_bytes["hbm"]
    assert half.peak_bytes["dram"] == 10**9  # half of 2 GB of weights
    assert half.serving.tbt_s["p50"] >= 1e9 / 10e9  # 1 GB over the 10 GB/s link per iteration
    assert half.breakdown["exposed_transfer"] > 0


def test_kv_split_over_tiers_puts_blocks_in_both_and_streams_the_far_part():
    system = make_system()
    trace = serving_trace(n=30, rate_per_s=20.0, layers=4, params=1e9)
    r = simulate(system, trace, Plan(placement={"kv": {"hbm": 0.5, "dram": 0.5}}))
    assert r.serving.completed == 30
    assert r.peak_bytes["dram"] > 0  # half of every block lives in DRAM
    assert r.link_busy["pcie:dram->hbm"] > 0  # and is read over the link each iteration
