"""Collective costs over NVLink / PCIe / network, against NCCL's ring bus-bandwidth formulas."""

from __future__ import annotations

import pytest

from memsim.errors import SpecError
from memsim.hardware.catalog import load_system
from memsim.hardware.collectives import check_cluster, collective_time, group_path
from memsim.workloads.parallel import Layout, groups


def test_dgx_fabrics_from_the_catalog():
    for name, nv, ib in (("h100-sxm", 450e9, 50e9), ("h200", 450e9, 50e9), ("a100-80gb-sxm", 300e9, 25e9)):
        s = load_system(name)
        assert (s.nvlink.bandwidth, s.network.bandwidth, s.nodes) == (nv, ib, 1)
    assert load_system("h100-sxm", ["hardware.nodes=1024"]).nodes == 1024


def test_all_reduce_inside_a_node_runs_on_nvlink():
    s = load_system("h100-sxm")
    got = collective_time(s, "all_reduce", 1e9, 8)
    assert got == pytest.approx(2 * 7 / 8 * 1e9 / (450e9 * 0.8) + 14 * 3e-6)


def test_a_group_spanning_nodes_is_limited_by_the_network():
    s = load_system("h100-sxm", ["hardware.nodes=4"])
    assert group_path(s, 4, stride=8).kind == "network"
    got = collective_time(s, "all_reduce", 1e9, 4, stride=8)
    assert got == pytest.approx(2 * 3 / 4 * 1e9 / (50e9 * 0.9) + 6 * 5e-6)
    assert collective_time(s, "all_gather", 1e9, 4, stride=8) == pytest.approx(
        3 / 4 * 1e9 / 45e9 + 3 * 5e-6)
    assert collective_time(s, "send_recv", 1e6, 2, stride=8) == pytest.approx(1e6 / 45e9 + 5e-6)


def test_without_nvlink_collectives_pay_pcie():
    s = load_system("h100-sxm")
    s.__dict__["nvlink"] = None
    path = group_path(s, 8)
    assert path.kind == "pcie" and path.rate == pytest.approx(16 * 3.938e9 * 0.8, rel=0.01)
    assert collective_time(s, "all_reduce", 1e9, 8) > 5 * collective_time(load_system("h100-sxm"),
                                                                          "all_reduce", 1e9, 8)


def test_megatron_rank_order_keeps_tp_inside_a_node():
    g = groups(Layout(tensor=8, pipeline=4, data=4))
    assert g["tensor"] == (8, 1) and g["data"] == (4, 8) and g["pipeline"] == (4, 32)
    s = load_system("h100-sxm", ["hardware.nodes=16"])
    assert group_path(s, *g["tensor"]).kind == "nvlink" and group_path(s, *g["data"]).kind == "network"


def test_too_few_gpus_names_the_key():
    check_cluster(load_system("h100-sxm", ["hardware.nodes=2"]), 16)
    with pytest.raises(SpecError) as err:
        check_cluster(load_system("h100-sxm"), 16)
    assert err.value.exit_code == 2 and "nodes" in str(err.value)
