"""FlexGen's T4 VM disk: Google's published local-SSD limits, not FlexGen's fitted 0.473 GiB/s read.

The fitted read cannot carry FlexGen's own measured OPT-175B run (0.69 tokens/s streams ~800 GB
from disk per decode step); with Google's figures for 4 local NVMe SSDs the simulated run comes
near the measurement (hardware/t4-gcp.yaml, source [5])."""

from __future__ import annotations

import pytest

import memsim
from memsim.contracts.plan import Plan

MiB = 2**20
GiB = 2**30


def test_t4_gcp_disk_is_googles_four_device_local_ssd_limit():
    # Google Cloud "Local SSD performance", NVMe, 4 x 375 GB: 2,650 MiB/s read, 1,400 MiB/s write
    system = memsim.load_system("t4-gcp")
    ssd = system.tiers["ssd"]
    assert ssd.read_bw == 2650 * MiB and ssd.write_bw == 1400 * MiB
    nvme = next(x for x in system.links if set(x.ends) == {"dram", "ssd"})
    assert nvme.rate("ssd") == 2650 * MiB   # ssd -> dram
    assert nvme.rate("dram") == 1400 * MiB  # dram -> ssd
    assert ssd.read_bw > 5 * 0.473 * GiB    # FlexGen's fitted disk_to_cpu, five times slower


@pytest.mark.slow
def test_opt175b_flexgen_policy_comes_near_the_measured_throughput():
    """``--percent 0 50 0 0 0 100 --gpu-batch-size 32 --num-gpu-batches 8 --cpu``: measured
    0.69 tokens/s; at the fitted disk read memsim gave 0.151 (-78%)."""
    system = memsim.load_system("t4-gcp")
    trace = memsim.build_trace(memsim.load_workload("opt-175b-flexgen"))
    plan = Plan(placement={"weight": {"dram": 0.5, "ssd": 0.5}, "kv": {"ssd": 1.0},
                           "activation": {"dram": 1.0}},
                gpu_batch_size=32, num_gpu_batches=8, cpu_attention=True)
    r = memsim.simulate(system, trace, plan)
    assert r.feasible, r.oom
    assert abs(r.tokens_per_s / 0.69 - 1) < 0.35  # was -78%; generous bound
