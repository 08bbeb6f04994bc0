"""Non-tensor GPU memory (memsim.hardware.overheads): its own lines in the peak, and OOMs it causes."""

from __future__ import annotations

from pathlib import Path

import pytest

import memsim
from memsim.hardware.overheads import reserved_lines, rounding_waste, runtime_data
from memsim.sim import simulate
from memsim.workloads import build_trace
from tests.test_cli_json_subprocess import memsim as run

ROOT = Path(__file__).resolve().parent.parent
MiB = 2**20


def test_simulate_json_reports_each_line_inside_the_peak():
    code, doc, err = run("simulate", "-H", "h100-sxm", "-w", "llama3-8b-infer")
    assert code == 0, err
    lines = doc["reserved_bytes"]["hbm"]
    assert lines["cuda_context"] == 512 * MiB
    assert lines["cublas_workspace"] == 2 * 32 * MiB  # Hopper: 32 MiB per stream, two streams
    assert "nccl" not in lines  # one rank: no peers, no NCCL buffers
    assert 0 < lines["allocator"] < 0.05 * doc["peak_bytes"]["hbm"]
    assert set(doc["reserved_bytes"]) == {"hbm"}  # host tiers hold none
    code, pure, err = run("simulate", "-H", "h100-sxm", "-w", "llama3-8b-infer",
                          "--set", "hardware.overheads=false")
    assert code == 0, err
    assert pure["reserved_bytes"] == {}
    assert doc["peak_bytes"]["hbm"] - pure["peak_bytes"]["hbm"] == sum(lines.values())


@pytest.mark.slow
def test_a_case_that_fit_by_less_than_the_overhead_now_exits_3_naming_it():
    code, pure, err = run("simulate", "-H", "h100-sxm", "-w", "llama3-8b-infer",
                          "--set", "hardware.overheads=false")
    assert code == 0, err
    cap = f"hardware.tiers.hbm.capacity={pure['peak_bytes']['hbm'] + 256 * MiB}"
    code, doc, err = run("simulate", "-H", "h100-sxm", "-w", "llama3-8b-infer", "--set", cap,
                         "--set", "hardware.overheads=false")
    assert code == 0, err  # tensors alone fit, with 256 MiB to spare
    code, doc, err = run("simulate", "-H", "h100-sxm", "-w", "llama3-8b-infer", "--set", cap)
    assert code == 3
    assert "cuda_context" in err + str(doc)


def test_nccl_buffers_only_with_peers():
    system = memsim.load_system("h100-sxm")
    assert "nccl" not in reserved_lines(system, {"data_parallel": 1})["hbm"]
    nccl = runtime_data()["nccl"]
    assert reserved_lines(system, {"data_parallel": 8})["hbm"]["nccl"] == \
        4 * MiB * nccl["channels"] * nccl["peers"]


@pytest.mark.parametrize(("name", "per_stream"), [("h100-sxm", 32 * MiB), ("a100-80gb-sxm", 4 * MiB),
                                                  ("t4-gcp", 1 * MiB)])
def test_cublas_workspace_follows_pytorchs_rule(name, per_stream):
    system = memsim.load_system(name, ["hardware.overheads=true"])
    assert reserved_lines(system)[system.gpu.memory]["cublas_workspace"] == 2 * per_stream


def test_allocator_rounds_small_requests_to_512_bytes_and_large_to_2_mib():
    data = runtime_data()["allocator"]
    assert rounding_waste([1, 512, MiB + 1, 4 * MiB], data) == 511 + 0 + (MiB - 1) + 0


def test_cpu_only_systems_get_nothing_and_predict_the_same():
    machines = sorted((ROOT / "validation" / "results").glob("*.machine.yaml"))
    assert machines
    workload = ROOT / "validation" / "workloads" / "tiny-llama-train-s128.yaml"
    trace = build_trace(memsim.load_workload(workload))
    for path in machines:
        system = memsim.load_system(path)
        assert system.overheads and reserved_lines(system, {"data_parallel": 4}) == {}
    system = memsim.load_system(machines[0])
    on = simulate(system, trace).to_dict()
    off = simulate(memsim.load_system(machines[0], ["hardware.overheads=false"]), trace).to_dict()
    on.pop("wall_s"), off.pop("wall_s")
    assert on == off and on["reserved_bytes"] == {}


@pytest.mark.slow
def test_plan_json_carries_the_lines_and_its_plan_fits_with_them():
    code, doc, err = run("plan", "-H", "h100-sxm", "-w", "llama3-8b-infer")
    assert code == 0, err
    lines = doc["reserved_bytes"]["hbm"]
    assert lines["cuda_context"] == 512 * MiB and lines["cublas_workspace"] == 64 * MiB
    assert doc["peak_bytes"]["hbm"] <= doc["capacity_bytes"]["hbm"]
