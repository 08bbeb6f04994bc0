"""Swap preemption's cost (memsim/sim/swap.py, ``serving.swap``): copies by granularity priced
with the link's per-copy latency, overlap with the forward pass, KV reuse, and the JSON it adds.
The hand system's link: 10 GB/s, 5 us per copy."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memsim.contracts.plan import Plan, ServingPolicy
from memsim.sim import simulate
from memsim.sim.engine import Clock
from memsim.sim.scheduler import Queues, Swap, schedule
from memsim.sim.swap import SwapCost, SwapStats, start_swaps
from memsim.sim.synthetic import serving_trace
from tests.conftest import make_system
from tests.test_cli_user_errors import memsim

LAT, BW = 5e-6, 10e9
BLOCK = 16 * 2 * 4 * 8 * 128 * 2  # 16 tokens of a 4-layer, 8 KV-head, head_dim 128 bf16 model


def swap_time(cost: SwapCost, runs: list[int], overlap_head: bool = False) -> float:
    """Simulated seconds until one iteration's swap-out of ``runs`` blocks lands (or, with
    ``overlap_head``, until the part the compute waits for lands)."""
    clock = Clock(make_system(), False)
    env = clock.env
    head, rest = start_swaps(env, clock.copier, cost, SwapStats(), "hbm", "dram", BLOCK, runs, [],
                             sum(runs) * BLOCK, 0)
    done = {}

    def watch():
        yield env.all_of(head)
        done["head"] = env.now
        yield env.all_of(head + rest)
        done["all"] = env.now

    env.process(watch())
    env.run()
    return done["head" if overlap_head else "all"]


def test_block_granularity_pays_a_latency_per_block_layer_and_kv_plane():
    layers, n = 4, 10
    block = swap_time(SwapCost(layers=layers), [n])
    request = swap_time(SwapCost(layers=layers, granularity="request"), [n])
    assert block == pytest.approx(2 * layers * n * LAT + n * BLOCK / BW)  # 80 copies
    assert request == pytest.approx(2 * layers * LAT + n * BLOCK / BW)  # 8 copies
    assert block - request == pytest.approx(2 * layers * (n - 1) * LAT)


def test_groups_copy_ceil_blocks_over_group_size_runs():
    cost = SwapCost(layers=4, granularity="group", group_blocks=4)
    assert [cost.runs(n) for n in (0, 1, 4, 5, 9)] == [0, 1, 1, 2, 3]
    assert cost.copies([5, 9]) == 2 * 4 * (2 + 3)
    assert swap_time(cost, [5, 9]) == pytest.approx(2 * 4 * 5 * LAT + 14 * BLOCK / BW)


def test_overlap_makes_the_forward_pass_wait_for_the_first_layer_only():
    layers, n = 4, 12
    cost = SwapCost(layers=layers, granularity="request", overlap=True)
    first = swap_time(cost, [n], overlap_head=True)
    assert first == pytest.approx((2 * layers // layers) * LAT + (n * BLOCK // layers) / BW)
    assert swap_time(cost, [n]) == pytest.approx(2 * layers * LAT + n * BLOCK / BW)  # same total


def test_switch_overhead_comes_before_the_copies():
    cost = SwapCost(layers=4, granularity="request", switch_overhead=1e-3)
    clock = Clock(make_system(), False)
    env = clock.env
    stats = SwapStats()
    head, rest = start_swaps(env, clock.copier, cost, stats, "hbm", "dram", BLOCK, [3], [], 0, 2)
    env.run()
    assert len(head) == 2 and rest == []  # the overhead and the copy: both before the compute
    assert stats.seconds == pytest.approx(2e-3 + 2 * 4 * LAT + 3 * BLOCK / BW)
    assert stats.bytes == 3 * BLOCK and stats.copies == 8


@settings(max_examples=60, deadline=None)
@given(runs=st.lists(st.integers(1, 200), min_size=1, max_size=6), group=st.integers(1, 64),
       layers=st.integers(1, 80))
def test_coarser_granularity_is_never_slower(runs, group, layers):
    block = swap_time(SwapCost(layers=layers), runs)
    grouped = swap_time(SwapCost(layers=layers, granularity="group", group_blocks=group), runs)
    request = swap_time(SwapCost(layers=layers, granularity="request"), runs)
    assert block >= grouped - 1e-15 and grouped >= request - 1e-15


# -- KV reuse in the scheduler (hand-built queues, 16-token blocks) -------------------------------

class R:
    def __init__(self, prompt: int, computed: int, generated: int, blocks: int, name: str):
        self.prompt, self.output, self.computed, self.generated = prompt, 64, computed, generated
        self.blocks, self.swapped, self.k, self.host, self.valid, self.name = blocks, 0, 0, 0, 0, name


def test_reuse_keeps_the_host_copy_and_copies_only_new_blocks_at_the_next_swap_out():
    swap = Swap(enabled=True, block_bytes=1, limit_bytes=100, reuse=True)
    pol = ServingPolicy(block_size=16)
    old, new = R(32, 32, 1, 2, "old"), R(32, 32, 1, 2, "new")  # token 33 opens a 3rd block each
    q = Queues([old, new], [], 0, [], 0, 64)
    first = schedule(q, pol, swap)
    assert first.swap_out == 2 and first.swap_out_runs == [2] and q.swap_used == 2
    q.free = 3  # room for new's two blocks and the one its next token opens
    back = schedule(q, pol, swap)
    assert back.swap_in == 2 and back.swap_in_runs == [2]
    assert q.swap_used == 2 and q.retained == [new] and (new.host, new.valid) == (2, 2)
    # new grows to 5 blocks (tokens 33..80), then is preempted again: 3 blocks copied, not 5
    new.blocks, new.computed, new.generated = 5, 80, 49
    old.blocks, old.computed, old.generated = 3, 48, 17  # token 49 opens old's 4th block
    q.free = 0
    again = schedule(q, pol, swap)
    assert [r.name for r in again.preempted] == ["new"]
    assert again.swap_out == 3 and q.swap_used == 5 and q.retained == []


def test_a_full_swap_tier_drops_kept_copies_oldest_first():
    swap = Swap(enabled=True, block_bytes=1, limit_bytes=4, reuse=True)
    kept = R(32, 32, 1, 3, "kept")
    kept.host, kept.valid = 3, 2  # holds 3 of the tier's 4 blocks while it runs
    old, new = R(32, 32, 1, 2, "old"), R(32, 32, 1, 2, "new")
    q = Queues([old, kept, new], [], 0, [], 0, 96, swap_used=3, retained=[kept])
    batch = schedule(q, ServingPolicy(block_size=16), swap)
    assert batch.swap_out == 2 and q.swapped == [new]  # kept's copy made the room
    assert q.retained == [] and (kept.host, kept.valid) == (0, 0) and q.swap_used == 2


# -- in the serving engine --------------------------------------------------------------------

def preempting(swap: dict | None):
    system = make_system(tiers__hbm={"kind": "hbm", "capacity": "16GB", "read_bw": "1000TB/s",
                                     "write_bw": "1000TB/s"})
    trace = serving_trace(n=100, rate_per_s=100.0, prompt=256, output=64, seed=3)
    if swap is not None:
        trace.meta["swap"] = swap
    policy = ServingPolicy(max_num_seqs=64, max_num_batched_tokens=4096, preempt="swap",
                           swap_tier="dram", swap_bytes=4 * 10**9)
    return simulate(system, trace, Plan(serving=policy)).serving


def test_the_engine_counts_every_swap_copy_and_coarser_copies_switch_faster():
    block, request = preempting(None), preempting({"granularity": "request"})
    assert block.preemptions > 0 and block.completed == request.completed == 100
    assert block.swap_bytes == request.swap_bytes > 0  # same swaps, other copy sizes
    layers = 32
    blocks = block.swap_bytes // (16 * 2 * layers * 8 * 128 * 2)
    assert block.swap_copies == 2 * layers * blocks
    assert request.swap_copies < block.swap_copies
    assert block.swap_seconds - request.swap_seconds == pytest.approx(
        (block.swap_copies - request.swap_copies) * LAT, rel=1e-6)


def test_without_preemption_nothing_is_swapped():
    system = make_system()
    trace = serving_trace(n=5, rate_per_s=1.0, layers=4, params=1e9)
    s = simulate(system, trace).serving
    assert (s.preemptions, s.swap_seconds, s.swap_bytes, s.swap_copies) == (0, 0.0, 0, 0)


SWAP_WORKLOAD = """name: swap-test
model: llama-3-8b
serving:
  arrival: {process: poisson, rate_per_s: 50.0, seed: 1}
  num_requests: 60
  prompt_len: {dist: uniform, low: 1024, high: 2048}
  output_len: {dist: fixed, value: 256}
  scheduler: {preempt: swap, swap_space: 16, max_num_seqs: 64}
