"""ZeRO-Inference's host KV buffer is fp32: DRAM holds twice an fp16 cache (Plan.host_kv_bits)."""

from __future__ import annotations

import copy

import pytest

from memsim.contracts.plan import Plan
from memsim.errors import SpecError
from memsim.planners import load_preset, run_preset
from memsim.sim import simulate
from memsim.workloads import build_trace, load_workload
from tests.conftest import small_system

SMALL_INFER = ["inference.batch_size=4", "inference.prompt_len=128", "inference.gen_len=4"]


@pytest.fixture(scope="module")
def infer():
    return build_trace(load_workload("llama3-8b-infer", SMALL_INFER))


def _zero_inference(system, trace, **options) -> Plan:
    preset = load_preset("zero-inference")
    return run_preset(preset.model_copy(update={"options": {**preset.options, **options}}), system, trace)


def test_kv_offload_books_the_fp32_host_buffer(infer):
    system = small_system()
    plan = _zero_inference(system, infer, kv_offload=True)
    assert plan.host_kv_bits == 32 and plan.cpu_attention
    assert _zero_inference(system, infer).host_kv_bits is None  # no host KV without kv_offload
    fp16 = copy.deepcopy(plan)
    fp16.host_kv_bits = None
    wide, narrow = simulate(system, infer, plan), simulate(system, infer, fp16)
    assert wide.feasible and narrow.feasible
    kv = infer.bytes_by_class()["kv"]  # the fp16 cache, every layer's
    assert wide.peak_bytes["dram"] - narrow.peak_bytes["dram"] == pytest.approx(kv, rel=1e-3)
    assert wide.peak_bytes["hbm"] == narrow.peak_bytes["hbm"]
    assert wide.step_time_s == pytest.approx(narrow.step_time_s, rel=1e-9)  # a footprint only


def test_plan_refuses_a_bad_host_kv_bits():
    for bad in (0, "fp32", True, 1.5):
        with pytest.raises(SpecError) as info:
            Plan.from_dict({"host_kv_bits": bad})
        assert info.value.key == "host_kv_bits"
    assert Plan.from_dict({"host_kv_bits": 32}).host_kv_bits == 32


@pytest.mark.slow
def test_the_published_batches_are_the_largest_that_fit():
    """The README's best batches are those of a sweep: with the fp32 host KV, the next batch up
    of OPT-175B int4 (24 -> 32) and OPT-66B fp16 (40 -> 48) no longer fits the 252 GB host."""
    from pathlib import Path

    import yaml

    from memsim.studies.reproduce_cases import system_of, workload_of

    path = Path("studies/reproductions/zero-inference-a6000.yaml")
    spec = yaml.safe_load(path.read_text())
    system = system_of(spec["setup"], path)
    runs = {r["label"]: r for r in spec["runs"]}
    for label, batch in (("OPT-175B int4, batch 24, weights and KV on the CPU", 24),
                         ("OPT-66B, batch 40, weights and KV on the CPU", 40)):
        run = runs[label]
        fits = []
        for b in (batch, batch + 8):
            trace = build_trace(workload_of(run["workload"], path, [f"inference.batch_size={b}"]))
            result = simulate(system, trace, _zero_inference(system, trace, **run["options"]))
            fits.append(result.feasible)
            if not result.feasible:
                assert result.oom.tier == "dram"
        assert fits == [True, False], label
