"""Prefix caching across requests: hit rates checked against the trace's own prefix reuse, LRU's
monotonicity in capacity, Mooncake JSONL traces through the CLI."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from memsim.contracts.plan import Plan, ServingPolicy
from memsim.sim import simulate
from memsim.sim.kvstore import PrefixStore
from memsim.sim.synthetic import serving_trace
from memsim.workloads.trace import Requests
from tests.test_sim_engine import make_system
from tests.test_sim_serving import iteration

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 512


def chat_requests(seed: int, n: int = 60, gap_s: float = 1.0) -> Requests:
    """Seeded multi-turn chats: sessions on one of two system prompts, each turn's prompt is the
    session so far plus new blocks (Mooncake-style prefix-chained hash_ids)."""
    rng = random.Random(seed)
    ids = iter(range(10**6))
    systems = [[next(ids) for _ in range(2)], [next(ids) for _ in range(3)]]
    sessions: list[list[int]] = []
    arrival, prompt, output, hashes = [], [], [], []
    for i in range(n):
        if sessions and rng.random() < 0.6:
            s = rng.choice(sessions)
        else:
            s = list(rng.choice(systems))
            sessions.append(s)
        s += [next(ids) for _ in range(rng.randint(1, 2))]
        arrival.append(round(i * gap_s + rng.uniform(0, gap_s / 2), 6))
        prompt.append((len(s) - 1) * BLOCK + rng.randint(1, BLOCK))
        output.append(rng.randint(4, 32))
        hashes.append(list(s))
        s.append(next(ids))  # the answer joins the conversation
    return Requests(arrival, prompt, output, hashes)


def cached_trace(requests: Requests, prefix_caching: bool = True):
    trace = serving_trace(n=1, layers=4, params=1e9)
    trace.requests = requests
    trace.meta["kv_cache"] = {"prefix_caching": prefix_caching, "eviction": "lru", "block_tokens": BLOCK}
    return trace


def trace_reuse(requests: Requests) -> float:
    """Prompt tokens whose leading blocks an earlier request already had / prompt tokens."""
    seen: set[int] = set()
    hit = total = 0
    for p, hashes in zip(requests.prompt_len, requests.hash_ids, strict=True):
        n = 0
        while n < len(hashes) and hashes[n] in seen:
            n += 1
        hit += min(n * BLOCK, p - 1)
        total += p
        seen.update(hashes)
    return hit / total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unbounded_cache_hits_exactly_the_traces_prefix_reuse(seed):
    requests = chat_requests(seed)
    r = simulate(make_system(tiers__hbm={"kind": "hbm", "capacity": "1TB", "read_bw": "1000TB/s",
                                         "write_bw": "1000TB/s"}), cached_trace(requests))
    reuse = trace_reuse(requests)
    assert r.serving.completed == len(requests)
    assert 0.3 < reuse < 1  # the trace does reuse prefixes, so the check has teeth
    assert r.serving.prefix_hit_rate == pytest.approx(reuse, rel=1e-12)
    total = sum(requests.prompt_len)
    assert r.serving.prefix_hits_by_tier == {"hbm": round(reuse * total)}


def test_no_prefix_caching_hits_nothing_and_matches_no_cache():
    requests = chat_requests(0)
    off = simulate(make_system(), cached_trace(requests, prefix_caching=False))
    plain = cached_trace(requests)
    del plain.meta["kv_cache"]
    none = simulate(make_system(), plain)
    on = simulate(make_system(), cached_trace(requests))
    assert off.serving.prefix_hit_rate == 0 and off.serving.prefix_hits_by_tier == {}
    assert off.serving.ttft_s == none.serving.ttft_s and off.step_time_s == none.step_time_s
    assert on.serving.prefix_hit_rate > 0.3
    assert on.serving.ttft_s["mean"] < off.serving.ttft_s["mean"]  # hits skip prefill compute


def test_a_cached_prompt_prefills_only_its_last_token():
    system = make_system()
    requests = Requests([0.0, 1.0], [1024, 1024], [2, 2], [[7, 8], [7, 8]])
    trace = cached_trace(requests)
    r = simulate(system, trace)
    full = iteration(system, trace, 1024, 1024 * 1025 // 2, 1024, "prefill")
    last = iteration(system, trace, 1, 1023 + 1, 1024, "prefill")  # 1023 tokens cached
    assert r.serving.prefix_hit_rate == pytest.approx(1023 / 2048)
    assert sorted([full, last]) == pytest.approx(sorted([r.serving.ttft_s["p50"], r.serving.ttft_s["p90"]]))
    assert r.serving.ttft_s["mean"] == pytest.approx((full + last) / 2)


def _store_hit_rate(requests: Requests, hbm: int, dram: int = 0) -> tuple[float, dict[str, int]]:
    """The store alone, one request at a time in arrival order, under fixed capacities (blocks)."""
    store = PrefixStore(BLOCK, 16, "hbm", [("dram", dram)] if dram else [])
    for p, hashes in zip(requests.prompt_len, requests.hash_ids, strict=True):
        hit, tokens = store.lookup(hashes, p)
        store.count(store.acquire(hashes[:hit], tokens), p)
        store.register(hashes[hit:])
        store.release(hashes)
        store.fit(hbm * store.cost)
    return store.hit_rate, store.hits_by_tier


@pytest.mark.parametrize("seed", range(5))
def test_more_capacity_never_lowers_the_lru_hit_rate(seed):
    requests = chat_requests(seed, n=80)
    sizes = (0, 1, 2, 4, 8, 16, 32, 64, 10**6)
    rates = [_store_hit_rate(requests, c)[0] for c in sizes]
    assert rates == sorted(rates) and rates[0] == 0
    assert rates[-1] == pytest.approx(trace_reuse(requests))
    # a DRAM tier below a small HBM: more of either never lowers the rate; the chain is one
    # LRU stack, so HBM h + DRAM d hits as often as HBM h + d alone, the split only moves hits
    for hbm in (0, 2, 8):
        two = [_store_hit_rate(requests, hbm, d) for d in sizes[1:]]
        assert [t[0] for t in two] == sorted(t[0] for t in two)
        for d, (rate, by_tier) in zip(sizes[1:], two, strict=True):
            assert rate == pytest.approx(_store_hit_rate(requests, hbm + d)[0])
            assert by_tier["hbm"] + by_tier["dram"] == pytest.approx(rate * sum(requests.prompt_len))
        assert two[-1][1]["dram"] > 0
    # the same through the simulator: a bigger HBM leaves a bigger pool for the cache
    sims = []
    for gb in (3, 4, 6, 12, 40):
        system = make_system(tiers__hbm={"kind": "hbm", "capacity": f"{gb}GB", "read_bw": "1000TB/s",
                                         "write_bw": "1000TB/s"})
        r = simulate(system, cached_trace(requests), Plan(serving=ServingPolicy(max_num_seqs=8)))
        sims.append(r.serving.prefix_hit_rate)
    assert sims == sorted(sims) and sims[0] < sims[-1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memsim", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_simulate_json_on_a_mooncake_jsonl_trace():
    base = ["simulate", "-H", "h100-sxm", "-w", "workloads/llama3-8b-serve-mooncake.yaml", "--json"]
    on, off = _cli(*base), _cli(*base, "--set", "serving.kv_cache.prefix_caching=false")
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    s_on, s_off = json.loads(on.stdout)["serving"], json.loads(off.stdout)["serving"]
    lines = (ROOT / "workloads/requests/sample-mooncake-64.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    reqs = Requests([r["timestamp"] / 1000 for r in rows], [r["input_length"] for r in rows],
                    [r["output_length"] for r in rows], [r["hash_ids"] for r in rows])
    assert s_on["completed"] == s_on["requests"] == 64
    assert s_on["prefix_hit_rate"] == pytest.approx(trace_reuse(reqs), rel=1e-9)  # 80 GB: no eviction
    assert s_on["prefix_hits_by_tier"]["hbm"] > 0
    assert s_off["prefix_hit_rate"] == 0
    assert s_on["ttft_s"]["p99"] < s_off["ttft_s"]["p99"]


@pytest.mark.parametrize("line, key", [
    ('{"timestamp": 5, "input_length": 10, "hash_ids": [1]}', "output_length"),
    ('{"timestamp": 5, "input_length": 0, "output_length": 3, "hash_ids": [1]}', "input_length"),
    ('{"timestamp": 5, "input_length": 10, "output_length": 3, "hash_ids": "ab"}', "hash_ids"),
    ('{"timestamp": "x", "input_length": 10, "output_length": 3}', "timestamp"),
])
def test_a_bad_jsonl_line_exits_2_naming_file_line_and_key(tmp_path, line, key):
    good = '{"timestamp": 0, "input_length": 10, "output_length": 3, "hash_ids": [1]}'
    (tmp_path / "t.jsonl").write_text(good + "\n" + line + "\n")
    (tmp_path / "w.yaml").write_text("extends: llama3-8b-serve-mooncake\nserving:\n"
                                     "  arrival: {jsonl: t.jsonl}\n")
    proc = _cli("simulate", "-H", "h100-sxm", "-w", str(tmp_path / "w.yaml"), "--json")
    assert proc.returncode == 2, proc.stderr
    assert "t.jsonl" in proc.stderr and "line 2" in proc.stderr and key in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_dram_tier_keeps_what_a_small_hbm_evicts_and_loads_it_over_the_link():
    requests = chat_requests(1, n=80)
    system = make_system(tiers__hbm={"kind": "hbm", "capacity": "3.3GB", "read_bw": "1000TB/s",
                                     "write_bw": "1000TB/s"})
    plan = Plan(serving=ServingPolicy(max_num_seqs=8))
    hbm_only = simulate(system, cached_trace(requests), plan)
    trace = cached_trace(requests)
    trace.meta["kv_cache"]["tiers"] = {"dram": 64 * 10**9}
    both = simulate(system, trace, plan)
    assert hbm_only.serving.prefix_hit_rate < trace_reuse(requests)  # HBM alone evicts
    assert both.serving.prefix_hit_rate == pytest.approx(trace_reuse(requests))  # DRAM keeps it all
    by_tier = both.serving.prefix_hits_by_tier
    assert by_tier["dram"] > 0 and by_tier["hbm"] + by_tier["dram"] == round(
        both.serving.prefix_hit_rate * sum(requests.prompt_len))
    assert both.link_busy["pcie:dram->hbm"] > 0  # the hits were copied in
    assert both.peak_bytes["dram"] >= 64 * 10**9  # the tier's capacity is held in DRAM


def test_a_cache_tier_the_system_lacks_exits_2_naming_the_key():
    proc = _cli("simulate", "-H", "h100-sxm", "-w", "workloads/llama3-8b-serve-mooncake.yaml",
                "--set", "serving.kv_cache.tiers.dramm=64GiB", "--json")
    assert proc.returncode == 2 and "serving.kv_cache.tiers.dramm" in proc.stderr, proc.stderr
    assert "did you mean 'dram'" in proc.stderr and "Traceback" not in proc.stderr
