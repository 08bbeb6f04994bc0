"""With one GPU batch, staging is a ring of layer slots: what a tier holds changes only at
program points, so the peak is the plan's, not the outcome of two copies racing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from memsim.contracts.plan import Plan
from memsim.hardware.spec import System
from memsim.sim import simulate
from memsim.workloads import build_trace, load_workload

WORKLOAD = Path(__file__).parents[1] / "validation" / "workloads" / "tiny-llama-train-s256.yaml"
ALL_DISK = Plan(placement={"weight": {"disk": 1.0}, "grad": {"disk": 1.0}, "optimizer": {"disk": 1.0}},
                activations="recompute")


def system(read: str, write: str) -> System:
    return System.model_validate({
        "name": "ring",
        "tiers": {"dram": {"kind": "dram", "capacity": "24GB", "read_bw": "30GB/s", "write_bw": "30GB/s"},
                  "disk": {"kind": "ssd", "capacity": "100GB", "read_bw": read, "write_bw": write,
                           "duplex": True}},
        "links": [{"name": "io", "kind": "nvme", "ends": ["dram", "disk"], "bandwidth": "100GB/s"}],
        "compute": {"cpu": {"kind": "cpu", "memory": "dram", "peak_flops": {"fp32": "100GFLOP/s"},
                            "mem_bw": "30GB/s"}},
    })


@pytest.fixture(scope="module")
def trace():
    return build_trace(load_workload(WORKLOAD))


def test_the_peak_does_not_depend_on_which_copy_lands_first(trace):
    # the optimizer step streams every layer's states in and writes them back: at these rates
    # the write-back of layer k-1 lands before, with, or after layer k+1's fetches start
    runs = [simulate(system(read, write), trace, ALL_DISK)
            for read, write in (("1.3GB/s", "2.4GB/s"), ("2GB/s", "0.5GB/s"), ("0.5GB/s", "4GB/s"))]
    times = {round(r.step_time_s, 6) for r in runs}
    peaks = {r.peak_bytes["dram"] for r in runs}
    assert len(times) == 3  # the rates change the time...
    assert len(peaks) == 1  # ...never the memory


def test_the_ring_holds_the_layers_written_behind(trace):
    # depth 0 drains a layer's write-backs before the next starts; depth 1 keeps one more layer
    # in flight ahead and one more behind: the optimizer phase's peak grows by more than the one
    # layer read ahead (the layer written behind is held too; counted to its landing, the peak
    # grew by a third of a layer) and by at most two layers' states
    shallow = simulate(system("1.3GB/s", "2.4GB/s"), trace, replace(ALL_DISK, prefetch_depth=0))
    deep = simulate(system("1.3GB/s", "2.4GB/s"), trace, ALL_DISK)
    layer = sum(t.bytes for n, t in trace.tensors.items()
                if n.startswith("L{layer}") and t.cls in ("weight", "grad", "optimizer"))
    assert deep.peak_bytes["dram"] > shallow.peak_bytes["dram"]
    assert deep.peak_bytes["dram"] - shallow.peak_bytes["dram"] > layer
    assert deep.peak_bytes["dram"] - shallow.peak_bytes["dram"] <= 2 * layer
