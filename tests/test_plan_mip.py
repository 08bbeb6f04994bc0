"""The planner's own models (no simulator): solve, decode, determinism, limits, diagnosis."""

from __future__ import annotations

import pytest

from memsim.contracts.plan import Plan
from memsim.errors import SpecError
from memsim.hardware import load_system
from memsim.planners import mip
from memsim.planners.diagnose import diagnose
from memsim.planners.profile import build_profile
from memsim.planners.space import build_space
from memsim.planners.synthetic import inference_trace, training_trace
from memsim.planners.training import assign_layers
from tests.conftest import small_system

GiB = 2**30


def _used(plan: Plan, prof, tier: str, fast: str) -> float:
    """Bytes of weights/grads/optimizer states the plan homes on ``tier``."""
    return sum(prof.total[c] * plan.home(c, fast).get(tier, 0.0) for c in ("weight", "grad", "optimizer"))


@pytest.mark.parametrize("layers,hidden", [(2, 512), (8, 1024), (24, 2048), (48, 4096)])
def test_training_mip_fits_growing_cases(layers, hidden):
    system = small_system()
    trace = training_trace(layers, hidden, seq=2048)
    plan = mip.mip(system, trace, {}, time_limit=10)
    prof = build_profile(system, trace)
    assert plan.planner.status in ("optimal", "feasible")
    plan.check(system.tiers)
    # the model's own capacity: homed states never exceed a host tier
    for tier in ("dram", "nvme"):
        assert _used(plan, prof, tier, "hbm") <= system.tiers[tier].capacity * (1 + 1e-6)
    resident = sum(prof.total[c] for c in ("weight", "grad", "optimizer"))
    if resident + prof.layers * (prof.saved + prof.ckpt) < 12 * GiB:  # fits whole: nothing moves
        assert plan.placement == {} and plan.activations == "keep" and not plan.layer_policy
    else:
        assert plan.placement or plan.activations != "keep" or plan.layer_policy
    assert plan.planner.estimate_s > 0 and plan.planner.gap is not None and plan.planner.gap <= 0.01


def test_model_size_does_not_grow_with_depth():
    system = small_system()
    sizes = []
    for layers in (4, 64):
        prof = build_profile(system, training_trace(layers, 1024))
        space = build_space(system, {})
        m = mip.training._Model(system, prof, space, "gpu", "dram", False, 1.0)
        sizes.append((m.prob.numVariables(), m.prob.numConstraints()))
    assert sizes[0] == sizes[1]


def test_same_plan_twice():
    system = small_system(hbm="8GiB")
    trace = training_trace(16, 2048, seq=2048)
    a, b = (mip.mip(system, trace, {}, 10) for _ in range(2))
    for p in (a, b):
        p.planner.solve_s = None
    assert a.to_dict() == b.to_dict()


def test_recompute_forbidden_is_honoured():
    system = small_system(hbm="12GiB")
    trace = training_trace(16, 2048, seq=4096)
    plan = mip.mip(system, trace, {"activations": ["keep", "offload"]}, 10)
    assert "recompute" not in {plan.activations, *plan.layer_policy.values()}


def test_optimizer_on_cpu_moves_grads_and_states_off_the_gpu():
    system = small_system(hbm="8GiB")
    trace = training_trace(24, 2048)
    plan = mip.mip(system, trace, {"optimizer_device": "cpu"}, 10)
    assert plan.optimizer_device == "cpu"
    for cls in ("grad", "optimizer"):
        assert plan.home(cls, "hbm").get("hbm", 0.0) == 0.0


def test_unknown_option_names_key():
    with pytest.raises(SpecError, match="prefetch_depth"):
        mip.mip(small_system(), training_trace(2, 256), {"prefetch_dept": 2}, 1)


def test_assign_layers_counts_and_order():
    default, policy = assign_layers(10, {"offload": 3, "recompute": 5, "keep": 2})
    full = [policy.get(i, default) for i in range(10)]
    assert full.count("offload") == 3 and full.count("recompute") == 5 and full.count("keep") == 2
    assert full[-1] == "keep" and full[0] == "offload"  # last layers' backward comes first


def test_inference_search_enumerates_batch_splits():
    system = small_system(hbm="512MiB")
    trace = inference_trace(8, 2048, batch=12, prompt=256, gen=16)
    found = mip.search(system, trace, {}, 10)
    splits = {c.plan.num_gpu_batches for _, c in found.candidates if c.plan}
    assert splits <= {1, 2, 3, 4, 6, 12} and len(found.candidates) >= 6
    plan = found.best.plan
    assert plan.gpu_batch_size * plan.num_gpu_batches == 12
    weights = 8 * 12 * 2048 * 2048 * 2
    assert weights > 512 * 2**20  # the case forces offload
    assert plan.home("weight", "hbm").get("hbm", 0.0) < 1.0


def test_flexgen_is_inference_only():
    with pytest.raises(mip.NotApplicable):
        mip.flexgen(small_system(), training_trace(2, 256), {}, 1)


def test_time_limit_is_reported():
    system = small_system(hbm="8GiB")
    plan = mip.mip(system, training_trace(32, 4096), {}, time_limit=0.05)
    assert plan.planner.solve_s is not None and plan.planner.status in ("optimal", "feasible", "time_limit")


