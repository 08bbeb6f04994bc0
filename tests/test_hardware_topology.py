"""Routes, bottlenecks, copy times, shared ports, curves and per-rank views of a System."""

import math

import pytest

from memsim.hardware import System, Topology, load_system
from memsim.hardware.spec import PCIE_GBPS_PER_LANE, Curve, Link

GB = 1e9


def _system(tiers: dict, links: list, ports: dict | None = None) -> System:
    return System.model_validate({
        "name": "t", "tiers": tiers, "links": links, "ports": ports or {},
        "compute": {"gpu": {"kind": "gpu", "memory": "hbm", "peak_flops": {"bf16": "100TFLOP/s"},
                            "mem_bw": "1TB/s", "count": 4},
                    "cpu": {"kind": "cpu", "memory": "dram", "peak_flops": {"fp32": "4TFLOP/s"},
                            "mem_bw": "200GB/s"}}})


def _tier(kind, cap="100GiB", read="10GB/s", write="10GB/s", **extra):
    return {"kind": kind, "capacity": cap, "read_bw": read, "write_bw": write, **extra}


def test_ssd_reaches_hbm_through_dram():
    s = load_system("h100-sxm")
    route = Topology(s).route("nvme", "hbm")
    assert route.via == ["dram"]
    assert [h.link.name for h in route.hops] == ["pcie-nvme", "pcie-gpu"]
    assert [h.engine for h in route.hops] == ["pcie-nvme:nvme->dram", "pcie-gpu:dram->hbm"]
    back = Topology(s).route("hbm", "nvme")
    assert back.via == ["dram"]


def test_gpudirect_link_added_by_extends_changes_the_route(tmp_path):
    base = load_system("nvme-gen4")
    links = [link.model_dump(mode="json", exclude_none=True) for link in base.links]
    links.append({"name": "gds-nvme0", "kind": "pcie", "ends": ["nvme0", "hbm"], "pcie_gen": 4,
                  "lanes": 4, "efficiency": 0.9, "port": "pcie-switch"})
    import yaml

    path = tmp_path / "gds.yaml"
    path.write_text(yaml.safe_dump({"extends": "nvme-gen4", "name": "gds", "links": links}))
    gds = load_system(str(path))
    assert Topology(base).route("nvme0", "hbm").via == ["dram"]
    route = Topology(gds).route("nvme0", "hbm")
    assert route.via == [] and route.hops[0].link.name == "gds-nvme0"
    assert Topology(gds).has_direct("nvme0", "hbm") and not Topology(base).has_direct("nvme0", "hbm")
    assert Topology(gds).route("nvme1", "hbm").via == ["dram"]      # the other drive has no GDS link
    # one hop fewer: the direct copy skips the DRAM bounce's latency
    assert Topology(gds).copy_time("nvme0", "hbm", 1e9) < Topology(base).copy_time("nvme0", "hbm", 1e9)


def test_bottleneck_is_the_slowest_of_read_hops_port_and_write():
    s = load_system("h100-sxm")
    topo = Topology(s)
    pcie = PCIE_GBPS_PER_LANE[5] * 16 * 0.8
    assert topo.bottleneck("dram", "hbm") == pytest.approx(pcie)
    assert topo.bottleneck("nvme", "hbm") == pytest.approx(pcie)
    assert topo.bottleneck("hbm", "nvme") == pytest.approx(30.4e9)    # the drives' write rate
    assert topo.bottleneck("hbm", "hbm") == math.inf


def test_copy_time_is_latency_plus_bytes_over_bottleneck():
    s = load_system("h100-sxm")
    topo = Topology(s)
    nbytes = 10 * 2**30
    expected = 5e-6 + 100e-9 + nbytes / (PCIE_GBPS_PER_LANE[5] * 16 * 0.8)
    assert topo.copy_time("dram", "hbm", nbytes) == pytest.approx(expected, rel=1e-12)
    two_hop = 10e-6 + 5e-6 + 80e-6 + nbytes / topo.bottleneck("nvme", "hbm")
    assert topo.copy_time("nvme", "hbm", nbytes) == pytest.approx(two_hop, rel=1e-12)
    assert topo.copy_time("dram", "hbm", 0) == 0.0
    assert topo.copy_time("hbm", "hbm", nbytes) == 0.0


def test_shared_port_caps_every_link_behind_it():
    s = load_system("nvme-gen4", ["hardware.ports.pcie-switch.bandwidth=5GB/s"])
    topo = Topology(s)
    assert topo.bottleneck("nvme0", "dram") == pytest.approx(5e9)
    assert topo.bottleneck("nvme1", "dram") == pytest.approx(5e9)
    assert topo.bottleneck("dram", "hbm") > 5e9                      # not behind the switch
    unshared = Topology(load_system("nvme-gen4"))
    assert unshared.bottleneck("nvme0", "dram") == pytest.approx(6.5e9)   # the drive binds


