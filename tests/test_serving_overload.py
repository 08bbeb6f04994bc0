"""Serving answers an online service's questions: TTFT/TBT, is it overloaded, why nothing fits.

Each CLI check runs ``python -m memsim`` as a real subprocess and parses its stdout. The case is
Qwen2.5-7B on one L4: at 4 req/s the server completes about 2.5 req/s, so the admission queue
grows for as long as requests arrive; at 1 req/s it keeps up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from memsim.sim.overload import overload_verdict

CASE = ["--hardware", "l4", "--workload", "qwen2.5-7b-serve", "--set", "serving.num_requests=400"]
# prompts within Qwen2.5-7B's 131,072-token context (longer ones exit 2) but above the ~120k-token pool
NO_FIT = ["--hardware", "l4", "--workload", "qwen2.5-7b-serve", "--set", "serving.num_requests=20",
          "--set", "serving.prompt_len.low=124000", "--set", "serving.prompt_len.high=128000"]


def run(*args: str) -> tuple[int, str, str]:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "memsim", *args], capture_output=True, text=True,
                          env=env, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def run_json(*args: str) -> tuple[int, dict]:
    code, stdout, stderr = run(*args, "--json")
    try:
        return code, json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not one JSON document ({exc}):\n{stdout[:2000]}\n{stderr}") from None


def rate(r: float) -> list[str]:
    return [*CASE, "--set", f"serving.arrival.rate_per_s={r}"]


def test_simulate_flags_arrivals_beyond_capacity():
    code, hot = run_json("simulate", *rate(4))
    assert code == 0
    s = hot["serving"]
    assert s["overloaded"] is True
    assert "req/s offered" in s["overload_reason"] and "waiting for admission" in s["overload_reason"]
    code, calm = run_json("simulate", *rate(1))
    assert code == 0
    assert calm["serving"]["overloaded"] is False
    # the queue shows in the latency: minutes to the first token against well under a second
    assert s["ttft_s"]["p50"] > 30 * calm["serving"]["ttft_s"]["p50"]
    assert s["ttft_s"]["p50"] > 10.0 and calm["serving"]["ttft_s"]["p50"] < 5.0


def test_simulate_human_output_warns_only_when_overloaded():
    code, stdout, _ = run("simulate", *rate(4))
    assert code == 0
    assert "arrivals exceed capacity:" in stdout and "TTFT p50 / p99" in stdout
    code, stdout, _ = run("simulate", *rate(1))
    assert code == 0
    assert "arrivals exceed capacity" not in stdout


@pytest.mark.slow
def test_plan_shows_latency_and_overload():
    code, doc = run_json("plan", *rate(4))
    assert code == 0
    s = doc["serving"]
    assert s["overloaded"] is True and s["overload_reason"]
    assert s["ttft_s"]["p99"] >= s["ttft_s"]["p50"] > 0 and s["tbt_s"]["p50"] > 0
    code, stdout, _ = run("plan", *rate(4))
    assert code == 0
    for text in ("TTFT p50 / p99", "TBT p50 / p99", "preemptions", "makespan", "arrivals exceed capacity:"):
        assert text in stdout, text


def test_overload_verdict_needs_both_a_rate_gap_and_a_backlog():
    # all at once: an offline batch, no arrival rate
    assert overload_verdict(100, 0.0, 0.0, 0, 99, 0)[0] is False
    # completions lag (a short trace still in flight) but nothing waits: keeps up
    assert overload_verdict(64, 0.0, 14.0, 9, 1, 0)[0] is False
    # 1000 requests over 100 s, half done, 300 still queued: overloaded
    hot, reason = overload_verdict(1000, 0.0, 100.0, 500, 300, 12)
    assert hot is True and "9.99 req/s offered" in reason and "12 preemptions" in reason
    # the rate keeps up: not overloaded even with a brief queue
    assert overload_verdict(1000, 0.0, 100.0, 980, 60, 0)[0] is False


def test_no_request_fits_the_kv_pool_names_the_pool():
    code, doc = run_json("simulate", *NO_FIT)
    assert code == 3
    diag = doc["diagnosis"]
    assert "no tier exceeds" not in diag["summary"] and "no tier exceeds" not in doc["error"]
    assert "KV pool" in diag["summary"] and "blocks" in diag["summary"]
    s = doc["serving"]
    assert s["dropped"] == s["requests"] == 20 and s["kv_pool_tier"] == "hbm"
    pool_tokens = s["kv_pool_blocks"] * s["kv_block_tokens"]
    assert s["largest_request_tokens"] > pool_tokens
    (short,) = diag["shortfalls"]
    assert short["tier"] == "hbm" and short["capacity_bytes"] == doc["capacity_bytes"]["hbm"]
    # the bytes of the blocks the longest request lacks, on the pool's tier
    lacking = -(-s["largest_request_tokens"] // s["kv_block_tokens"]) - s["kv_pool_blocks"]
    assert short["short_bytes"] == lacking * s["kv_block_bytes"] > 0
    assert any(f"{pool_tokens:,} tokens" in t for t in diag["suggestions"])
    code, _, stderr = run("simulate", *NO_FIT)
    assert code == 3
    assert "does not fit: no request fits the KV pool" in stderr and "short by" in stderr
