"""Invariants on random small traces and plans (hypothesis): conservation of bytes, OOM iff over
capacity, every copy arrives, streams and engines never overlap themselves, determinism."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memsim.contracts.plan import Plan, ServingPolicy
from memsim.sim import simulate
from memsim.sim.engine import StepEngine
from memsim.sim.program import build_program
from memsim.sim.synthetic import inference_trace, serving_trace, training_trace
from tests.conftest import make_system

MB = 10**6
TIERS = ("hbm", "dram", "ssd")
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def split(draw) -> dict[str, float] | None:
    tiers = draw(st.lists(st.sampled_from(TIERS), min_size=1, max_size=3, unique=True))
    if tiers == ["hbm"]:
        return None
    weights = [draw(st.integers(1, 4)) for _ in tiers]
    total = sum(weights)
    return {t: w / total for t, w in zip(tiers, weights, strict=True)}


@st.composite
def case(draw):
    kind = draw(st.sampled_from(["training", "inference"]))
    layers = draw(st.integers(1, 4))
    if kind == "training":
        trace = training_trace(layers=layers, weight=draw(st.integers(1, 400)) * MB,
                               optim=draw(st.integers(1, 800)) * MB, act=draw(st.integers(1, 100)) * MB,
                               saved=draw(st.integers(1, 200)) * MB, flops=draw(st.floats(1e9, 1e13)))
    else:
        trace = inference_trace(layers=layers, weight=draw(st.integers(1, 400)) * MB,
                                kv=draw(st.integers(1, 200)) * MB, act=draw(st.integers(1, 20)) * MB,
                                flops=draw(st.floats(1e8, 1e11)), gen=draw(st.integers(2, 4)))
    placement = {}
    for cls in ("weight", "optimizer", "grad", "kv"):
        s = draw(split())
        if s:
            placement[cls] = s
    policy = {i: draw(st.sampled_from(["keep", "offload", "recompute"])) for i in range(layers)}
    plan = Plan(placement=placement, layer_policy=policy, activation_tier="dram",
                optimizer_device=draw(st.sampled_from(["gpu", "cpu"])),
                prefetch_depth=draw(st.integers(0, 2)),
                num_gpu_batches=draw(st.integers(1, 3)) if kind == "inference" else None,
                cpu_attention=draw(st.booleans()) if kind == "inference" else False)
    hbm = draw(st.integers(200, 4000)) * MB
    system = make_system(tiers__hbm={"kind": "hbm", "capacity": hbm, "read_bw": "1000TB/s",
                                     "write_bw": "1000TB/s"})
    return system, trace, plan


def run_engine(system, trace, plan, timeline=False):
    engine = StepEngine(system, build_program(trace, system, plan), plan.prefetch_depth, timeline,
                        trace.meta)
    return engine, engine.run()


@SETTINGS
@given(case())
def test_bytes_are_conserved_and_every_copy_arrives(c):
    system, trace, plan = c
    engine, _ = run_engine(system, trace, plan)
    prog, clock = engine.prog, engine.clock
    # everything transient was given back: what remains is exactly the homes of tensors that
    # live to the end (weights, optimizer states, gradients, KV)
    remaining = dict.fromkeys(system.tiers, 0)
    for (name, tier) in engine.home_alloc:
        info = prog.tensors[name]
        assert info.death is None, f"{name} outlived its last use"
        remaining[tier] += info.home[tier]
    for tier, pool in clock.pools.items():
        assert pool.used >= 0
        assert pool.used == remaining[tier], tier
        assert pool.allocated - pool.freed == pool.used
    assert not engine.stages and not engine.work
    # every copy that started arrived, nothing is still in flight
    assert clock.copier.started == len(clock.copier.log)
    assert all(start <= end and src != dst for src, dst, _, start, end in clock.copier.log)
    assert not clock.flows.flows
    assert all(not e.busy and not e.queue for e in clock.copier.engines.values())
    assert all(engine.done) and not engine.done_ev


@SETTINGS
@given(case())
def test_oom_iff_a_tier_went_over_capacity(c):
    system, trace, plan = c
    result = simulate(system, trace, plan)
    over = [t for t, peak in result.peak_bytes.items() if peak > result.capacity_bytes[t]]
    assert result.feasible == (not over)
    if over:
        assert result.oom is not None and result.oom.tier in over
        assert result.oom.needed_bytes > result.oom.capacity_bytes
    else:
        assert result.oom is None


@SETTINGS
@given(case())
def test_time_moves_forward_and_tracks_never_overlap(c):
    system, trace, plan = c
    result = simulate(system, trace, plan, timeline=True)
    spans: dict[int, list[tuple[float, float]]] = {}
    for e in result.timeline:
        if e["ph"] == "X":
            spans.setdefault(e["tid"], []).append((e["ts"], e["ts"] + e["dur"]))
    for track in spans.values():  # a stream or a FIFO copy engine does one thing at a time
        for (s0, e0), (s1, _) in itertools.pairwise(track):
            assert s0 <= e0 <= s1 + 1e-6
    assert result.step_time_s >= 0
    total = sum(result.breakdown.values())
    assert total == pytest.approx(result.step_time_s, rel=1e-9, abs=1e-12)


@SETTINGS
@given(case())
def test_same_inputs_same_result(c):
    system, trace, plan = c
    a = simulate(system, trace, plan, timeline=True)
    b = simulate(system, trace, plan, timeline=True)
    da, db = a.to_dict(), b.to_dict()
    da.pop("wall_s"), db.pop("wall_s")
    assert da == db
    assert a.timeline == b.timeline


@settings(max_examples=10, deadline=None, derandomize=True)
@given(st.integers(20, 120), st.floats(1.0, 50.0), st.sampled_from(["swap", "recompute"]),
       st.integers(1, 8), st.integers(0, 3))
def test_serving_finishes_every_request_and_returns_every_block(n, rate, preempt, hbm_gb, seed):
    system = make_system(tiers__hbm={"kind": "hbm", "capacity": f"{15 + hbm_gb}GB",
                                     "read_bw": "1000TB/s", "write_bw": "1000TB/s"})
    trace = serving_trace(n=n, rate_per_s=rate, prompt=256, output=64, seed=seed)
    policy = ServingPolicy(max_num_seqs=64, max_num_batched_tokens=2048, preempt=preempt,
                           swap_tier="dram", swap_bytes=2 * 10**9)
    from memsim.sim.serving import ServingEngine

    engine = ServingEngine(system, trace, Plan(serving=policy), False)
    result = engine.run()
    assert result.serving.completed + engine.dropped == n
    assert engine.free_blocks == engine.total_blocks
    assert engine.clock.pools["hbm"].live.get("kv", 0) == 0
    assert engine.clock.pools["dram"].live.get("kv swap", 0) == 0
    assert result.serving.ttft_s["p50"] > 0 and result.tokens_per_s > 0
    assert 0 <= result.serving.kv_utilization <= 1 and 0 <= result.serving.kv_fragmentation < 1
    assert sum(result.breakdown.values()) == pytest.approx(result.step_time_s, rel=1e-9)
    again = simulate(system, trace, Plan(serving=policy))
    assert again.step_time_s == result.step_time_s and again.serving == result.serving
