"""serving.slo's search over tensor-parallel degrees and cache-aware routing across replicas."""

from __future__ import annotations

import pytest

from memsim.hardware import load_system
from memsim.planners.routing import route
from memsim.planners.slo import candidates
from memsim.sim import simulate
from memsim.workloads import load_trace
from memsim.workloads.trace import Requests


def _sessions(sessions: int, turns: int) -> Requests:
    """Session s's turn t: a prompt of t + 1 blocks chained on the session's own first block."""
    arrival, prompt, output, hashes = [], [], [], []
    for t in range(turns):
        for s in range(sessions):
            arrival.append(float(t * sessions + s))
            prompt.append(512 * (t + 1))
            output.append(16)
            hashes.append([1000 * s + j for j in range(t + 1)])
    return Requests(arrival, prompt, output, hashes)


def test_prefix_routing_keeps_a_session_on_one_replica():
    for policy in ("round_robin", "prefix"):
        # 3 sessions: round-robin over 2 replicas moves each session from one to the other
        req = _sessions(sessions=4 if policy == "prefix" else 3, turns=5)
        shares = route(req, 2, policy)
        # a partition of the stream, arrival order kept within each replica
        assert sorted(a for sh in shares for a in sh.arrival_s) == req.arrival_s
        assert all(sh.arrival_s == sorted(sh.arrival_s) for sh in shares)
        homes = {}
        for k, sh in enumerate(shares):
            for h in sh.hash_ids:
                homes.setdefault(h[0] // 1000, set()).add(k)
        if policy == "prefix":
            assert all(len(v) == 1 for v in homes.values())  # each session on one replica
            assert sorted(len(sh) for sh in shares) == [10, 10]  # and the load balanced
        else:
            assert any(len(v) == 2 for v in homes.values())


def test_prefix_routing_yields_to_an_overloaded_replica():
    # one session only: affinity would put everything on one replica; the balance bound splits it
    shares = route(_sessions(sessions=1, turns=12), 2, "prefix")
    assert all(len(sh) > 0 for sh in shares)


@pytest.fixture(scope="module")
def rows():
    trace = load_trace("llama3-8b-serve-agent", [
        "serving.num_requests=300",
        "serving.slo={ttft_p99: 2s, tbt_p99: 100ms, replicas: [2], dram: [0], tensor: [1, 2, 3]}"])
    by = trace.meta["slo"]["costs_by_tensor"]
    assert "invalid" in by["3"]  # 3 does not divide Llama-3-8B's 8 KV heads
    assert by["2"]["weight_bytes"] == pytest.approx(by["1"]["weight_bytes"] / 2, rel=1e-3)
    system = load_system("h100-sxm")
    out = {"round_robin": candidates(system, trace, simulate=simulate)}
    trace.meta["slo"] = {**trace.meta["slo"], "routing": "prefix"}
    out["prefix"] = candidates(system, trace, simulate=simulate)
    return out


def test_slo_search_tries_each_valid_tp_degree(rows):
    rr = {r["tensor"]: r for r in rows["round_robin"]}
    assert set(rr) == {1, 2}
    assert rr[2]["gpus"] == 4 and rr[1]["gpus"] == 2 and rr[2]["replicas"] == 2
    # half the weights per GPU: decode iterations are faster, each GPU costs the same
    assert rr[2]["tbt_p99_s"] < rr[1]["tbt_p99_s"]
    assert rr[2]["usd_per_hour"] == pytest.approx(2 * rr[1]["usd_per_hour"])
    assert all(r["meets_slo"] for r in rr.values())
    assert rows["round_robin"][0]["tensor"] == 1  # cheapest per token first


def test_prefix_routing_raises_the_hit_rate(rows):
    for tp in (1, 2):
        rr = next(r for r in rows["round_robin"] if r["tensor"] == tp)
        px = next(r for r in rows["prefix"] if r["tensor"] == tp)
        assert px["routing"] == "prefix"
        assert px["prefix_hit_rate"] > rr["prefix_hit_rate"] + 0.02


@pytest.mark.slow
def test_slo_search_sizes_an_nvme_tier_below_dram():
    # Llama-2-70B on one H200 leaves ~9 GiB of HBM for KV: an NVMe cache tier keeps what it evicts
    trace = load_trace("llama2-70b-serve-chat", [
        "serving.num_requests=400",
        "serving.slo={ttft_p99: 10s, tbt_p99: 1s, replicas: [1], dram: [0], nvme: [0, 256GiB]}"])
    found = candidates(load_system("h200"), trace, simulate=simulate)
    rows = {tuple(r["kv_tiers"].items()): r for r in found}
    assert set(rows) == {(), (("nvme", 256 * 2**30),)}
    assert rows[(("nvme", 256 * 2**30),)]["prefix_hit_rate"] > rows[()]["prefix_hit_rate"] + 0.05
