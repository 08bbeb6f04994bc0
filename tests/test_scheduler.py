"""The serving scheduler's policy on its own (memsim/sim/scheduler.py): queues in, batch out, no
simulation. Block counts by hand with 16-token blocks."""

from __future__ import annotations

from dataclasses import dataclass, field

from memsim.contracts.plan import ServingPolicy
from memsim.sim.scheduler import Queues, Swap, schedule

NO_SWAP = Swap(enabled=False, block_bytes=1, limit_bytes=0)


@dataclass
class R:
    prompt: int
    output: int = 8
    computed: int = 0
    generated: int = 0
    blocks: int = 0
    swapped: int = 0
    k: int = 0
    name: str = ""


def decoding(prompt: int, generated: int, name: str = "") -> R:
    """A running request one token from its next decode step, its blocks all held."""
    pg = prompt + generated
    return R(prompt, 64, pg - 1, generated, -(-pg // 16) if pg % 16 != 1 else pg // 16, name=name)


def queues(running=(), waiting=(), free=100, swapped=()) -> Queues:
    running = list(running)
    return Queues(running, list(waiting), 0, list(swapped), free, sum(r.computed for r in running))


def test_waiting_requests_are_admitted_first_come_under_the_token_budget():
    a, b, c = R(100, name="a"), R(100, name="b"), R(100, name="c")
    q = queues(waiting=[a, b, c])
    batch = schedule(q, ServingPolicy(max_num_batched_tokens=150, block_size=16), NO_SWAP)
    assert [r.name for r in batch.requests(q.running)] == ["a", "b"]
    assert (a.k, b.k, c.k) == (100, 50, 0)  # b's prompt is chunked; c waits
    assert q.head == 2 and batch.new == 150 and not batch.decode
    assert batch.taken == 7 + 4 and q.free == 100 - 11  # ceil(100/16) + ceil(50/16)
    assert batch.ctx == 100 * 101 // 2 + 50 * 51 // 2 and batch.kv_read == 150


def test_max_num_seqs_caps_the_batch():
    q = queues(waiting=[R(10) for _ in range(5)])
    batch = schedule(q, ServingPolicy(max_num_seqs=3, block_size=16), NO_SWAP)
    assert len(batch.requests(q.running)) == 3 and q.head == 3


def test_decoding_requests_take_one_token_each_and_a_block_when_one_fills():
    a, b = decoding(32, 1, "a"), decoding(40, 2, "b")  # a's 33rd token opens its 3rd block
    assert (a.blocks, b.blocks) == (2, 3)
    q = queues(running=[a, b], free=5)
    batch = schedule(q, ServingPolicy(block_size=16), NO_SWAP)
    assert batch.decode and batch.new == 2 and (a.k, b.k) == (1, 1)
    assert batch.ctx == 33 + 42 and batch.kv_read == 33 + 42
    assert (a.blocks, b.blocks) == (3, 3) and batch.taken == 1 and q.free == 4


def test_when_blocks_run_out_the_newest_is_preempted_and_recomputes():
    old, new = decoding(32, 0, "old"), decoding(32, 0, "new")  # each needs a 3rd block
    old.computed = new.computed = 32
    old.generated = new.generated = 1  # token 33 opens block 3
    late = R(10, name="late")
    q = queues(running=[old, new], waiting=[late], free=0)
    batch = schedule(q, ServingPolicy(block_size=16), NO_SWAP)
    assert [r.name for r in batch.preempted] == ["new"] and batch.given == 2
    assert [r.name for r in batch.requests(q.running)] == ["old"] and old.blocks == 3
    assert new.computed == 0 and new.blocks == 0 and q.waiting[0] is new  # back to the queue's head
    assert late.k == 0 and q.head == 0  # nothing admitted in an iteration that preempted
    assert batch.swap_out == 0 and q.free == 1


def test_a_swap_tier_with_room_takes_the_victim_and_it_comes_back_before_waiting_ones():
    old, new = decoding(32, 0, "old"), decoding(32, 0, "new")
    old.computed = new.computed = 32
    old.generated = new.generated = 1
    swap = Swap(enabled=True, block_bytes=1000, limit_bytes=2000)  # room for new's 2 blocks
    q = queues(running=[old, new], free=0)
    first = schedule(q, ServingPolicy(block_size=16), swap)
    assert first.swap_out == 2 and q.swapped == [new] and new.swapped == 2 and q.swap_used == 2
    assert new.computed == 32  # kept: its KV is on the swap tier
    q.free += 10
    late = R(10, name="late")
    q.waiting.append(late)
    second = schedule(q, ServingPolicy(block_size=16), swap)
    assert second.swap_in == 2 and q.swapped == [] and q.swap_used == 0
    assert [r.name for r in second.requests(q.running)] == ["old", "new", "late"]


def test_a_full_swap_tier_falls_back_to_recompute():
    old, new = decoding(32, 0, "old"), decoding(32, 0, "new")
    old.computed = new.computed = 32
    old.generated = new.generated = 1
    q = queues(running=[old, new], free=0)
    batch = schedule(q, ServingPolicy(block_size=16), Swap(enabled=True, block_bytes=1000, limit_bytes=1999))
    assert batch.swap_out == 0 and q.swapped == [] and q.waiting == [new] and new.computed == 0


@dataclass
class Cache:
    """A prefix cache that holds ``hit`` leading blocks of every prompt and records admissions."""

    hit: int
    admitted: list = field(default_factory=list)

    def lookup(self, r) -> int:
        r.computed = min(self.hit * 16, r.prompt - 1)
        return self.hit

    def admit(self, r, hit: int) -> None:
        self.admitted.append((r.name, hit, r.computed))


def test_a_prefix_hit_is_not_computed_again_and_the_cache_is_told_of_the_admission():
    a, b = R(100, name="a"), R(100, name="b")
    cache = Cache(hit=4)
    q = queues(waiting=[a, b], free=8)  # a takes 7 blocks; b's 7 do not fit
    batch = schedule(q, ServingPolicy(block_size=16), NO_SWAP, cache)
    assert a.k == 100 - 64 and batch.new == 36 and batch.kv_read == 100
    assert cache.admitted == [("a", 4, 64)]
    assert b.computed == 0 and q.head == 1  # looked up, did not fit: its hit is dropped
