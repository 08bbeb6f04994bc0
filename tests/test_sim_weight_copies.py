"""Per-copy cost (Plan.weight_copies): ZeRO-3 fetches each parameter tensor with its own copy, and
every copy pays its route's per-transfer latency, so a layer fetched as many small copies takes
longer than the same bytes in one (t = copies x latency + bytes / rate)."""

from __future__ import annotations

import copy

import pytest

from memsim.contracts.plan import Plan
from memsim.errors import SpecError
from memsim.hardware import load_system
from memsim.planners import load_preset, run_preset
from memsim.sim import simulate
from memsim.sim.engine import Clock
from memsim.workloads import build_trace, load_workload
from memsim.workloads.models import load_model
from memsim.workloads.param_tensors import fetched_copies, layer_param_tensors, threshold_for
from tests.conftest import small_system

SMALL = ["inference.batch_size=4", "inference.prompt_len=128", "inference.gen_len=4"]


def _slow_link(latency: str = "50us"):
    system = small_system(hbm="8GiB")
    links = [link.model_copy(update={"latency": float(latency[:-2]) * 1e-6})
             for link in system.links]
    return system.model_copy(update={"links": links})


def test_copies_add_one_latency_each():
    """Alone on the link: n copies of B bytes take n x latency + B / rate."""
    system = _slow_link()
    times = {}
    for n in (1, 10, 100):
        clock = Clock(system, timeline=False)
        clock.copier.copy("dram", "hbm", 25_000_000, "w", "test", copies=n)
        clock.env.run()
        times[n] = clock.env.now
    assert times[1] == pytest.approx(50e-6 + 1e-3, rel=1e-6)  # 25 MB at 25 GB/s
    assert times[100] - times[10] == pytest.approx(90 * 50e-6, rel=1e-6)


def test_more_smaller_copies_cost_more_in_a_step():
    """The same plan, weights fetched as 1, 16 and 400 copies a layer: slower with each, by
    about the added latencies of the copy-bound step (never faster)."""
    system = _slow_link()
    trace = build_trace(load_workload("llama3-8b-infer", SMALL))
    base = Plan(placement={"weight": {"dram": 1.0}}, prefetch_depth=1)
    steps = {}
    for n in (1, 16, 400):
        plan = copy.deepcopy(base)
        plan.weight_copies = n
        steps[n] = simulate(system, trace, plan).step_time_s
    assert steps[1] < steps[16] < steps[400]
    layers, passes = trace.meta["layers"], 1 + trace.meta["gen_len"] - 1
    added = (400 - 16) * 50e-6 * layers * passes  # the copy-bound bound on the extra time
    assert 0.5 * added < steps[400] - steps[16] <= 1.01 * added


def test_layer_param_tensors_add_up_to_the_layer():
    """One entry per HF parameter tensor, summing to the layer's parameters."""
    opt = load_model("opt-30b")
    tensors = layer_param_tensors(opt)
    assert sum(tensors) == opt.layer_params
    assert len(tensors) == 16  # q, k, v, o, fc1, fc2 with biases; two LayerNorms (weight, bias)
    llama = load_model("llama-2-70b")
    assert len(layer_param_tensors(llama)) == 9  # 7 matrices, 2 RMSNorm weights
    assert sum(layer_param_tensors(llama)) == llama.layer_params
    assert layer_param_tensors(load_model("mixtral-8x7b")) is None  # MoE: one copy a layer


def test_persistence_threshold_keeps_small_tensors_resident():
    meta = {"layer_param_tensors": layer_param_tensors(load_model("opt-30b")), "hidden": 7168}
    assert fetched_copies(meta, 0) == 16  # FlexGen's hf_opt.py: everything fetched
    assert fetched_copies(meta, 7168) == 7  # run_model.py: biases and norms of h persist
    assert fetched_copies({}, 0) is None
    assert fetched_copies(meta, threshold_for(meta, 7)) == 7
    assert threshold_for(meta, 3) is None


def test_zero_inference_plans_one_copy_per_fetched_tensor():
    system = small_system()
    trace = build_trace(load_workload("llama3-8b-infer", SMALL))
    preset = load_preset("zero-inference")
    assert run_preset(preset, system, trace).weight_copies == 7  # 9 tensors, 2 norms persist
    everything = preset.model_copy(update={"options": {**preset.options,
                                                       "param_persistence_threshold": 0}})
    assert run_preset(everything, system, trace).weight_copies == 9
    bad = preset.model_copy(update={"options": {**preset.options,
                                                "param_persistence_threshold": "all"}})
    with pytest.raises(SpecError, match="number of elements"):
        run_preset(bad, system, trace)


def test_t4_link_latency_reproduces_the_size_sweep():
    """t4-gcp.yaml [6]: a 7.7 us per-copy latency on the sweep's 12.0 GB/s asymptote gives its
    pinned H2D rates within 5% from 4 KiB to 1 MiB."""
    link = next(lk for lk in load_system("t4-gcp").links if lk.name == "pcie-gpu")
    measured = {4096: 0.522e9, 65536: 4.810e9, 262144: 8.875e9, 1048576: 11.021e9}
    for size, rate in measured.items():
        assert size / (link.latency + size / 11.987e9) == pytest.approx(rate, rel=0.05)


def test_plan_refuses_bad_weight_copies():
    assert Plan.from_dict({"weight_copies": 16}).weight_copies == 16
    for bad in (0, 2.5, True):
        with pytest.raises(SpecError) as err:
            Plan.from_dict({"weight_copies": bad}, file="p.yaml")
        assert err.value.key == "weight_copies"
