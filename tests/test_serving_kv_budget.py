"""``serving.kv_budget`` in the serving simulator: a request keeps at most sink + window (or
budget) tokens of KV blocks in the pool and attends over them (StreamingLLM-style serving), so
more requests fit a pool. Block counts by hand with 16-token blocks."""

from __future__ import annotations

import pytest

from memsim.contracts.plan import Plan, ServingPolicy
from memsim.errors import SpecError
from memsim.sim import simulate
from memsim.sim.scheduler import Queues, Swap, attended, schedule
from memsim.sim.synthetic import serving_trace
from memsim.workloads import load_trace
from tests.conftest import make_system

NO_SWAP = Swap(enabled=False, block_bytes=1, limit_bytes=0)


class R:
    def __init__(self, prompt: int, computed: int = 0, generated: int = 0, blocks: int = 0):
        self.prompt, self.output, self.computed, self.generated = prompt, 64, computed, generated
        self.blocks, self.swapped, self.k = blocks, 0, 0


def test_a_decoding_request_holds_the_blocks_of_its_budget_only():
    r = R(300, computed=300, generated=1, blocks=5)  # 301 tokens, 68 kept: ceil(68/16) = 5 blocks
    q = Queues([r], [], 0, [], 10, 300)
    batch = schedule(q, ServingPolicy(block_size=16), NO_SWAP, kv_cap=68)
    assert r.k == 1 and r.blocks == 5 and batch.taken == 0  # no block for token 301
    assert batch.ctx == 68 and batch.kv_read == 68  # it attends over the kept tokens


def test_a_prompt_past_the_budget_takes_the_budgets_blocks():
    r = R(1000)
    q = Queues([], [r], 0, [], 100, 0)
    batch = schedule(q, ServingPolicy(block_size=16), NO_SWAP, kv_cap=68)
    assert r.blocks == 5 and batch.taken == 5
    # tokens 1..68 attend to 1..68 tokens, the other 932 to 68 each
    assert batch.ctx == 68 * 69 // 2 + 932 * 68 == attended(1000, 0, 68)
    assert attended(10, 5, 1 << 62) == 10 * 5 + 10 * 11 // 2


def test_more_requests_are_admitted_on_the_same_pool_with_a_budget():
    pol = ServingPolicy(block_size=16, max_num_batched_tokens=8192)
    full = Queues([], [R(100) for _ in range(5)], 0, [], 20, 0)
    schedule(full, pol, NO_SWAP)
    budgeted = Queues([], [R(100) for _ in range(5)], 0, [], 20, 0)
    schedule(budgeted, pol, NO_SWAP, kv_cap=32)
    assert len(full.running) == 2  # 7 blocks each: the third does not fit the 6 left
    assert len(budgeted.running) == 5 and budgeted.free == 20 - 5 * 2


def test_the_engine_serves_a_tight_pool_with_fewer_preemptions_under_a_budget():
    system = make_system(tiers__hbm={"kind": "hbm", "capacity": "16GB", "read_bw": "1000TB/s",
                                     "write_bw": "1000TB/s"})
    plan = Plan(serving=ServingPolicy(max_num_seqs=64, max_num_batched_tokens=4096))
    runs = {}
    for cap in (None, 128):
        trace = serving_trace(n=100, rate_per_s=100.0, prompt=256, output=64, seed=3)
        if cap:
            trace.meta["kv_budget"] = {"cap": cap}
        runs[cap] = simulate(system, trace, plan)
    full, kept = runs[None], runs[128]
    assert full.serving.completed == kept.serving.completed == 100
    assert full.serving.preemptions > 0 and kept.serving.preemptions < full.serving.preemptions
    assert kept.peak_bytes["hbm"] < full.peak_bytes["hbm"] or kept.step_time_s < full.step_time_s
    assert 0 <= kept.serving.kv_fragmentation < 1


BASE = """name: kvb
model: llama-3-8b
serving:
  arrival: {process: poisson, rate_per_s: 5.0, seed: 1}
  num_requests: 10
  prompt_len: {dist: fixed, value: 512}
  output_len: {dist: fixed, value: 16}
"""


def test_the_workload_carries_sink_plus_window_as_the_cap(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(BASE + "  kv_budget: {sink: 4, window: 252}\n")
    assert load_trace(str(path)).meta["kv_budget"]["cap"] == 256


@pytest.mark.parametrize("extra, word", [
    ("  kv_budget: {window: 64, budget: [300, 300]}\n", "per-layer"),
    ("  kv_budget: {window: 64, budget: 300, keep_generated: true}\n", "keep_generated"),
    ("  kv_budget: {window: 64}\n  kv_cache: {prefix_caching: true}\n", "prefix_caching"),
    ("  swap: {granularity: block, group_blocks: 4}\n", "group_blocks"),
])
def test_a_budget_or_swap_serving_cannot_simulate_exits_2_naming_it(tmp_path, extra, word):
    path = tmp_path / "w.yaml"
    path.write_text(BASE + extra)
    with pytest.raises(SpecError) as err:
        load_trace(str(path))
    assert word in str(err.value) and "w.yaml" in str(err.value)


def test_the_traces_kv_working_set_is_the_budgets(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(BASE)
    full = load_trace(str(path)).meta["per_device_bytes"]["kv_cache"]
    path.write_text(BASE + "  kv_budget: {sink: 4, window: 124}\n")
    kept = load_trace(str(path)).meta["per_device_bytes"]["kv_cache"]
    assert kept * 528 == full * 128  # 512 + 16 tokens (33 blocks) against 128 (8 blocks)
