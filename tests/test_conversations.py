"""Seeded multi-turn and agentic request streams: deterministic, prefix-chained as a conversation
grows, hit exactly as often as their own prefix reuse, and reachable from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memsim.workloads.conversations import session_requests
from memsim.workloads.spec import Serving
from tests.test_prefix_cache import BLOCK, cached_trace, trace_reuse

ROOT = Path(__file__).resolve().parents[1]


def serving(process: str = "conversation", n: int = 300, **arrival) -> Serving:
    arrival = {"process": process, "rate_per_s": 0.5, "seed": 3, "system_prompt": 1000, **arrival}
    return Serving.model_validate({
        "arrival": arrival, "num_requests": n,
        "prompt_len": {"dist": "lognormal", "mean": 300, "sigma": 0.8, "low": 4, "high": 4000},
        "output_len": {"dist": "lognormal", "mean": 200, "sigma": 0.8, "low": 1, "high": 1000}})


def test_same_seed_same_stream_and_another_seed_another():
    a = session_requests(serving(), 32768, BLOCK)
    assert a == session_requests(serving(), 32768, BLOCK)
    assert a != session_requests(serving(seed=4), 32768, BLOCK)
    assert len(a) == 300 and a.arrival_s == sorted(a.arrival_s)


@pytest.mark.parametrize("process", ["conversation", "agentic"])
def test_each_turn_extends_the_last_by_its_answer_and_a_new_message(process):
    r = session_requests(serving(process, n=400), 32768, BLOCK)
    by_first: dict[int, list[int]] = {}  # a session is named by its first non-system block
    system_blocks = 1000 // BLOCK
    firsts = {tuple(h[:system_blocks]) for h in r.hash_ids if len(h) > system_blocks}
    assert len(firsts) == 1  # one system prompt: every session shares its whole blocks
    grown = 0
    for i, hashes in enumerate(r.hash_ids):
        if len(hashes) <= system_blocks + 1:
            continue
        prev = by_first.get(hashes[system_blocks])
        if prev is not None:
            p, q = r.prompt_len[prev], r.prompt_len[i]
            full = p // BLOCK
            assert q > p + r.output_len[prev]  # history, answer and a message ≥ 1 token
            assert hashes[:full] == r.hash_ids[prev][:full]  # the whole blocks carry over
            if p % BLOCK:  # the partial last block was refilled: a new id
                assert hashes[full] != r.hash_ids[prev][full]
            grown += 1
        by_first[hashes[system_blocks]] = i
    assert grown > 100  # most requests continue a session, so the check has teeth


def test_agent_steps_follow_each_other_by_the_tool_pause():
    mean_gap = {}
    for process, key in (("conversation", "think_time_s"), ("agentic", "tool_time_s")):
        r = session_requests(serving(process, n=2000, turns=6, **{key: 4.0}), 32768, BLOCK)
        last: dict[int, float] = {}
        gaps = []
        for t, hashes in zip(r.arrival_s, r.hash_ids, strict=True):
            if len(hashes) > 2:
                key_block = hashes[1]
                if key_block in last:
                    gaps.append(t - last[key_block])
                last[key_block] = t
        mean_gap[process] = float(np.mean(gaps))
    for gap in mean_gap.values():
        assert 3.0 < gap < 5.0  # exponential pauses with mean 4 s


def test_sessions_stop_at_the_models_context():
    r = session_requests(serving(n=500, turns=20), 4096, BLOCK)
    assert max(p + o for p, o in zip(r.prompt_len, r.output_len, strict=True)) <= 4096


@pytest.mark.parametrize("process, pause", [("conversation", "think_time_s"), ("agentic", "tool_time_s")])
def test_an_unbounded_cache_hits_the_streams_own_prefix_reuse(process, pause):
    from memsim.sim import simulate
    from tests.test_sim_engine import make_system
    # pauses long beside the service time, so each turn finds the last one's answer cached
    requests = session_requests(serving(process, n=150, **{pause: 3600.0}), 32768, BLOCK)
    r = simulate(make_system(tiers__hbm={"kind": "hbm", "capacity": "1TB", "read_bw": "1000TB/s",
                                         "write_bw": "1000TB/s"}), cached_trace(requests))
    reuse = reuse_with_answers(requests)
    assert 0.3 < reuse < 1 and reuse > trace_reuse(requests)  # answers are reused too
    assert r.serving.prefix_hit_rate == pytest.approx(reuse, rel=1e-12)


def reuse_with_answers(requests) -> float:
    """Prompt tokens whose leading blocks an earlier prompt or answer had / prompt tokens (every
    request finishes before the next of its session arrives on this fast machine)."""
    seen: set[int] = set()
    hit = total = 0
    for p, hashes, answer in zip(requests.prompt_len, requests.hash_ids, requests.answer_hash_ids,
                                 strict=True):
        n = 0
        while n < len(hashes) and hashes[n] in seen:
            n += 1
        hit += min(n * BLOCK, p - 1)
        total += p
        seen.update(hashes)
        seen.update(answer)
    return hit / total


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memsim", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_simulate_json_on_an_agentic_workload():
    p = _cli("simulate", "--hardware", "h100-sxm", "--workload", "llama3-8b-serve-agent",
             "--set", "serving.num_requests=200", "--json")
    assert p.returncode == 0, p.stderr
    sv = json.loads(p.stdout)["serving"]
    assert sv["completed"] == 200 and 0.5 < sv["prefix_hit_rate"] < 1
    assert sv["prefix_hits_by_tier"]["hbm"] > 0


@pytest.mark.parametrize("override, key", [
    ("serving.arrival.think_time_s=3", "serving.arrival"),
    ("serving.arrival.turns=0.5", "serving.arrival.turns"),
])
def test_a_wrong_session_key_exits_2_naming_it(override, key):
    p = _cli("simulate", "--hardware", "h100-sxm", "--workload", "llama3-8b-serve-agent",
             "--set", override, "--json")
    assert p.returncode == 2, p.stderr
    assert key in p.stderr and "Traceback" not in p.stderr