"""


@pytest.mark.slow
def test_cli_reports_swap_seconds_and_bytes_and_names_a_bad_key(tmp_path):
    path = tmp_path / "swap.yaml"
    path.write_text(SWAP_WORKLOAD)
    base = ["simulate", "--hardware", "l4", "--workload", str(path)]
    code, block = memsim(*base)
    assert code == 0 and block["serving"]["preemptions"] > 0
    code, grouped = memsim(*base, "--set", "serving.swap.granularity=group",
                           "--set", "serving.swap.group_blocks=8")
    assert code == 0
    for doc in (block, grouped):
        assert doc["serving"]["swap_bytes"] > 0 and doc["serving"]["swap_seconds"] > 0
    assert grouped["serving"]["swap_copies"] < block["serving"]["swap_copies"]
    assert grouped["serving"]["swap_seconds"] < block["serving"]["swap_seconds"]
    code, err = memsim(*base, "--set", "serving.swap.granularity=page")
    assert code == 2 and "serving.swap.granularity" in str(err)


@pytest.mark.slow
def test_reuse_copies_fewer_bytes_when_resumed_requests_are_preempted_again(tmp_path):
    from memsim.hardware import load_system
    from memsim.workloads import load_trace

    path = tmp_path / "swap.yaml"
    path.write_text(SWAP_WORKLOAD)
    runs = {}
    for reuse in (False, True):
        trace = load_trace(str(path))
        trace.meta["swap"] = {"granularity": "group", "group_blocks": 8, "reuse": reuse}
        runs[reuse] = simulate(load_system("l4"), trace)
    plain, kept = runs[False], runs[True]
    assert kept.serving.completed == plain.serving.completed == 60
    assert 0 < kept.serving.swap_bytes < plain.serving.swap_bytes
    assert kept.serving.swap_copies < plain.serving.swap_copies
    assert kept.peak_bytes["dram"] >= plain.peak_bytes["dram"]  # kept copies hold their room


def test_vllm_args_say_what_fastswitch_swaps_and_kv_budgets_lose():
    from memsim.emit.vllm import emit

    trace = serving_trace(n=5, layers=4, params=1e9)
    plan = Plan(serving=ServingPolicy(preempt="swap", swap_bytes=4 << 30))
    _, plain = emit(make_system(), trace, plan)
    trace.meta["swap"] = {"granularity": "group", "group_blocks": 8}
    trace.meta["kv_budget"] = {"cap": 256}
    args, notes = emit(make_system(), trace, plan)
    assert "preemption-mode: swap" in args
    assert not any("FastSwitch" in n or "kv_budget" in n for n in plain)
    assert any("FastSwitch" in n for n in notes) and any("kv_budget" in n for n in notes)