def test_route_prefers_fewest_hops_then_widest():
    tiers = {"hbm": _tier("hbm"), "dram": _tier("dram", read="100GB/s", write="100GB/s"),
             "cxl": _tier("cxl", read="100GB/s", write="100GB/s"), "ssd": _tier("ssd")}
    links = [
        {"name": "gpu", "kind": "pcie", "ends": ["hbm", "dram"], "bandwidth": "50GB/s"},
        {"name": "gpu-cxl", "kind": "cxl", "ends": ["hbm", "cxl"], "bandwidth": "20GB/s"},
        {"name": "ssd-dram", "kind": "nvme", "ends": ["ssd", "dram"], "bandwidth": "5GB/s"},
        {"name": "ssd-cxl", "kind": "nvme", "ends": ["ssd", "cxl"], "bandwidth": "8GB/s"},
    ]
    topo = Topology(_system(tiers, links))
    route = topo.route("ssd", "hbm")   # two 2-hop paths: via dram (5 GB/s) or via cxl (8 GB/s)
    assert route.via == ["cxl"]
    assert topo.bottleneck("ssd", "hbm") == pytest.approx(8e9)


def test_parallel_links_take_the_widest_and_directions_differ():
    tiers = {"hbm": _tier("hbm", read="1TB/s", write="1TB/s"),
             "dram": _tier("dram", read="1TB/s", write="1TB/s")}
    links = [{"name": "slow", "kind": "pcie", "ends": ["hbm", "dram"], "bandwidth": "10GB/s"},
             {"name": "fast", "kind": "pcie", "ends": ["hbm", "dram"], "bandwidth": "5GB/s",
              "bandwidth_reverse": "30GB/s"}]
    topo = Topology(_system(tiers, links))
    assert topo.route("dram", "hbm").hops[0].link.name == "fast"
    assert topo.route("hbm", "dram").hops[0].link.name == "slow"
    assert topo.bottleneck("dram", "hbm") == 30e9


def test_pcie_bandwidth_derived_from_generation_and_lanes():
    link = Link(name="x", kind="pcie", ends=("a", "b"), pcie_gen=4, lanes=16, efficiency=0.5)
    assert link.bandwidth == pytest.approx(16 * 1.969e9)
    assert link.rate("a") == pytest.approx(8 * 1.969e9)


def test_curves_interpolate_log_linearly_and_clamp():
    curve = Curve(points=[(4096, 1e9), (65536, 5e9)])
    assert curve.at(1024) == 1e9 and curve.at(1 << 30) == 5e9
    assert curve.at(16384) == pytest.approx(3e9)          # the geometric midpoint
    assert curve.at(4096) == 1e9 and curve.at(65536) == 5e9


def test_tier_bandwidth_follows_its_curves():
    s = load_system("h100-sxm")
    nvme = s.tiers["nvme"]
    assert nvme.read_bandwidth(4096) == 49e9
    assert 49e9 < nvme.read_bandwidth(32768) < 56e9
    assert nvme.read_bandwidth(None) == nvme.read_bw == 56e9
    cxl = load_system("cxl-host").tiers["cxl"]
    assert cxl.read_bandwidth(streams=1) == 9e9
    assert cxl.read_bandwidth(streams=8) == 26e9
    assert cxl.write_bandwidth(streams=8) == 22e9        # capped by write_bw
    assert cxl.read_bandwidth(streams=64) == 17e9        # clamped at the last point


def test_rank_view_divides_host_tiers_only():
    s = load_system("h100-sxm")
    view = s.rank_view(8)
    assert view.name == "h100-sxm/8"
    assert view.tiers["hbm"] == s.tiers["hbm"]
    assert view.tiers["dram"].capacity == s.tiers["dram"].capacity // 8
    assert view.tiers["nvme"].read_bw == s.tiers["nvme"].read_bw / 8
    links = {x.name: x for x in view.links}
    assert links["pcie-gpu"].bandwidth == s.links[0].bandwidth            # per-GPU link kept whole
    assert links["pcie-nvme"].bandwidth == pytest.approx(s.links[1].bandwidth / 8)
    assert view.compute["cpu"].peak_flops["bf16"] == s.compute["cpu"].peak_flops["bf16"] / 8
    assert view.compute["gpu"] == s.compute["gpu"]
    assert s.tiers["dram"].capacity == 2 * 2**40                          # the original is untouched
    assert s.rank_view(64).name == "h100-sxm/8"                           # ranks fill 8 GPUs per node
    assert s.rank_view(1) is s


def test_device_view_divides_shared_ports():
    s = load_system("nvme-gen4")
    view = s.device_view(2)
    assert view.ports["pcie-switch"].bandwidth == s.ports["pcie-switch"].bandwidth / 2
    assert view.tiers["nvme0"].capacity == s.tiers["nvme0"].capacity // 2
    assert view.tiers["hbm"].capacity == s.tiers["hbm"].capacity


