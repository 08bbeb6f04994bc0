"""A round predicted at the rates the machine had then: the System scaled by a probe's drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from memsim.hardware import load_system
from memsim.sim import simulate
from memsim.validation.compare import _probe_reference
from memsim.validation.drift import Drift, scaled
from memsim.workloads import build_trace, load_workload

ROOT = Path(__file__).resolve().parents[1]
MACHINE = ROOT / "validation" / "results" / "vm-cpu-20261203-1330.machine.yaml"  # a calibrated VM
PROBED = ROOT / "validation" / "results" / "vm-cpu-20261203-1621.machine.yaml"  # with a probe level
WORKLOAD = ROOT / "validation" / "workloads" / "tiny-llama-train-s256.yaml"


@pytest.fixture(scope="module")
def system():
    return load_system(str(MACHINE))


@pytest.fixture(scope="module")
def trace():
    return build_trace(load_workload(str(WORKLOAD)))


def test_no_drift_is_the_calibrated_system(system):
    assert scaled(system, Drift()) is system


def test_scaling_touches_exactly_the_probed_rates(system):
    d = Drift(compute=0.5, read=2.0, write=0.8)
    s = scaled(system, d)
    cpu, cpu0 = s.compute["cpu"], system.compute["cpu"]
    assert cpu.achieved_flops["matmul/forward"] == pytest.approx(0.5 * cpu0.achieved_flops["matmul/forward"])
    assert cpu.peak_flops["fp32"] == pytest.approx(0.5 * cpu0.peak_flops["fp32"])
    for (x, y), (x0, y0) in zip(cpu.achieved_flops_by_rows["matmul/forward"].points,
                                cpu0.achieved_flops_by_rows["matmul/forward"].points, strict=True):
        assert x == x0 and y == pytest.approx(0.5 * y0)
    assert cpu.mem_bw == cpu0.mem_bw  # memory-bound kernels are not probed
    disk, disk0 = s.tiers["disk"], system.tiers["disk"]
    assert disk.read_bw == pytest.approx(2.0 * disk0.read_bw)
    assert disk.write_bw == pytest.approx(0.8 * disk0.write_bw)
    assert disk.read_size_curve.at(1 << 20) == pytest.approx(2.0 * disk0.read_size_curve.at(1 << 20))
    assert disk.concurrency_curve.at(2) == pytest.approx(1.4 * disk0.concurrency_curve.at(2))
    assert s.tiers["dram"] == system.tiers["dram"]
    (link,), (link0,) = s.links, system.links  # ends [dram, disk]: forward is a write
    assert link.bandwidth == pytest.approx(0.8 * link0.bandwidth)
    assert link.bandwidth_reverse == pytest.approx(2.0 * link0.bandwidth_reverse)


def test_a_slower_machine_predicts_a_slower_step_in_proportion(system, trace):
    """All-resident tiny-llama is compute-bound: half the FLOP rate, about twice the step
    (memory-bound ops, not scaled, keep it a little under)."""
    from memsim.contracts.plan import Plan

    base = simulate(system, trace, Plan()).step_time_s
    slow = simulate(scaled(system, Drift(compute=0.5)), trace, Plan()).step_time_s
    assert 1.8 * base < slow <= 2.0 * base + 1e-9
    # weights streamed from disk: faster reads shorten the step, never lengthen it
    disk = Plan(placement={"weight": {"disk": 1.0}})
    assert (simulate(scaled(system, Drift(read=2.0, write=2.0)), trace, disk).step_time_s
            <= simulate(system, trace, disk).step_time_s)


def test_no_probe_level_or_another_device_says_why(system):
    # vm-cpu-20261203-1330 was calibrated before memsim recorded a probe level
    ref, why = _probe_reference(system, "cpu")
    assert ref is None and "no probe level" in why
    probed = load_system(str(PROBED))
    ref, why = _probe_reference(probed, "cpu")
    assert why is None and ref["gemm_flops_per_s"] > 0 and ref["read_Bps"] > 0
    ref, why = _probe_reference(probed, "cuda")
    assert ref is None and "replayed on cuda" in why


def test_probe_reads_its_gemm_from_the_structured_fields_or_an_older_description(tmp_path):
    """The 1621 recording describes its GEMM only as "256x1024x4096 fp32"; newer ones also
    record gemm_shape and gemm_dtype. Both give the same probe."""
    from memsim.validation.backend import make_backend
    from memsim.validation.diskio import probe_mode
    from memsim.validation.drift import RateProbe

    older = dict(load_system(str(PROBED)).calibration["probe"], tensor_bytes=1 << 20, tensors=2)
    assert "gemm_shape" not in older
    newer = dict(older, gemm="described otherwise", gemm_shape=[64, 128, 256], gemm_dtype="fp32")
    backend = make_backend("cpu")
    with RateProbe(backend, tmp_path, probe_mode(tmp_path), older) as probe:
        assert probe.gemm.shape == (256, 1024, 4096) and probe.gemm.dtype == "fp32"
    with RateProbe(backend, tmp_path, probe_mode(tmp_path), newer) as probe:
        assert probe.gemm.shape == (64, 128, 256) and probe.gemm.dtype == "fp32"
