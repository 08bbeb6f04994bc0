"""A simulation already run is not run again (memsim/sim/memo.py), and the answer is the same."""

from __future__ import annotations

import dataclasses

import pytest

import memsim
from memsim.contracts.plan import Plan
from memsim.sim import memo, simulate
from memsim.sim.engine import StepEngine
from memsim.workloads import load_trace


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv("MEMSIM_SIM_CACHE", raising=False)
    monkeypatch.delenv("MEMSIM_SIM_CACHE_DIR", raising=False)
    memo.clear()
    yield
    memo.clear()


@pytest.fixture
def runs(monkeypatch) -> list:
    """Every StepEngine run, counted."""
    out = []
    real = StepEngine.run
    monkeypatch.setattr(StepEngine, "run", lambda self: out.append(1) or real(self))
    return out


def _case():
    return (memsim.load_system("h100-sxm"),
            load_trace("llama3-8b-infer", ["inference.gen_len=4", "inference.batch_size=1"]))


def _figures(r) -> dict:
    d = r.to_dict()
    d.pop("wall_s")
    return d


def test_a_repeat_is_answered_from_the_cache(runs) -> None:
    system, trace = _case()
    first = simulate(system, trace, Plan(), fold=False)
    n = len(runs)
    named = Plan(notes=["another name"], workload=trace.name)  # naming is not content
    again = simulate(system, trace, named, fold=False)
    assert len(runs) == n and _figures(again) == _figures(first)
    again.peak_bytes["hbm"] = -1  # a caller's edit does not reach the cache
    assert simulate(system, trace, Plan(), fold=False).peak_bytes == first.peak_bytes
    simulate(system, trace, Plan(prefetch_depth=2), fold=False)  # another plan runs
    assert len(runs) > n


def test_the_switch_turns_it_off(runs, monkeypatch) -> None:
    monkeypatch.setenv("MEMSIM_SIM_CACHE", "0")
    system, trace = _case()
    simulate(system, trace, Plan(), fold=False)
    n = len(runs)
    simulate(system, trace, Plan(), fold=False)
    assert len(runs) == 2 * n


def test_a_folder_shares_runs_between_processes(runs, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MEMSIM_SIM_CACHE_DIR", str(tmp_path))
    system, trace = _case()
    first = simulate(system, trace, Plan(), fold=False)
    assert len(list(tmp_path.glob("*.pkl"))) == 1
    memo.clear()  # as another worker would start
    n = len(runs)
    assert _figures(simulate(system, trace, Plan(), fold=False)) == _figures(first)
    assert len(runs) == n


def test_serving_without_preemption_is_one_run(monkeypatch) -> None:
    """vLLM's swap defaults beside the resident baseline: nothing preempted, the same run."""
    from memsim.planners.baselines import resident, vllm_swap
    from memsim.sim import serving

    calls = []
    real = serving.simulate_serving
    monkeypatch.setattr(serving, "simulate_serving", lambda *a, **k: calls.append(1) or real(*a, **k))
    system = memsim.load_system("h100-sxm")
    trace = load_trace("llama3-8b-serve-csv", [])
    a = simulate(system, trace, resident(system, trace, {}))
    assert a.serving.preemptions == 0
    swap = vllm_swap(system, trace, {})
    assert swap.serving.preempt == "swap"
    b = simulate(system, trace, swap)
    assert len(calls) == 1 and _figures(a) == _figures(b)
    # a KV pool on the swap tier is a different run: the swap space comes out of it
    host = {"kv": {"dram": 1.0}}
    c = simulate(system, trace, dataclasses.replace(resident(system, trace, {}), placement=host))
    assert c.serving.preemptions == 0 and len(calls) == 2
    simulate(system, trace, dataclasses.replace(swap, placement=host))
    assert len(calls) == 3


def test_data_parallel_runs_differing_in_overlap_grad_reduce_are_two_runs() -> None:
    """A pure data-parallel trace gets its rank work only when simulated across nodes
    (memsim.workloads.parallel_work.with_work), so the trace itself must carry
    ``overlap_grad_reduce``: otherwise the second workload is answered with the first's Result."""
    from memsim.workloads import build_trace
    from memsim.workloads.spec import Workload

    system = memsim.load_system("h100-sxm", ["hardware.nodes=2"])
    base = {"micro_batch": 1, "seq_len": 512, "grad_accum": 2, "zero_stage": 1, "precision": "bf16",
            "parallel": {"data": 16}}
    off = build_trace(Workload(name="dp", model="llama-3-8b", training=base))
    on = build_trace(Workload(name="dp", model="llama-3-8b", training={**base, "overlap_grad_reduce": True}))
    assert "work" not in off.meta["parallel"] and "work" not in on.meta["parallel"]
    assert memo.keys(system, off, Plan(), True)[0] != memo.keys(system, on, Plan(), True)[0]
    serial, overlapped = simulate(system, off), simulate(system, on)
    # the gradient reduce hidden behind the backward: a shorter step, less exposed communication
    assert overlapped.step_time_s < serial.step_time_s
    assert overlapped.parallel["exposed_comm_s"] < serial.parallel["exposed_comm_s"]
