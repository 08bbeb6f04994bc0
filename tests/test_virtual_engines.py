"""Pipeline-parallel serving with vLLM's virtual engines (memsim/sim/virtual_engines.py): one
scheduler per stage, p batches in flight, each token still waiting the whole pipeline."""

from __future__ import annotations

import dataclasses

import pytest

from memsim.contracts.plan import Plan
from memsim.hardware import load_system
from memsim.sim import simulate
from memsim.sim.serving import ServingEngine
from memsim.sim.virtual_engines import run_virtual_engines
from memsim.workloads import load_trace
from memsim.workloads.trace import Requests


@pytest.fixture(scope="module")
def a100():
    return load_system("a100-80gb-sxm")


def _trace(pp: int, n: int, prompt: int, output: int, seqs: int = 256):
    t = load_trace("llama2-70b-serve", ["serving.num_requests=1", "serving.parallel.tensor=4",
                                        f"serving.parallel.pipeline={pp}",
                                        f"serving.scheduler.max_num_seqs={seqs}"])
    return dataclasses.replace(t, requests=Requests([0.0] * n, [prompt] * n, [output] * n))


def test_two_stage_pipeline_event_by_event(a100):
    """Two requests at t=0 (16-token prompts, 2 tokens out) on PP=2: request i goes to virtual
    engine i. Sp, Sd: one stage of a prefill of 16 tokens and of a decode step (a GPU's share of
    the iteration, ``ServingEngine._compute_time`` / 2)."""
    trace = _trace(2, 2, 16, 2)
    probe = ServingEngine(a100, trace, Plan(), False)
    probe._setup()
    sp = probe._compute_time(16, 16 * 17 // 2, 16, False) / 2  # prefill: Σ context 1..16
    sd = probe._compute_time(1, 17, 17, True) / 2  # decode of token 17
    assert 0 < sd < sp
    result, stages, _ = run_virtual_engines(a100, trace, Plan(), log=True)
    expected = [  # (virtual engine, stage, start, end), by start, then stage
        (0, 0, 0.0, sp),                       # engine 0's prefill on stage 0
        (1, 0, sp, 2 * sp),                    # engine 1's prefill waited for stage 0 ...
        (0, 1, sp, 2 * sp),                    # ... while engine 0's moved on to stage 1
        (0, 0, 2 * sp, 2 * sp + sd),           # engine 0's decode (its first token out at 2 Sp)
        (1, 1, 2 * sp, 3 * sp),
        (1, 0, 3 * sp, 3 * sp + sd),           # engine 1's decode (first token at 3 Sp)
        (0, 1, 3 * sp, 3 * sp + sd),           # engine 0's decode waited for stage 1 until 3 Sp
        (1, 1, 3 * sp + sd, 3 * sp + 2 * sd),
    ]
    log = sorted(stages.log, key=lambda e: (round(e[2], 12), e[1]))
    assert len(log) == len(expected)
    for got, want in zip(log, expected, strict=True):
        assert got[:2] == want[:2]
        assert got[2:] == pytest.approx(want[2:], rel=1e-12)
    s = result.serving
    assert s.completed == 2 and result.step_time_s == pytest.approx(3 * sp + 2 * sd)
    # first tokens at 2 Sp and 3 Sp; the second tokens Sp + Sd and 2 Sd later
    assert s.ttft_s["p50"] == pytest.approx(2 * sp) and s.ttft_s["p99"] == pytest.approx(3 * sp)
    assert s.tbt_s["mean"] == pytest.approx((sp + sd + 2 * sd) / 2)
    assert result.breakdown["pipeline_wait"] == pytest.approx((sp + (sp - sd)) / 2)


def test_a_request_goes_to_the_engine_with_the_fewest_unfinished(a100):
    """r0 (2,000 tokens out) and r1 (2) at t=0 go to engines 0 and 1; r2 at 1 s and r3 at 2 s
    find r1 finished and r0 still decoding, so both go to engine 1 (round robin would send r2
    to engine 0, behind r0)."""
    trace = _trace(2, 4, 16, 2)
    trace = dataclasses.replace(trace, requests=Requests([0.0, 0.0, 1.0, 2.0], [16] * 4, [2000, 2, 2, 2]))
    result, _, dispatch = run_virtual_engines(a100, trace, Plan())
    assert dispatch.to == {0: 0, 1: 1, 2: 1, 3: 1}
    assert result.serving.completed == 4


def test_each_engine_gets_a_pth_of_the_blocks_and_the_swap_space(a100):
    trace = _trace(2, 4, 64, 8)
    trace.meta["scheduler"].update(preempt="swap", swap_bytes=4 * 2**30)
    serial = ServingEngine(a100, trace, Plan(), False).run().serving
    _, _, dispatch = run_virtual_engines(a100, trace, Plan())
    # vLLM: num_gpu_blocks and num_cpu_blocks //= pipeline_parallel_size (the first engine's
    # total_blocks is the whole pool again once the run is merged: the pool vLLM logs)
    assert [e.pool_blocks for e in dispatch.engines] == [serial.kv_blocks] * 2
    assert dispatch.engines[1].total_blocks == serial.kv_blocks // 2
    assert [e.policy.swap_bytes for e in dispatch.engines] == [2 * 2**30] * 2


def test_balanced_pipeline_serves_p_times_the_tokens(a100):
    """A saturated server whose batches are capped by max_num_seqs: one batch at a time through p
    stages makes a token per request every p stage times; p virtual engines keep every stage
    busy, about p times the tokens per second, while a token still waits the whole pipeline."""
    for pp in (2, 4):
        trace = _trace(pp, 16 * pp, 64, 64, seqs=8)
        one_at_a_time = ServingEngine(a100, trace, Plan(), False).run().serving
        pipelined = simulate(a100, trace).serving
        assert pipelined.completed == one_at_a_time.completed == 16 * pp
        speedup = pipelined.throughput_tokens_per_s / one_at_a_time.throughput_tokens_per_s
        assert 0.85 * pp < speedup <= pp * 1.001
        # each virtual engine's batch is as big as the serial one's: the same time per token
        assert pipelined.tbt_s["p50"] == pytest.approx(one_at_a_time.tbt_s["p50"], rel=0.05)


def test_each_virtual_engine_gets_its_share_of_the_kv_blocks(a100):
    trace = _trace(2, 4, 64, 8)
    serial = ServingEngine(a100, trace, Plan(), False).run().serving
    result = simulate(a100, trace)
    # the pool vLLM logs is the whole GPU's; the peak HBM is one GPU's (weights held once)
    assert result.serving.kv_blocks == serial.kv_blocks
    assert result.peak_bytes["hbm"] < 80 * 2**30
    assert any("virtual engines" in n for n in result.notes)


@pytest.mark.slow
def test_cli_json_reports_the_pipeline_wait():
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "memsim", "simulate", "-H", "a100-80gb-sxm", "-w", "llama2-70b-serve",
           "--set", "serving.num_requests=20", "--set", "serving.vllm.tensor_parallel_size=2",
           "--set", "serving.vllm.pipeline_parallel_size=2", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["serving"]["completed"] == 20
    assert doc["breakdown"]["pipeline_wait"] >= 0
    assert any("2 virtual engines" in n for n in doc["notes"])
