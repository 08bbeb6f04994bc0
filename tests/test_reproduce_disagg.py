"""The disaggregation reproduction kinds (memsim/studies/reproduce_disagg.py): the rate search,
per-request latencies, and the two DistServe cases end to end."""

from __future__ import annotations

import pytest

from memsim.sim import simulate
from memsim.sim.synthetic import serving_trace
from memsim.studies.reproduce import run_case
from memsim.studies.reproduce_disagg import _quantile, max_rate, request_latencies
from memsim.workloads.trace import Requests
from tests.conftest import make_system
from tests.test_disaggregated import disaggregate


def test_bisection_finds_the_threshold_within_its_steps():
    assert max_rate(lambda r: r <= 3.7, 0.25, 16.0, 20) == pytest.approx(3.7, abs=16 / 2**20)
    assert max_rate(lambda r: r <= 3.7, 0.25, 16.0, 20) <= 3.7
    assert max_rate(lambda r: False, 0.25, 16.0, 20) == 0.0
    assert max_rate(lambda r: True, 0.25, 16.0, 20) == 16.0


def test_nearest_rank_quantile():
    assert _quantile([5.0, 1.0, 3.0, 2.0, 4.0], 0.9) == 5.0
    assert _quantile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert _quantile([], 0.9) == float("inf")


def test_one_requests_latencies_match_the_simulators_ttft_and_tbt():
    system = make_system()
    for disaggregated in (False, True):
        trace = serving_trace(n=1, layers=4, params=1e9)
        trace.requests = Requests([0.5], [100], [5])
        if disaggregated:
            disaggregate(trace)
        r = simulate(system, trace).serving
        ttft, tpot = request_latencies(system, trace)
        assert ttft == [pytest.approx(r.ttft_s["p50"], rel=1e-12)]
        assert tpot == [pytest.approx(r.tbt_s["mean"], rel=1e-9)]


def _figures(name: str) -> dict:
    return {f.key: f for f in run_case(name).figures}


@pytest.mark.slow
def test_distserve_kv_transfer_is_within_the_published_bounds():
    figs = _figures("distserve-kv-transfer")
    assert 0 < figs["transfer_share"].memsim <= 0.001
    assert 0 < figs["transfer_p95"].memsim <= 0.030
    assert figs["transfer_share"].diff == 0 and figs["transfer_p95"].diff == 0


@pytest.mark.slow
def test_distserve_goodput_disaggregation_removes_the_tpot_limit():
    figs = _figures("distserve")
    value = {k: f.memsim for k, f in figs.items()}
    assert value["colocated"] <= min(value["colocated_ttft"], value["colocated_tpot"])
    assert value["decode_instance"] > 2 * value["colocated_tpot"]  # no prefill in its iterations
    assert value["prefill_instance"] >= value["colocated_ttft"]
    assert value["goodput_ratio"] == pytest.approx(value["disaggregated"] / value["colocated"])
    assert value["goodput_ratio"] > 1
