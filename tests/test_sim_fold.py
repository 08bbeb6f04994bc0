"""Folding identical layers and decode iterations (memsim/sim/fold.py): the folded Result is the
unfolded one (floats within 1e-9 relative, bytes exactly), the switch turns it off, and what
cannot be folded is simulated whole."""

from __future__ import annotations

import logging
import math

import pytest

import memsim
from memsim.contracts.plan import Plan
from memsim.sim import fold, simulate
from memsim.workloads import load_trace


def _same(a, b) -> None:
    assert a.feasible == b.feasible
    assert a.peak_bytes == b.peak_bytes
    assert a.reserved_bytes == b.reserved_bytes
    assert a.capacity_bytes == b.capacity_bytes
    assert a.notes == b.notes
    assert a.events == b.events
    for x, y in [(a.step_time_s, b.step_time_s), (a.tokens_per_s, b.tokens_per_s), (a.mfu, b.mfu),
                 *[(a.breakdown[k], b.breakdown[k]) for k in a.breakdown],
                 *[(a.mean_bytes[k], b.mean_bytes[k]) for k in a.mean_bytes],
                 *[(a.link_busy[k], b.link_busy[k]) for k in a.link_busy]]:
        assert math.isclose(x, y, rel_tol=1e-9, abs_tol=0.0) or x == y, (x, y)
    assert a.breakdown.keys() == b.breakdown.keys() and a.link_busy.keys() == b.link_busy.keys()


@pytest.fixture
def h100():
    return memsim.load_system("h100-sxm")


@pytest.fixture(autouse=True)
def _no_memo(monkeypatch):
    """Every simulate() here runs (memsim/sim/memo.py would answer repeats from its cache)."""
    monkeypatch.setenv("MEMSIM_SIM_CACHE", "0")


def _folded(system, trace, plan, caplog) -> tuple:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="memsim.sim.fold"):
        got = simulate(system, trace, plan, fold=True)
    return got, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("plan", [
    {},  # resident: layers and decode iterations fold
    {"placement": {"kv": {"dram": 1.0}}},  # KV streamed every step: layers fold, iterations not
    {"placement": {"weight": {"hbm": 0.5, "dram": 0.5}}, "prefetch_depth": 2},
])
def test_folded_inference_is_the_unfolded_run(h100, caplog, plan) -> None:
    trace = load_trace("llama3-8b-infer", ["inference.gen_len=24", "inference.batch_size=4"])
    p = Plan.from_dict(plan)
    got, said = _folded(h100, trace, p, caplog)
    assert any(m.startswith("folded llama3-8b-infer: 32 layers") for m in said), said
    assert any("iterations from samples" in m for m in said) == ("kv" not in plan.get("placement", {}))
    _same(got, simulate(h100, trace, p, fold=False))


def test_folded_training_is_the_unfolded_run(h100, caplog) -> None:
    trace = load_trace("llama2-7b-train", [])
    p = Plan.from_dict({"activations": "offload", "placement": {"optimizer": {"dram": 1.0}},
                        "optimizer_device": "cpu"})
    got, said = _folded(h100, trace, p, caplog)
    assert any(m.startswith("folded llama2-7b-train: 32 layers") for m in said), said
    _same(got, simulate(h100, trace, p, fold=False))


def test_fold_runs_few_layers(h100, monkeypatch) -> None:
    """Peak memory follows the samples: no program of the whole step is built."""
    from memsim.sim import program

    built = []
    real = program.build_program
    monkeypatch.setattr(program, "build_program",
                        lambda t, s, p: built.append(t) or real(t, s, p))
    trace = load_trace("llama3-8b-infer", ["inference.gen_len=512", "inference.batch_size=4"])
    simulate(h100, trace, Plan(), fold=True)
    assert built and max(b.num_ops for b in built) * 20 < trace.num_ops


