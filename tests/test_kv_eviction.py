"""Eviction policies of the prefix cache: LFU keeps what is used often, 1-bit reuse predictions
keep what is used again, Continuum's time-to-live pins a finished request's blocks (and that pin
costs pool room), and LRU never loses hits to more capacity."""

from __future__ import annotations

import pytest

from memsim.api import simulate_case
from memsim.sim.kvstore import PrefixStore
from tests.test_prefix_cache import BLOCK, chat_requests

SMALL_HBM = ["hardware.tiers.hbm.capacity=24GiB", "serving.num_requests=600"]


def replay(store: PrefixStore, prompts: list[list[int]], capacity: int) -> list[int]:
    """Requests one at a time (each a prompt of whole blocks): the blocks each one hit."""
    hits = []
    for rid, hashes in enumerate(prompts):
        hit, tokens = store.lookup(hashes, len(hashes) * BLOCK + 1)
        store.count(store.acquire(hashes[:hit], tokens), len(hashes) * BLOCK + 1)
        store.register(hashes[hit:])
        store.release(hashes, rid=rid)
        store.fit(capacity * store.cost)
        hits.append(hit)
    return hits


def last_use(prompts: list[list[int]]) -> dict[int, int]:
    return {h: i for i, hashes in enumerate(prompts) for h in hashes}


def test_lfu_keeps_a_hot_block_a_scan_of_one_off_blocks_flushes_from_lru():
    hot = [[1], [1], [1]]
    scan = [[10], [11]]
    prompts = hot + scan + [[1]]
    lru = replay(PrefixStore(BLOCK, 16, "hbm"), prompts, capacity=2)
    lfu = replay(PrefixStore(BLOCK, 16, "hbm", eviction="lfu"), prompts, capacity=2)
    assert lru[-1] == 0 and lfu[-1] == 1
    assert lru[:3] == lfu[:3] == [0, 1, 1]


def test_reuse_predictions_keep_the_block_used_again_and_wrong_ones_lose_it():
    prompts = [[1], [2], [3], [1]]  # 2 and 3 are never used again
    lru = replay(PrefixStore(BLOCK, 16, "hbm"), prompts, capacity=2)
    right = replay(PrefixStore(BLOCK, 16, "hbm", eviction="predict", last_use=last_use(prompts)),
                   prompts, capacity=2)
    wrong = replay(PrefixStore(BLOCK, 16, "hbm", eviction="predict", last_use=last_use(prompts),
                               prediction_error=1.0), prompts, capacity=2)
    assert (lru[-1], right[-1], wrong[-1]) == (0, 1, 0)


@pytest.mark.parametrize("seed", range(3))
def test_perfect_predictions_never_hit_less_than_lru_on_chats(seed):
    requests = chat_requests(seed, n=120)
    prompts = requests.hash_ids
    for cap in (2, 4, 8, 16):
        lru = sum(replay(PrefixStore(BLOCK, 16, "hbm"), prompts, cap))
        pred = sum(replay(PrefixStore(BLOCK, 16, "hbm", eviction="predict",
                                      last_use=last_use(prompts)), prompts, cap))
        noisy = sum(replay(PrefixStore(BLOCK, 16, "hbm", eviction="predict", seed=seed,
                                       last_use=last_use(prompts), prediction_error=0.5),
                           prompts, cap))
        assert pred >= lru and pred >= noisy


def test_a_ttl_pin_survives_pressure_until_it_expires():
    store = PrefixStore(BLOCK, 16, "hbm", eviction="ttl", ttl_s=10.0)
    store.register([1, 2])
    assert store.release([1, 2], now=0.0, blocks=100) == 2 * store.cost
    store.fit(0)  # no free room: an LRU would drop both
    assert store.lookup([1, 2], 3 * BLOCK) == (2, 2 * BLOCK)
    assert store.next_expiry() == 10.0 and store.expire(9.0) == 0
    assert store.expire(10.0) == 2 * store.cost  # their room goes back to the pool
    store.fit(0)
    assert store.lookup([1, 2], 3 * BLOCK) == (0, 0)
    # a hit within the time-to-live takes the pinned block over: its room is free again
    store.register([3])
    store.release([3], now=20.0, blocks=100)
    store.acquire([3], BLOCK)
    assert store.unpinned == store.cost and not store.pinned


def test_a_preempted_requests_blocks_are_not_pinned():
    store = PrefixStore(BLOCK, 16, "hbm", eviction="ttl", ttl_s=10.0)
    store.register([1])
    assert store.release([1]) == 0 and not store.pinned


def _agent(*overrides: str) -> dict:
    _, doc = simulate_case("h100-sxm", "llama3-8b-serve-agent", overrides=[*SMALL_HBM, *overrides])
    return doc["serving"] | {"memory_wait": doc["breakdown"]["memory_wait"]}


@pytest.mark.slow
def test_a_ttl_across_tool_calls_hits_more_than_lru_and_too_long_a_one_starves_the_queue():
    lru = _agent()
    short = _agent("serving.kv_cache.eviction=ttl", "serving.kv_cache.ttl_s=4")
    long = _agent("serving.kv_cache.eviction=ttl", "serving.kv_cache.ttl_s=60")
    assert short["prefix_hit_rate"] > lru["prefix_hit_rate"]
    assert lru["memory_wait"] == 0 and long["memory_wait"] > short["memory_wait"]
    assert long["ttft_s"]["p99"] > 10 * short["ttft_s"]["p99"]
    assert long["completed"] == short["completed"] == lru["completed"] == 600


@pytest.mark.parametrize("override, key", [
    ("serving.kv_cache.eviction=ttl", "serving.kv_cache"),
    ("serving.kv_cache.eviction=fifo", "serving.kv_cache.eviction"),
    ("serving.kv_cache.prediction_error=0.2", "serving.kv_cache"),
])
def test_a_wrong_eviction_key_exits_2_naming_it(override, key):
    from tests.test_conversations import _cli
    p = _cli("simulate", "--hardware", "h100-sxm", "--workload", "llama3-8b-serve-agent",
             "--set", override, "--json")
    assert p.returncode == 2, p.stderr
    assert key in p.stderr and "Traceback" not in p.stderr