def test_per_device_override_keeps_a_host_tier_whole():
    tiers = {"hbm": _tier("hbm"), "dram": _tier("dram", per_device=True)}
    links = [{"name": "l", "kind": "pcie", "ends": ["hbm", "dram"], "bandwidth": "10GB/s"}]
    view = _system(tiers, links).device_view(4)
    assert view.tiers["dram"].capacity == 100 * 2**30
    assert view.links[0].bandwidth == 10e9


def test_route_to_an_unknown_tier_names_the_tiers():
    topo = Topology(load_system("laptop-flash"))
    with pytest.raises(KeyError, match=r"unknown tier 'flsh' \(did you mean 'flash'\?\)"):
        topo.route("flsh", "dram")


def test_route_between_islands_says_so():
    tiers = {"hbm": _tier("hbm"), "dram": _tier("dram"), "ssd": _tier("ssd")}
    links = [{"name": "l", "kind": "pcie", "ends": ["hbm", "dram"], "bandwidth": "10GB/s"}]
    topo = Topology(_system(tiers, links))     # built directly: load_system would refuse it
    with pytest.raises(ValueError, match="no link path joins tier 'ssd' to tier 'hbm'"):
        topo.route("ssd", "hbm")


def test_device_view_shares_the_cpus_measured_rates():
    tiers = {"hbm": _tier("hbm"), "dram": _tier("dram")}
    links = [{"name": "l", "kind": "pcie", "ends": ["hbm", "dram"], "bandwidth": "10GB/s"}]
    system = _system(tiers, links)
    system.compute["cpu"].achieved_flops = {"matmul": 1e12}
    system.compute["cpu"].achieved_flops_by_rows = {"matmul/forward": [[128, "0.8TFLOP/s"],
                                                                       [512, "1TFLOP/s"]]}
    view = system.rank_view(4)
    assert view.compute["cpu"].rate("matmul", "forward", "fp32") == 0.25e12
    assert view.compute["cpu"].rate("matmul", "forward", "fp32", rows=128) == 0.2e12
    assert system.compute["cpu"].achieved_flops["matmul"] == 1e12
    assert system.compute["cpu"].rate("matmul", "forward", "fp32", rows=512) == 1e12


def test_gemm_rate_by_rows_interpolates_and_falls_back():
    """A GEMM over few tokens runs below a big one's rate: the curve by rows is read log-linearly
    between its points and clamped outside them; ops without a shape (rows 0) or of another kind
    or phase fall back to achieved_flops."""
    unit = _system({"hbm": _tier("hbm"), "dram": _tier("dram")}, []).compute["cpu"]
    unit.achieved_flops = {"matmul": 9e10}
    unit.achieved_flops_by_rows = {"matmul/forward": [[128, 8e10], [512, 1e11]]}
    assert unit.rate("matmul", "forward", "fp32", rows=256) == pytest.approx(9e10)
    assert unit.rate("matmul", "forward", "fp32", rows=64) == 8e10
    assert unit.rate("matmul", "forward", "fp32", rows=4096) == 1e11
    assert unit.rate("matmul", "forward", "fp32") == 9e10
    assert unit.rate("matmul", "backward", "fp32", rows=128) == 9e10
    assert unit.op_time(8e10, 0, "fp32", "matmul", "forward", rows=128) == pytest.approx(1.0)


def test_routes_are_networkx_routes_on_every_catalog_system():
    """The breadth-first search that spares the networkx import picks networkx's route (fewest
    hops, then the widest bottleneck, the first of equals) for every pair of every catalog
    system's tiers, and the same connected groups."""
    import itertools

    import networkx as nx

    from memsim.specio import catalog_names

    pairs = 0
    for name in catalog_names("hardware"):
        system = load_system(name)
        topo = Topology(system)
        graph = topo.graph  # networkx's own graph of the system
        assert sorted(map(sorted, topo.components())) == sorted(
            map(sorted, nx.connected_components(graph)))
        for src, dst in itertools.permutations(system.tiers, 2):
            if not nx.has_path(graph, src, dst):
                with pytest.raises(ValueError, match="no link path"):
                    topo.route(src, dst)
                continue
            want = None
            for path in nx.all_shortest_paths(graph, src, dst):
                hops = [max((d["link"] for d in graph.get_edge_data(a, b).values()),
                            key=lambda link, a=a: link.rate(a)) for a, b in itertools.pairwise(path)]
                width = min(link.rate(a) for link, a in zip(hops, path, strict=False))
                if want is None or width > want[0]:
                    want = (width, [link.name for link in hops], path)
            got = topo.route(src, dst)
            assert [h.link.name for h in got.hops] == want[1], (name, src, dst)
            assert [got.src, *[h.dst for h in got.hops]] == want[2]
            pairs += 1
    assert pairs > 20