def test_switch_turns_folding_off(monkeypatch) -> None:
    monkeypatch.setenv("MEMSIM_FOLD", "0")
    assert not fold.enabled(None)
    assert fold.enabled(True)
    monkeypatch.setenv("MEMSIM_FOLD", "1")
    assert fold.enabled(None) and not fold.enabled(False)
    monkeypatch.delenv("MEMSIM_FOLD")
    assert fold.enabled(None)


def test_late_overflow_folds_with_the_whole_runs_oom(h100, caplog) -> None:
    """An overflow in the middle of the step folds; its OOM record is the unfolded run's, from
    the whole program run only until that overflow."""
    trace = load_trace("llama2-7b-train", ["training.micro_batch=8"])
    p = Plan.from_dict({"activations": "keep", "optimizer_device": "cpu",
                        "placement": {"optimizer": {"dram": 1.0}, "grad": {"dram": 1.0}}})
    got, said = _folded(h100, trace, p, caplog)
    want = simulate(h100, trace, p, fold=False)
    assert any(m.startswith("folded llama2-7b-train: 32 layers") for m in said), said
    assert not got.feasible and got.oom == want.oom
    assert 0 < got.oom.time_s < want.step_time_s / 2  # mid-forward, not the resident state
    _same(got, want)


@pytest.mark.parametrize("prefix", [True, False])
def test_decode_overflow_is_found_in_a_prefix(h100, monkeypatch, prefix) -> None:
    """A long decode's OOM is found in its first decode iterations when it happens before the
    last of them (else in the whole program): the unfolded run's record either way."""
    trace = load_trace("llama3-8b-infer", ["inference.gen_len=64", "inference.batch_size=96",
                                           "inference.prompt_len=4096"])
    said = []
    real = fold._before_last_iteration
    monkeypatch.setattr(fold, "_before_last_iteration",
                        lambda e, last: said.append(last) or (prefix and real(e, last)))
    got = simulate(h100, trace, Plan(), fold=True)
    want = simulate(h100, trace, Plan(), fold=False)
    assert not got.feasible and got.oom.time_s > 0 and got.oom == want.oom
    assert said == [fold.PREFIX_ITERATIONS - 1]  # (refused: the whole program, not 16)
    _same(got, want)


def test_first_oom_stops_at_the_overflow(h100) -> None:
    from memsim.sim.engine import StepEngine
    from memsim.sim.program import build_program

    trace = load_trace("llama2-7b-train", ["training.micro_batch=8"])
    p = Plan.from_dict({"activations": "keep", "optimizer_device": "cpu",
                        "placement": {"optimizer": {"dram": 1.0}, "grad": {"dram": 1.0}}})
    view = h100.rank_view(1)
    engine = StepEngine(view, build_program(trace, view, p), p.prefetch_depth, False, trace.meta)
    oom = engine.first_oom()
    whole = simulate(h100, trace, p, fold=False)
    assert oom == whole.oom and engine.env.now == oom.time_s
    assert 0 < engine.clock.events < whole.events / 2


def test_what_cannot_fold_runs_whole(h100, caplog) -> None:
    trace = load_trace("llama2-7b-train", [])
    # an OOM at the start: its record (time, op, holders) is the whole run's
    oom = Plan.from_dict({"activations": "recompute"})
    got = simulate(h100, trace, oom, fold=True)
    want = simulate(h100, trace, oom, fold=False)
    assert not got.feasible and got.oom == want.oom and got.peak_bytes == want.peak_bytes
    # a per-layer plan
    per_layer = Plan.from_dict({"layer_policy": {0: "recompute"}, "optimizer_device": "cpu",
                                "placement": {"optimizer": {"dram": 1.0}}})
    assert fold.simulate_folded(h100.rank_view(1), trace, per_layer) is None
    # a timeline
    short = load_trace("llama3-8b-infer", ["inference.gen_len=4", "inference.batch_size=1"])
    assert simulate(h100, short, Plan(), timeline=True, fold=True).timeline


