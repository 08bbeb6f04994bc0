"""Planner invariants checked by the simulator on synthetic cases of growing size (Checkmate style).

* every baseline is feasible where it should be;
* the returned plan never simulates slower than the best feasible baseline;
* the simulator sees every tier within capacity for the returned plan;
* the same inputs give the same plan;
* nothing fits → ``Infeasible`` with a diagnosis computed from slack variables.
"""

from __future__ import annotations

import pytest

from memsim.api import plan
from memsim.errors import Infeasible, SpecError
from memsim.planners.synthetic import inference_trace, training_trace
from tests.conftest import small_system

pytest.importorskip("simpy")

TRAINING_CASES = [  # (hbm, dram, layers, hidden, seq): growing, from "fits whole" to "needs offload"
    ("16GiB", "64GiB", 4, 1024, 1024),
    ("16GiB", "64GiB", 12, 2048, 2048),
    ("8GiB", "64GiB", 24, 2048, 2048),
    ("16GiB", "256GiB", 32, 4096, 2048),
]


def _best_baseline(report):
    fits = [b for b in report.baselines if b.feasible]
    return min(fits, key=lambda b: b.step_time_s) if fits else None


def _within_capacity(result) -> bool:
    return all(result.peak_bytes[t] <= result.capacity_bytes[t] for t in result.capacity_bytes)


@pytest.mark.parametrize("hbm,dram,layers,hidden,seq", TRAINING_CASES)
def test_training_invariants(hbm, dram, layers, hidden, seq):
    system = small_system(hbm=hbm, dram=dram)
    trace = training_trace(layers, hidden, seq)
    report = plan(system, trace, time_limit=5)
    assert report.feasible and _within_capacity(report.result)
    best = _best_baseline(report)
    assert best is not None
    assert report.result.step_time_s <= best.step_time_s * (1 + 1e-9)
    names = {b.name: b for b in report.baselines}
    assert set(names) == {"resident", "checkpoint-full", "checkpoint-sqrt", "zero-offload", "zero-infinity",
                          "zero3-offload", "fsdp-offload"}
    # ZeRO-Offload keeps only bf16 weights (and activations) on the GPU: with a 64 GiB+ host it fits
    # whenever the weights and one layer's activations do
    weights = layers * 12 * hidden**2 * 2
    assert names["zero-offload"].feasible == (weights < 0.6 * system.tiers["hbm"].capacity)
    for b in report.baselines:
        if b.feasible:
            assert _within_capacity(b.result)
    states = layers * 12 * hidden**2 * 16
    if states < 0.5 * system.tiers["hbm"].capacity:
        assert names["resident"].feasible


@pytest.mark.parametrize("layers,hidden,batch", [(4, 1024, 4), (8, 2048, 12)])
def test_inference_invariants(layers, hidden, batch):
    system = small_system(hbm="512MiB")
    trace = inference_trace(layers, hidden, batch=batch, prompt=128, gen=8)
    report = plan(system, trace, time_limit=5)
    assert report.feasible and _within_capacity(report.result)
    best = _best_baseline(report)
    if best is not None:
        assert report.result.step_time_s <= best.step_time_s * (1 + 1e-9)
    assert {b.name for b in report.baselines} == {"resident", "flexgen", "accelerate", "zero-inference"}
    p = report.plan
    if p.num_gpu_batches:
        assert p.gpu_batch_size * p.num_gpu_batches == batch


def test_report_is_deterministic():
    system = small_system(hbm="8GiB")
    trace = training_trace(16, 2048, 2048)
    docs = []
    for _ in range(2):
        doc = plan(system, trace, time_limit=5).to_dict()
        for d in (doc["planner"], doc["plan"]["planner"]):
            d["solve_s"] = None
        docs.append(doc)
    assert docs[0] == docs[1]


def test_json_document_has_the_contract_keys():
    system = small_system()
    doc = plan(system, training_trace(4, 1024), time_limit=5).to_dict()
    for key in ("feasible", "step_time_s", "tokens_per_s", "peak_bytes", "capacity_bytes", "planner",
                "baselines", "mfu", "breakdown", "plan"):
        assert key in doc
    assert set(doc["planner"]) >= {"name", "status", "objective", "gap", "solve_s", "estimate_s"}
    assert all(set(b) >= {"name", "feasible", "step_time_s"} for b in doc["baselines"])
    assert doc["plan"]["fingerprint"] and doc["plan"]["workload"] == "synthetic-train"


def test_fallback_to_a_faster_baseline_is_said(tmp_path):
    # a preset that only allows recompute with a CPU optimizer: resident is faster and is returned
    preset = tmp_path / "slow-mip.yaml"
    preset.write_text("name: slow-mip\nkind: mip\n"
                      "options: {activations: [recompute], optimizer_device: [cpu]}\n")
    r = plan(small_system(), training_trace(4, 1024), str(preset), time_limit=5)
    assert r.plan.planner.status == "baseline:resident"
    assert any("resident" in n and "faster" in n for n in r.plan.notes)
    assert r.plan.placement == {} and r.plan.activations == "keep"


def test_infeasible_case_has_a_diagnosis():
    system = small_system(hbm="16GiB", dram="32GiB", ssd=None)
    with pytest.raises(Infeasible) as err:
        plan(system, training_trace(48, 4096, 1024), time_limit=5)
    d = err.value.diagnosis
    assert d.shortfalls and all(s.short_bytes > 0 for s in d.shortfalls)
    assert any("dram" in s for s in d.suggestions)
    assert err.value.payload["planner"]["status"] == "infeasible"


def test_planner_not_for_this_kind_is_a_spec_error():
    with pytest.raises(SpecError, match="flexgen"):
        plan(small_system(), training_trace(2, 512), "flexgen", time_limit=1)


def test_unknown_planner_did_you_mean():
    with pytest.raises(SpecError, match="zero-offload"):
        plan(small_system(), training_trace(2, 512), "zero-ofload", time_limit=1)


def test_cpu_only_system_plans_and_simulates():
    """The validation replay's machine: the CPU computes from DRAM, a disk is the slow tier."""
    from memsim.hardware.spec import System

    system = System.model_validate({
        "name": "cpu-box",
        "tiers": {"dram": {"kind": "dram", "capacity": "2GiB", "read_bw": "20GB/s", "write_bw": "20GB/s"},
                  "disk": {"kind": "ssd", "capacity": "64GiB", "read_bw": "2GB/s", "write_bw": "1GB/s"}},
        "links": [{"name": "nvme", "kind": "nvme", "ends": ["dram", "disk"], "bandwidth": "3GB/s"}],
        "compute": {"cpu": {"kind": "cpu", "memory": "dram", "peak_flops": {"fp32": "1TFLOP/s"},
                            "mem_bw": "20GB/s"}}})
    trace = training_trace(8, 1024, 512)  # ≈1.6 GB of model states: some must go to disk
    report = plan(system, trace, time_limit=5)
    assert report.feasible and _within_capacity(report.result)
    assert report.plan.optimizer_device == "gpu"  # the one compute unit
    assert report.plan.placement  # states partly on the disk
    assert all(t in ("dram", "disk") for split in report.plan.placement.values() for t in split)


def test_a_named_baseline_is_not_replaced():
    system = small_system(hbm="8GiB")
    trace = training_trace(24, 2048, 2048)
    r = plan(system, trace, "zero-offload", time_limit=5)  # fits, though the MIP would be faster
    assert r.plan.planner.name == "zero-offload" and r.plan.optimizer_device == "cpu"
    with pytest.raises(Infeasible):
        plan(system, trace, "resident", time_limit=5)  # does not fit: said, not swapped for another
