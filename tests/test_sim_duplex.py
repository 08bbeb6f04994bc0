"""A half-duplex tier (SSD, flash) serves the requests of its readers and writers in turn; a
duplex one serves reads and writes at once."""

from __future__ import annotations

import pytest

from memsim.hardware.spec import System
from memsim.planners.flows import Flows
from memsim.sim.engine import Clock

GB = 10**9


def disk_system(duplex: bool | None) -> System:
    """Two DRAM tiers, each on its own link to one SSD (1 GB/s read, 2 GB/s write): the links
    are never the bottleneck, so only the disk's own sharing decides the times."""
    ssd = {"kind": "ssd", "capacity": "10TB", "read_bw": "1GB/s", "write_bw": "2GB/s"}
    if duplex is not None:
        ssd["duplex"] = duplex
    fast = {"capacity": "1TB", "read_bw": "1000GB/s", "write_bw": "1000GB/s"}
    return System.model_validate({
        "name": "disk", "tiers": {"ssd": ssd, "a": {"kind": "dram", **fast}, "b": {"kind": "dram", **fast}},
        "links": [{"name": "la", "kind": "nvme", "ends": ["a", "ssd"], "bandwidth": "100GB/s"},
                  {"name": "lb", "kind": "nvme", "ends": ["b", "ssd"], "bandwidth": "100GB/s"}],
        "compute": {"cpu": {"kind": "cpu", "memory": "a", "peak_flops": {"fp32": "1TFLOP/s"},
                            "mem_bw": "100GB/s"}},
    })


def arrivals(system: System, copies: list[tuple[str, str, int]]) -> list[float]:
    clock = Clock(system, timeline=False)
    done: dict[int, float] = {}
    for i, (src, dst, n) in enumerate(copies):
        clock.copier.copy(src, dst, n, f"c{i}", "test").callbacks.append(
            lambda _e, i=i: done.__setitem__(i, clock.env.now))
    clock.run()
    return [done[i] for i in range(len(copies))]


def test_ssd_reads_and_writes_take_turns_by_default():
    # read 1 GB (1 s alone) and write 2 GB (1 s alone) at once: the device serves their requests
    # in turn, so each moves 1 / (1/1 + 1/2) = 2/3 GB/s; the read is done at 1.5 s, and the write's
    # last 1 GB runs alone at 2 GB/s. The device is never idle: both together take the 2 s that
    # their times alone add up to.
    read_s, write_s = arrivals(disk_system(None), [("ssd", "a", GB), ("b", "ssd", 2 * GB)])
    assert read_s == pytest.approx(1.5, rel=1e-3) and write_s == pytest.approx(2.0, rel=1e-3)


def test_streams_of_one_direction_split_its_bandwidth():
    a, b = arrivals(disk_system(None), [("ssd", "a", GB), ("ssd", "b", GB)])
    assert a == pytest.approx(2.0, rel=1e-3) and b == pytest.approx(2.0, rel=1e-3)


def test_a_duplex_tier_reads_and_writes_at_once():
    read_s, write_s = arrivals(disk_system(True), [("ssd", "a", GB), ("b", "ssd", 2 * GB)])
    assert read_s == pytest.approx(1.0, rel=1e-3) and write_s == pytest.approx(1.0, rel=1e-3)


def test_a_copy_alone_runs_at_its_direction_bandwidth():
    assert arrivals(disk_system(None), [("ssd", "a", GB)]) == [pytest.approx(1.0, rel=1e-3)]
    assert arrivals(disk_system(None), [("a", "ssd", GB)]) == [pytest.approx(0.5, rel=1e-3)]


def test_the_planner_charges_a_half_duplex_disk_as_the_simulator_does():
    for duplex, shared in ((None, True), (True, False)):
        flows = Flows(disk_system(duplex))
        read = dict(flows.resources("ssd", "a"))
        write = dict(flows.resources("b", "ssd"))
        assert (set(read) & set(write) != set()) is shared