def test_layers_and_iterations_of_a_trace() -> None:
    trace = load_trace("opt-175b-flexgen", [])
    assert fold.layers_of(trace) == 96
    assert fold.decode_iterations(trace) == 31
    small = fold.decoded(fold.reduced(trace, 4), 3)
    assert fold.layers_of(small) == 4 and fold.decode_iterations(small) == 3
    assert small.meta["gen_len"] == trace.meta["gen_len"]  # each iteration's context as before
    assert fold.layers_of(load_trace("llama3-8b-serve-csv", [])) is None


@pytest.mark.parametrize("plan", [
    {"placement": {"kv": {"dram": 1.0}}},  # every decode step streams the context so far
    {"placement": {"kv": {"hbm": 0.5, "dram": 0.5}}, "prefetch_depth": 2},
])
def test_streamed_kv_folds_over_contexts(h100, caplog, plan) -> None:
    """Iterations whose KV moves between tiers cost affinely more per context token: windows at
    early, middle and late contexts, summed in closed form, are the whole run."""
    trace = load_trace("llama3-8b-infer", ["inference.gen_len=64", "inference.batch_size=4"])
    p = Plan.from_dict(plan)
    got, said = _folded(h100, trace, p, caplog)
    assert any(m.startswith("folded llama3-8b-infer over contexts") for m in said), said
    _same(got, simulate(h100, trace, p, fold=False))


@pytest.mark.slow
def test_a_kink_in_the_context_cost_runs_whole(h100, caplog) -> None:
    """Batch 1 from a short prompt: the KV stream passes the layer's compute mid-generation, so
    the iteration cost is max(compute, copy), not affine; the check sees it, the run is whole."""
    trace = load_trace("llama3-8b-infer", ["inference.gen_len=1024", "inference.prompt_len=128",
                                           "inference.batch_size=1"])
    p = Plan.from_dict({"placement": {"kv": {"dram": 1.0}}})
    _, said = _folded(h100, trace, p, caplog)
    assert any(m.startswith("not folded llama3-8b-infer over contexts") for m in said), said
    assert not any(m.startswith("folded llama3-8b-infer over contexts") for m in said), said
    want = simulate(h100, fold.reduced(trace, 4), p, fold=False)
    got4 = simulate(h100, fold.reduced(trace, 4), p, fold=True)  # (a sample the layer fold ran)
    _same(got4, want)


def test_a_window_reads_the_context_of_its_place(h100) -> None:
    """``decode_from`` moves a window's iterations later in the context: more KV per step."""
    trace = load_trace("llama3-8b-infer", ["inference.gen_len=64", "inference.batch_size=4"])
    p = Plan.from_dict({"placement": {"kv": {"dram": 1.0}}})
    early = simulate(h100, fold.windowed(trace, 0, 3), p, fold=False)
    late = simulate(h100, fold.windowed(trace, 60, 3), p, fold=False)
    assert late.link_busy and late.step_time_s > early.step_time_s
    assert sum(late.link_busy.values()) * late.step_time_s > sum(early.link_busy.values()) * early.step_time_s


def test_a_refit_window_is_the_window_built_anew(h100) -> None:
    """``refit_context`` moves a built window's program to another context: every op moves the
    shares a program built for that context moves, and it simulates to the same Result."""
    from memsim.sim.program import build_program, refit_context

    trace = load_trace("llama3-8b-infer", ["inference.gen_len=64", "inference.batch_size=4"])
    p = Plan.from_dict({"placement": {"kv": {"dram": 1.0}}, "num_gpu_batches": 2})
    early, late = fold.windowed(trace, 0, 3), fold.windowed(trace, 60, 3)
    refit = refit_context(build_program(early, h100, p), late, p)
    fresh = build_program(late, h100, p)
    assert refit is not None
    assert [(o.in_frac, o.out_frac) for o in refit.ops] == [(o.in_frac, o.out_frac) for o in fresh.ops]
    assert any(a.in_frac != b.in_frac for a, b in zip(build_program(early, h100, p).ops, fresh.ops,
                                                      strict=True))
    _same(fold._result(h100, late, p, fold._sample(h100, late, p, refit)),
          fold._result(h100, late, p, fold._sample(h100, late, p, fresh)))
