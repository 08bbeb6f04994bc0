"""GEMM rate by shape (tile and wave quantization, memsim.hardware.gemm) and the fabric a
single-rank trace's collectives cross when the system has no NVLink."""

from __future__ import annotations

import pytest

from memsim.hardware.catalog import load_system
from memsim.hardware.collectives import trace_comm_path
from memsim.hardware.gemm import gemm_utilisation, wave_utilisation
from memsim.sim import simulate
from memsim.workloads.trace import Block, Op, Tensor, Trace
from tests.conftest import make_system

CUBLAS = [(256, 128), (128, 256), (128, 128)]


def test_full_waves_lose_nothing_and_a_near_empty_last_wave_does():
    # 8 x 54 tiles of 256x128 = 432 = 4 full waves of 108 SMs
    assert wave_utilisation(2048, 6912, 108, CUBLAS) == pytest.approx(1.0)
    # 2048 x 2304: 256x128 gives 144 tiles (2 waves, 2/3 used); 128x128 gives 288 (3 waves)
    assert wave_utilisation(2048, 2304, 108, CUBLAS) == pytest.approx(288 / 324)
    # one tile more than a wave pays a second, almost empty one
    assert wave_utilisation(128, 128 * 109, 108, [(128, 128)]) == pytest.approx(109 / 216)
    # padding: a dimension just above a tile computes the padded tile
    assert wave_utilisation(2048, 129, 32, [(128, 128)]) == pytest.approx(129 / 256)


def test_few_rows_pad_to_the_mma_granule_not_to_a_full_tile():
    assert wave_utilisation(16, 128 * 108, 108, [(128, 128)]) == pytest.approx(1.0)
    assert wave_utilisation(8, 128 * 108, 108, [(128, 128)]) == pytest.approx(0.5)


def test_backward_combines_dgrad_and_wgrad_harmonically():
    u_d = wave_utilisation(2048, 1024, 108, CUBLAS)
    u_w = wave_utilisation(1024, 8192, 108, CUBLAS)
    assert gemm_utilisation((2048, 1024, 8192), "backward", 108, CUBLAS) == pytest.approx(
        2 / (1 / u_d + 1 / u_w))
    assert gemm_utilisation((2048, 1024, 8192), "forward", 108, CUBLAS) == pytest.approx(
        wave_utilisation(2048, 8192, 108, CUBLAS))


def test_catalog_gpu_rate_follows_shape_and_keeps_the_flat_rate_without_one():
    gpu = load_system("a100-80gb-sxm").gpu
    assert gpu.sm_count == 108
    flat = gpu.flops("fp16")
    assert gpu.rate("matmul", "forward", "fp16") == flat
    assert gpu.rate("matmul", "forward", "fp16", shape=(8192, 8192, 8192)) == pytest.approx(flat, rel=0.01)
    small = gpu.rate("matmul", "forward", "fp16", shape=(2048, 2304, 2304))
    assert 0.5 * flat < small < 0.95 * flat
    # attention and elementwise ops are not GEMMs of this model
    assert gpu.rate("attention", "forward", "fp16", shape=(2048, 2304, 2304)) == flat


def test_the_event_simulator_prices_a_matmul_at_its_shape():
    system = make_system(compute__gpu__sm_count=4, compute__gpu__gemm_tiles=[[128, 128]])
    tensors = {"x": Tensor("x", 10, "activation"), "y": Tensor("y", 10, "activation")}

    def step(shape):
        mm = Op("mm", "matmul", "forward", 1e12, 0, 0, ("x",), ("y",), shape=shape)
        return simulate(system, Trace("g", "inference", tensors, [Block("f", [mm])],
                                      {"data_parallel": 1})).step_time_s

    full = step((512, 64, 128))  # 4 tiles on 4 SMs: one full wave
    assert full == pytest.approx(1e12 / (100e12 * 0.5) + 10e-6)
    # 5 tiles on 4 SMs: two waves, 5/8 of the slots used
    assert step((640, 64, 128)) == pytest.approx(1e12 / (100e12 * 0.5 * 5 / 8) + 10e-6)


def comm_trace(nbytes: int, dp: int) -> Trace:
    tensors = {"g": Tensor("g", nbytes, "grad")}
    op = Op("allreduce", "comm", "backward", 0, nbytes, 0, ("g",), ())
    return Trace("c", "training", tensors, [Block("b", [op])], {"data_parallel": dp})


def test_without_nvlink_a_traces_collectives_cross_pcie_not_nothing():
    system = make_system(compute__gpu__count=2)  # GPUs on a 10 GB/s PCIe link, no NVLink
    assert system.nvlink is None
    path = trace_comm_path(system, 2)
    assert path.kind == "pcie" and path.rate == pytest.approx(10e9)
    r = simulate(system, comm_trace(10**9, 2))
    # sent + received bytes over a full-duplex 10 GB/s link: 0.05 s, not free
    assert r.step_time_s == pytest.approx(10**9 / (2 * 10e9), rel=0.01)


def test_with_nvlink_a_traces_collectives_use_it_and_across_nodes_the_network():
    dgx = load_system("h100-sxm")
    assert trace_comm_path(dgx, 8).kind == "nvlink"
    assert trace_comm_path(load_system("h100-sxm", ["hardware.nodes=2"]), 16).kind == "network"
    pcie_only = load_system("h100-sxm")
    pcie_only.__dict__["nvlink"] = None
    assert trace_comm_path(pcie_only, 8).rate < trace_comm_path(dgx, 8).rate / 5


def test_a_small_output_with_a_long_inner_dimension_splits_k_over_the_sms():
    # a narrow weight gradient: 256x768 output (12 tiles of 128x128) over 8,192 tokens
    plain = wave_utilisation(256, 768, 132, [(128, 128)])
    split = wave_utilisation(256, 768, 132, [(128, 128)], k=8192)
    assert plain == pytest.approx(12 / 132)
    assert split == pytest.approx(12 * 11 / 132)  # 11 slices of 744 deep: one full wave
    # a short inner dimension cannot be split below SPLIT_K_MIN
    assert wave_utilisation(256, 768, 132, [(128, 128)], k=512) == pytest.approx(24 / 132)