def test_diagnosis_shortfall_and_single_changes():
    # 48 layers × 4096² × 12 × 16 B ≈ 144 GiB of model states; 16 GiB HBM + 32 GiB DRAM, no NVMe
    system = small_system(hbm="16GiB", dram="32GiB", ssd=None)
    trace = training_trace(48, 4096, seq=1024)
    found = mip.search(system, trace, {}, 5)
    assert found.best is None
    d = diagnose(system, trace, {}, 5)
    short = {s.tier: s.short_bytes for s in d.shortfalls}
    states = build_profile(system, trace).layer_state * 48
    assert short and sum(short.values()) >= states - 48 * GiB - 1
    assert any("dram" in s for s in d.suggestions)
    assert any("NVMe" in s for s in d.suggestions) and any("CXL" in s for s in d.suggestions)
    # the suggested DRAM size really fits
    add = next(s for s in d.suggestions if "dram" in s)
    gib = float(add.split()[1].removesuffix("GiB"))
    bigger = small_system(hbm="16GiB", dram=f"{32 + gib:.0f}GiB", ssd=None)
    assert mip.search(bigger, trace, {}, 5).best is not None


def test_catalog_system_plans_on_rank_view():
    system = load_system("h100-sxm")
    trace = training_trace(8, 2048)
    trace.meta["data_parallel"] = 8
    view = mip.planning_view(system, trace)
    assert view.tiers["dram"].capacity == system.tiers["dram"].capacity // 8
    assert mip.mip(system, trace, {}, 5).planner.status == "optimal"


def test_cheapest_upgrade_grows_only_what_the_platform_takes():
    from memsim.hardware.spec import System
    from memsim.planners.upgrade import cheapest_upgrade

    # 32 layers of 4096: ~6.4B parameters, ~100 GiB of model states: DRAM (64 GiB) spills to NVMe
    data = small_system(hbm="16GiB", dram="64GiB").model_dump()
    data["tiers"]["dram"]["max_capacity"] = 512 * 2**30
    system = System.model_validate(data)
    trace = training_trace(32, 4096, 2048)
    base = mip.search(system, trace, {}, 5).best.estimate_s
    tokens = trace.meta["tokens_per_step"]
    up = cheapest_upgrade(system, trace, 2 * tokens / base)  # twice today's throughput
    assert list(up.add_bytes) == ["dram"] and 0 < up.add_bytes["dram"] <= 448 * 2**30
    assert up.cost_usd > 0 and up.estimate_s <= base / 2 * (1 + 1e-6)
    assert up.system.tiers["hbm"].capacity == system.tiers["hbm"].capacity  # HBM never grows
    faster = mip.search(up.system, trace, {}, 5).best
    assert faster.estimate_s <= base / 2 * (1 + 1e-3)
    none = cheapest_upgrade(system, trace, 0.5 * tokens / base)  # already met: buys nothing
    assert none.add_bytes == {} and none.cost_usd == 0
    # beyond what 512 GiB of DRAM gives, and a machine whose tiers cannot grow: a sentence, no HBM
    assert "HBM never grows" in cheapest_upgrade(system, trace, 1e3 * tokens / base)
    fixed = small_system(hbm="16GiB", dram="64GiB")
    assert "no tier of test-box can grow" in cheapest_upgrade(fixed, trace, 2 * tokens / base)


def test_serving_model_sizes_the_kv_pool_and_swap_budget():
    from memsim.planners.synthetic import serving_trace

    system = small_system(hbm="4GiB", dram="64GiB")
    trace = serving_trace(8, 2048, requests=40)
    found = mip.search(system, trace, {}, 5)
    plan = found.best.plan
    assert plan.serving is not None and plan.serving.max_num_seqs in build_space(system, {}).max_num_seqs
    assert 0 < plan.serving.swap_bytes <= system.tiers["dram"].capacity
    assert plan.serving.preempt == "swap" and plan.serving.swap_tier == "dram"
    # a pool for max_num_seqs sequences of prompt + output tokens fits beside the resident weights
    tc = trace.meta["token_costs"]
    pool = plan.serving.max_num_seqs * (256 + 64) * tc["kv_bytes_per_token"]
    gpu_weights = tc["weight_bytes"] * plan.home("weight", "hbm").get("hbm", 0.0)
    assert gpu_weights + pool <= system.tiers["hbm"].capacity
    tiny = small_system(hbm="1GiB")  # weights (~805 MB) barely fit: some stream from DRAM
    assert mip.search(tiny, trace, {}, 5).best.plan.home("weight", "hbm").get("hbm", 0.0) < 1.0


def test_diagnosis_suggests_a_smaller_micro_batch_when_activations_overflow():
    # 8 sequences of 4096 tokens: the logits and one layer in flight overflow a 4 GiB GPU even with
    # every layer recomputed; the model states (≈1.9 GiB with embeddings) fit in DRAM
    system = small_system(hbm="4GiB", dram="16GiB", ssd=None)
    trace = training_trace(8, 1024, 4096, batch=8)
    d = diagnose(system, trace, {}, 5)
    assert [s.tier for s in d.shortfalls] == ["hbm"]
    assert any("micro-batch of 4 (now 8)" in s for s in d.suggestions)
    trace.meta["micro_batch"] = 4
    half = training_trace(8, 1024, 4096, batch=4)
    assert mip.search(system, half, {}, 5).best is not None  # the suggestion really fits


def test_flows_charge_each_copy_at_its_own_rate():
    from memsim.planners.flows import Flows

    system = small_system()  # pcie 25 GB/s hbm↔dram, nvme 8 GB/s dram↔nvme (7 GB/s read)
    fl = Flows(system)
    fl.add("dram", "hbm", 25e9)  # 1 s on the PCIe engine
    fl.add("nvme", "hbm", 7e9)  # multi-hop: holds the PCIe engine at the route's 8 GB/s: 0.875 s
    loads = {name: sum(terms) for name, _, terms in fl.loads()}
    assert loads["pcie:dram->hbm"] == pytest.approx(1.0 + 7 / 8)
    assert loads["nvme:nvme->dram"] == pytest.approx(7 / 8)
    assert loads["io:nvme"] == pytest.approx(1.0)  # 7 GB at the drive's 7 GB/s (one half-duplex device)
