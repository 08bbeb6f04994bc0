"""Megatron's interleaved 1F1B beyond whole groups of P micro-batches, and with uneven stages."""

from __future__ import annotations

import pytest

from memsim.errors import SpecError
from memsim.hardware import load_system
from memsim.sim import simulate
from memsim.sim.pipeline import interleaved_table, microbatch_group, simulate_pipeline
from memsim.workloads import build_trace
from memsim.workloads.spec import Workload


def test_schedule_table_by_hand():
    # groups of 6: micro 0-5 through chunk 0 then chunk 1, then the last group 6-9 likewise
    assert interleaved_table(10, 2, 6) == ([(m, 0) for m in range(6)] + [(m, 1) for m in range(6)]
                                           + [(m, 0) for m in range(6, 10)] + [(m, 1) for m in range(6, 10)])
    assert interleaved_table(8, 2, 4)[:8] == [(0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (1, 1), (2, 1), (3, 1)]


def test_group_size_follows_megatron_core_rule():
    assert microbatch_group(4, 8) == 4          # a multiple of P: groups of P
    assert microbatch_group(4, 10) == 5         # 10 mod 4 = 2 < P; 10 mod 5 = 0
    assert microbatch_group(4, 11) == 6         # 11 mod 5 = 1; 11 mod 6 = 5 >= P
    assert microbatch_group(4, 3) is None       # fewer micro-batches than stages


@pytest.mark.parametrize("micro", [5, 6, 7, 10, 11])
def test_interleaved_runs_when_micro_batches_are_not_a_multiple_of_stages(micro):
    p, v = 4, 2
    run = simulate_pipeline(p, micro, 1.0, 2.0, schedule="interleaved", chunks=v)
    plain = simulate_pipeline(p, micro, 1.0, 2.0)
    keys = [(e.stage, e.kind, e.chunk, e.micro) for e in run.events]
    assert len(keys) == len(set(keys)) == 2 * p * v * micro  # every op of every chunk exactly once
    end = {k: e.end for k, e in zip(keys, run.events, strict=True)}
    for e in run.events:
        if e.kind == "F" and e.stage > 0:  # a forward waits for the stage before it
            assert e.start >= end[(e.stage - 1, "F", e.chunk, e.micro)] - 1e-12
        if e.kind == "F" and e.stage == 0 and e.chunk > 0:  # chunk c starts after chunk c−1 left
            assert e.start >= end[(p - 1, "F", e.chunk - 1, e.micro)] - 1e-12
        if e.kind == "B" and e.stage < p - 1:
            assert e.start >= end[(e.stage + 1, "B", e.chunk, e.micro)] - 1e-12
    assert run.bubble_fraction < plain.bubble_fraction  # what interleaving is for


def test_uneven_stages_split_over_their_chunks():
    # stage 0 and 3 have 6 layers, the middle ones 4 (seconds ∝ layers); 2 chunks each
    fwd = [6.0, 4.0, 4.0, 6.0]
    run = simulate_pipeline(4, 8, fwd, [2 * f for f in fwd], schedule="interleaved", chunks=2)
    for e in run.events:
        assert e.end - e.start == pytest.approx((fwd[e.stage] if e.kind == "F" else 2 * fwd[e.stage]) / 2)
    assert {e.chunk for e in run.events} == {0, 1}


def _w(**extra) -> Workload:
    t = {"micro_batch": 1, "seq_len": 1024, "grad_accum": 5, "zero_stage": 1,
         "parallel": {"tensor": 8, "pipeline": 3}, "pipeline_first_layers": 10,
         "pipeline_last_layers": 10, **extra}
    return Workload(name=f"il-{sorted(extra.items())}", model="llama-3-8b", training=t)


def test_interleaved_uneven_layout_simulates_with_less_bubble():
    s = load_system("h100-sxm", ["hardware.nodes=3"])
    plain = simulate(s, build_trace(_w()))
    inter = simulate(s, build_trace(_w(pipeline_schedule="interleaved", virtual_stages=2)))
    assert plain.parallel["layout"]["pipeline"] == inter.parallel["layout"]["pipeline"] == 3
    assert inter.parallel["bubble_fraction"] < plain.parallel["bubble_fraction"]


def test_chunks_must_divide_every_stage():
    with pytest.raises(SpecError) as err:
        build_trace(_w(pipeline_schedule="interleaved", virtual_stages=4))  # 10 and 12 layers
    assert err.value.exit_code == 2 and "virtual_stages" in str(err.value)
