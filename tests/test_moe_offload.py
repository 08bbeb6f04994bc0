"""MoE offload: a decode step reads only the experts its tokens route to (memsim.workloads.moe).

Expected distinct experts for t independently, uniformly routed tokens with top-k of E:
E·(1−(1−k/E)^t). Mixtral-8x7B (E=8, k=2): batch 1 → 2 experts, batch 16 → 8·(1−0.75^16) = 7.92.
"""

from __future__ import annotations

import json

import pytest

from memsim.contracts.plan import Plan
from memsim.sim import simulate
from memsim.sim.engine import StepEngine
from memsim.sim.program import build_program
from memsim.workloads import build_trace, load_model, load_workload
from memsim.workloads.moe import read_fraction, routed_expert_bytes, touched_experts, weight_bytes_read
from memsim.workloads.spec import Workload
from memsim.workloads.trace import TokenCosts
from tests.conftest import make_system

# A small Mixtral-shaped config (model_type mixtral: 8 experts, top-2), sized so the simulation
# is quick; the same code path as the catalog's Mixtral-8x7B.
TINY_MOE = {"model_type": "mixtral", "hidden_size": 512, "intermediate_size": 1792,
            "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
            "vocab_size": 32000, "max_position_embeddings": 4096, "num_local_experts": 8,
            "num_experts_per_tok": 2, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


def test_expected_distinct_experts():
    assert touched_experts(8, 2, 1) == 2.0
    assert touched_experts(8, 2, 16) == pytest.approx(8 * (1 - 0.75**16))
    assert touched_experts(256, 8, 1) == pytest.approx(8.0)  # DeepSeek-V3, batch 1
    assert touched_experts(8, 2, 10**6) == 8.0
    mixtral = load_model("mixtral-8x7b")
    assert read_fraction(mixtral, 1) == 0.25
    # 32 layers × 8 experts × 3 matrices of 4096×14336, bf16
    assert routed_expert_bytes(mixtral, 2) == 32 * 8 * 3 * 4096 * 14336 * 2


def _trace(tmp_path, batch: int):
    config = tmp_path / "tiny-moe.json"
    config.write_text(json.dumps(TINY_MOE))
    w = Workload.model_validate({"name": f"moe-b{batch}", "model": str(config), "inference": {
        "batch_size": batch, "prompt_len": 64, "gen_len": 9, "dtype": "bf16"}})
    return build_trace(w)


def _decode_copies(trace, plan):
    system = make_system()
    engine = StepEngine(system, build_program(trace, system, plan), plan.prefetch_depth, False, trace.meta)
    engine.run()
    return engine.clock.copier.log


def test_batch_1_and_16_move_different_expert_bytes(tmp_path):
    t1, t16 = _trace(tmp_path, 1), _trace(tmp_path, 16)
    experts = t1.tensors["L{layer}.experts"].bytes
    assert experts == t16.tensors["L{layer}.experts"].bytes > 0
    assert t1.meta["routed_experts"]["read_fraction"]["decode"] == 0.25
    assert t16.meta["routed_experts"]["read_fraction"]["decode"] == pytest.approx(1 - 0.75**16)
    plan = Plan(placement={"weight": {"dram": 1.0}})  # every weight homed in DRAM: all streamed
    into = {b: sum(c[2] for c in _decode_copies(t, plan) if (c[0], c[1]) == ("dram", "hbm"))
            for b, t in ((1, t1), (16, t16))}
    dense = t1.tensors["L{layer}.weight"].bytes
    # per decode step and layer: the non-expert weights plus the touched share of the experts
    steps, layers = 8, 4
    expect1 = steps * layers * (dense + int(experts * 0.25))
    expect16 = steps * layers * (dense + int(experts * (1 - 0.75**16)))
    prefill_and_head = into[1] - expect1  # prefill (64+ tokens: every expert) and embed/head
    assert prefill_and_head == pytest.approx(into[16] - expect16, rel=1e-6)
    assert into[16] - into[1] == pytest.approx(expect16 - expect1, rel=1e-6)
    assert into[16] > 1.5 * into[1] - prefill_and_head


def test_simulated_step_reflects_the_routed_transfer(tmp_path):
    """Offloaded experts: batch 16's decode moves ~4× the expert bytes of batch 1, and the step
    time grows with it; with the experts resident in HBM the two steps are compute bound."""
    system = make_system()
    plan = Plan(placement={"weight": {"dram": 1.0}})
    r1 = simulate(system, _trace(tmp_path, 1), plan)
    r16 = simulate(system, _trace(tmp_path, 16), plan)
    link = next(k for k in r1.link_busy if "dram->hbm" in k or k.startswith("pcie"))
    moved1, moved16 = (r.link_busy[link] * r.step_time_s for r in (r1, r16))
    assert moved16 > 1.5 * moved1
    assert r16.step_time_s > 1.5 * r1.step_time_s


def test_serving_iterations_read_the_routed_experts():
    """Serving's per-token costs carry the routed-expert bytes: an iteration of n tokens reads the
    dense weights plus E·(1-(1-k/E)^n)/E of the experts (simulator and serving planner alike)."""
    tc = TokenCosts(**build_trace(load_workload("mixtral-8x7b-infer")).meta["token_costs"])
    assert tc.routed_expert_bytes == routed_expert_bytes(load_model("mixtral-8x7b"), 2)
    assert weight_bytes_read(tc, 1) == pytest.approx(tc.weight_bytes - 0.75 * tc.routed_expert_bytes)
    assert weight_bytes_read(tc, 16) > 1.5 * weight_bytes_read(tc, 1)
    assert weight_bytes_read(tc, 10**4) == tc.weight_bytes


def test_inference_planner_charges_the_routed_share(tmp_path):
    from memsim.planners.inference import routed_weight_bytes

    for batch, share in ((1, 0.25), (16, 1 - 0.75**16)):
        trace = _trace(tmp_path, batch)
        layer = trace.tensors["L{layer}.weight"].bytes + trace.tensors["L{layer}.experts"].bytes
        experts = trace.tensors["L{layer}.experts"].bytes
        streamed = routed_weight_bytes(trace, layer)
        assert streamed["decode"] == pytest.approx(layer - experts * (1 - share))
        assert streamed["prefill"] == pytest.approx(layer)  # 64+ tokens touch every expert


def test_accelerate_style_layer_fetch_streams_every_expert(tmp_path):
    """Plan.expert_fetch: layer (HF Accelerate's hook loads the whole decoder layer): batch 1 moves
    the same expert bytes as batch 16; the accelerate baseline plans it so."""
    from memsim.planners.baselines import accelerate

    plan = Plan(placement={"weight": {"dram": 1.0}}, expert_fetch="layer")
    into = [sum(c[2] for c in _decode_copies(_trace(tmp_path, b), plan) if (c[0], c[1]) == ("dram", "hbm"))
            for b in (1, 16)]
    assert into[0] == into[1]
    assert accelerate(make_system(), _trace(tmp_path, 1), {}).expert_fetch == "layer"
