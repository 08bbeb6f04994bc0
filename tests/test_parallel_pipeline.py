"""1F1B pipeline schedule: the event log step by step, the bubble and stage memory."""

from __future__ import annotations

import pytest

from memsim.sim.pipeline import order_1f1b, simulate_1f1b


def test_stage_order_warmup_steady_cooldown():
    assert order_1f1b(4, 0, 8)[:6] == [("F", 0), ("F", 1), ("F", 2), ("F", 3), ("B", 0), ("F", 4)]
    assert order_1f1b(4, 3, 3) == [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2)]
    assert order_1f1b(4, 1, 8)[-2:] == [("B", 6), ("B", 7)]


def test_event_log_step_by_step():
    run = simulate_1f1b(4, 8, fwd=1.0, bwd=2.0)
    log = {(e.stage, e.kind, e.micro): (e.start, e.end) for e in run.events}
    # micro-batch 0 flows forward one stage per time unit ...
    assert [log[(i, "F", 0)] for i in range(4)] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    # ... stage 0 keeps feeding forwards during warm-up and its first steady forward ...
    assert [log[(0, "F", m)] for m in range(4)] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    # ... and the gradient of micro-batch 0 comes back one stage per backward
    assert [log[(i, "B", 0)] for i in (3, 2, 1, 0)] == [(4, 6), (6, 8), (8, 10), (10, 12)]
    assert run.step_time == (8 + 4 - 1) * 3
    assert run.bubble_fraction == pytest.approx(3 / 11)  # (P−1)/(M+P−1)
    assert run.peak_inflight == [4, 3, 2, 1]  # stage i holds P−i micro-batches


def test_p2p_sends_and_a_slow_stage_widen_the_bubble():
    base = simulate_1f1b(4, 8, 1.0, 2.0)
    assert simulate_1f1b(4, 8, 1.0, 2.0, p2p=0.1).bubble_fraction > base.bubble_fraction
    slow = simulate_1f1b(4, 8, [1.0, 1.0, 1.5, 1.0], [2.0, 2.0, 3.0, 2.0])
    assert slow.step_time >= 8 * 4.5 and slow.bubble_fraction > base.bubble_fraction


def test_few_microbatches_cap_what_a_stage_holds():
    assert simulate_1f1b(8, 2, 1.0, 2.0).peak_inflight == [2] * 7 + [1]
