"""The layout search chooses the micro-batch size with the layout (memsim/planners/layouts.py)."""

from __future__ import annotations

import pytest

from memsim.hardware import load_system
from memsim.planners.layouts import micro_batches, search_layouts
from memsim.workloads.spec import Workload


def test_micro_batch_sizes_divide_a_ranks_share():
    assert micro_batches(12) == [1, 2, 3, 4, 6, 12]
    assert micro_batches(16, limit=4) == [1, 2, 4]
    assert micro_batches(1) == [1]


def _search(capacity: str, micro_batch: int | None):
    from memsim.api import SIMULATOR

    system = load_system("h100-sxm", [f"hardware.tiers.hbm.capacity={capacity}"])
    w = Workload(name="l8", model="llama-3-8b", training={"seq_len": 2048, "zero_stage": 1})
    found = search_layouts(system, w, global_batch=16, micro_batch=micro_batch, max_pipeline=1,
                           zero_stages=(3,), simulator=SIMULATOR)
    return system, {c.row()["layout"]: c for c in found if c.policy is not None}


@pytest.mark.slow
def test_a_larger_micro_batch_where_memory_allows_and_it_is_faster():
    _, roomy = _search("80GiB", None)
    _, tight = _search("40GiB", None)
    _, ones = _search("80GiB", 1)
    cap = {"80GiB": 80 * 2**30, "40GiB": 40 * 2**30}
    for name, c in roomy.items():
        per_rank = 16 // c.layout.data
        assert per_rank % c.micro_batch == 0 and c.grad_accum == per_rank // c.micro_batch
        # the search tried micro-batch 1 too: what it chose is at least as fast
        assert c.result.step_time_s <= ones[name].result.step_time_s
        assert c.result.parallel["per_gpu_peak_bytes"] <= cap["80GiB"]
    # TP8 on one node: all 16 sequences in one micro-batch fit 80 GiB and beat 16 of one
    tp8 = "TP8·PP1·DP1"
    assert roomy[tp8].micro_batch == 16
    assert roomy[tp8].result.step_time_s < 0.9 * ones[tp8].result.step_time_s
    # half the memory: a smaller micro-batch, still larger than one, within the 40 GiB
    assert 1 < tight[tp8].micro_batch < roomy[tp8].micro_batch
    assert tight[tp8].result.parallel["per_gpu_peak_bytes"] <= cap["40GiB"]
    # and the fastest layout of all runs more than one sequence a micro-batch
    assert min(roomy.values(), key=lambda c: c.result.step_time_s).micro_batch > 1
