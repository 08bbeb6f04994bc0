"""`memsim plan` on a serving workload with `serving.slo`: deployments (GPUs, DRAM cache size)
simulated and ranked, meeting the SLO first, cheapest per token next."""

from __future__ import annotations

import json

import pytest

from tests.test_conversations import _cli

BASE = ["-H", "h100-sxm", "-w", "llama3-8b-serve-agent", "--planner", "resident",
        "--set", "serving.num_requests=300", "--json"]


def _plan(slo: str) -> dict:
    p = _cli("plan", *BASE, "--set", f"serving.slo={slo}")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.slow
def test_deployments_are_ranked_meeting_the_slo_first_then_by_cost_per_token():
    rows = _plan("{ttft_p99: 2s, tbt_p99: 100ms, replicas: [1, 2], dram: [0, 64GiB]}")["slo"]
    assert {(r["gpus"], r["kv_tiers"].get("dram", 0)) for r in rows} == {
        (1, 0), (1, 64 * 2**30), (2, 0), (2, 64 * 2**30)}
    meets = [r for r in rows if r["meets_slo"]]
    assert meets and rows[:len(meets)] == meets
    costs = [r["usd_per_mtok"] for r in meets]
    assert costs == sorted(costs)
    for r in rows:
        assert r["ttft_p99_s"] <= 2 and r["tbt_p99_s"] <= 0.1 if r["meets_slo"] else True
        assert r["goodput_rps"] > 0 if r["meets_slo"] else r["goodput_rps"] == 0
    # the node's price is shared by its 8 GPUs: two replicas cost twice one per hour
    one = next(r for r in rows if r["gpus"] == 1)
    two = next(r for r in rows if r["gpus"] == 2)
    assert two["usd_per_hour"] == pytest.approx(2 * one["usd_per_hour"])


@pytest.mark.slow
def test_an_slo_nothing_meets_has_no_goodput():
    rows = _plan("{ttft_p99: 1us, tbt_p99: 1us, replicas: [1]}")["slo"]
    assert rows and not any(r["meets_slo"] for r in rows)
    assert all(r["goodput_rps"] == 0 for r in rows)


def test_a_bad_slo_exits_2_naming_the_key():
    p = _cli("plan", *BASE, "--set", "serving.slo={ttft_p99: soon, tbt_p99: 100ms}")
    assert p.returncode == 2, p.stderr
    assert "serving.slo.ttft_p99" in p.stderr and "Traceback" not in p.stderr
