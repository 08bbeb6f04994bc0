"""The serving planner's KV pool under ``serving.kv_budget`` (memsim/planners/serving.py): a request
holds at most the budget's tokens, as the simulator's scheduler admits it (``kv_cap``), so the LP
sizes the pool and the decode reads by the kept tokens and admits more sequences."""

from __future__ import annotations

import pytest

from memsim.hardware import load_system
from memsim.planners import mip
from memsim.planners.serving import kept_tokens
from memsim.sim import simulate
from memsim.workloads import load_trace
from memsim.workloads.trace import Requests

LONG = """name: budget-plan
model: llama-3-8b
serving:
  arrival: {process: poisson, rate_per_s: 4.0, seed: 1}
  num_requests: 40
  prompt_len: {dist: fixed, value: 7680}
  output_len: {dist: fixed, value: 256}
"""
BUDGET = ["serving.kv_budget.sink=4", "serving.kv_budget.window=2044"]  # 2,048 tokens kept


def requests(pairs):
    n = len(pairs)
    return Requests(arrival_s=[0.0] * n, prompt_len=[p for p, _ in pairs],
                    output_len=[o for _, o in pairs])


def test_kept_tokens_by_hand():
    # cap 100: a prompt over it keeps 100 throughout; one that stays under it keeps p + o and
    # attends to p + o/2 on average; one that crosses it grows for 20 tokens, then stays at 100
    req = requests([(200, 10), (20, 40), (80, 40)])
    held, ctx = kept_tokens(req, 100, 0, 0)
    assert held == pytest.approx((100 + 60 + 100) / 3)
    assert ctx == pytest.approx((100 + 40 + (20 * (80 + 10) + 20 * 100) / 40) / 3)
    assert kept_tokens(req, 10**9, 0, 0) == pytest.approx(((210 + 60 + 120) / 3,
                                                           (205 + 40 + 100) / 3))


def test_the_budget_lets_the_planner_admit_more_sequences_and_the_plan_runs(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(LONG)
    system = load_system("l4")
    full = mip.run("mip", system, load_trace(str(path)), {}, 10.0)
    trace = load_trace(str(path), BUDGET)
    kept = mip.run("mip", system, trace, {}, 10.0)
    # without it each 7,936-token request needs ~1 GB of KV: 24 GB hold a few of them
    assert kept.serving.max_num_seqs >= 2 * full.serving.max_num_seqs
    assert kept.planner.estimate_s < full.planner.estimate_s
    result = simulate(system, trace, kept)
    assert result.feasible and result.serving.completed == 40
