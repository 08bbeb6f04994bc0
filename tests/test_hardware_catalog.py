"""Every catalog machine loads, is connected, renders, and carries the numbers its sources give."""

import json

import pytest
from typer.testing import CliRunner

from memsim.cli import app
from memsim.hardware import Topology, list_systems, load_system
from memsim.specio import catalog_names

NAMES = catalog_names("hardware")
GiB = 2**30
MiB = 2**20
runner = CliRunner()


def test_catalog_has_the_required_systems():
    required = {"h100-sxm", "h200", "a100-80gb-sxm", "a100-80gb-pcie", "l4", "t4-gcp", "gh200",
                "rtx4090-workstation", "cxl-host", "nvme-gen4", "nvme-gen5", "laptop-flash"}
    assert required <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_entry_loads_connected_with_sources(name):
    system = load_system(name)
    assert system.name == name
    assert system.description and "\n" not in system.description
    assert system.sources, "every catalog entry names its sources"
    assert len(Topology(system).components()) == 1
    # the fast tier reaches every other tier, and a copy in either direction has a positive rate
    topo = Topology(system)
    for tier in system.tiers:
        if tier != system.fast_tier:
            assert topo.bottleneck(tier, system.fast_tier) > 0
            assert topo.bottleneck(system.fast_tier, tier) > 0


@pytest.mark.parametrize("name", NAMES)
def test_show_renders_each_entry(name):
    result = runner.invoke(app, ["hardware", "show", name])
    assert result.exit_code == 0, result.output
    assert name in result.stdout
    for tier in load_system(name).tiers:
        assert tier in result.stdout


def test_show_json_is_one_document_with_routes():
    result = runner.invoke(app, ["hardware", "show", "nvme-gen4", "--json"])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["name"] == "nvme-gen4"
    assert doc["routes_to_hbm"]["nvme0"]["via"] == ["dram"]
    assert doc["ports"]["pcie-switch"]["bandwidth"] == 31.5e9


def test_list_json_covers_all_tier_kinds():
    result = runner.invoke(app, ["hardware", "list", "--json"])
    assert result.exit_code == 0
    systems = json.loads(result.stdout)["systems"]
    assert len(systems) >= 11
    kinds = set().union(*(s["tier_kinds"] for s in systems))
    assert kinds == {"hbm", "dram", "cxl", "ssd", "flash"}
    assert [s["name"] for s in systems] == sorted(s["name"] for s in systems)


def test_list_table_renders():
    result = runner.invoke(app, ["hardware", "list"])
    assert result.exit_code == 0
    assert "t4-gcp" in result.stdout and "laptop-flash" in result.stdout


def test_list_systems_is_deterministic():
    first = [s.model_dump(mode="json") for s in list_systems()]
    assert first == [s.model_dump(mode="json") for s in list_systems()]


# -- facts from the sources, checked where a typo would matter ----------------------------------


def test_t4_gcp_has_flexgens_fitted_constants():
    s = load_system("t4-gcp")
    link = next(x for x in s.links if set(x.ends) == {"hbm", "dram"})
    assert link.rate("dram") == pytest.approx(12.89 * GiB)      # cpu -> gpu, GiB/s in FlexGen
    assert link.rate("hbm") == pytest.approx(4.82 * GiB)        # gpu -> cpu (hidden)
    gpu = s.compute["gpu"]
    assert gpu.rate("matmul", "prefill", "fp16") == 21.24e12   # T = 1e12 in FlexGen
    assert gpu.rate("matmul", "decode", "fp16") == 4.3e12
    assert gpu.rate("attention", "prefill", "fp16") == 9.97e12
    assert gpu.rate("attention", "decode", "fp16") == 0.079e12
    assert s.compute["cpu"].rate("attention", "decode", "fp32") == 0.0123e12
    assert s.compute["cpu"].rate("matmul", "prefill", "fp32") == 0.0123e12
    assert s.tiers["dram"].capacity == 208 * GiB
    assert s.tiers["ssd"].capacity == 1_500_000_000_000
    topo = Topology(s)
    assert topo.bottleneck("dram", "hbm") == pytest.approx(12.89 * GiB)
    assert topo.bottleneck("ssd", "hbm") == pytest.approx(2650 * MiB)  # the disk, not PCIe


def test_h200_extends_the_dgx_host():
    h100, h200 = load_system("h100-sxm"), load_system("h200")
    assert h200.tiers["hbm"].capacity == 141 * GiB
    assert h200.tiers["hbm"].read_bw == 4.8e12
    assert h200.compute["gpu"].peak_flops == h100.compute["gpu"].peak_flops
    assert h200.tiers["dram"] == h100.tiers["dram"]


def test_gh200_c2c_link():
    s = load_system("gh200")
    (link,) = s.links
    assert link.kind == "c2c" and link.bandwidth == 450e9
    assert s.tiers["hbm"].capacity == 96 * GiB and s.tiers["dram"].capacity == 480 * GiB


def test_cxl_host_curves_fall_with_concurrency_and_cards_share_a_switch():
    s = load_system("cxl-host")
    cards = s.tiers_of("cxl")
    assert cards == ["cxl", "cxl1"]
    for name in cards:
        tier = s.tiers[name]
        peak = max(tier.read_bandwidth(streams=n) for n in range(1, 33))
        assert tier.read_bandwidth(streams=32) < peak                    # contention
        assert tier.read_bandwidth(streams=1) < tier.read_bandwidth(streams=4)
    card_links = [x for x in s.links if set(x.ends) & set(cards)]
    assert {x.kind for x in card_links} == {"cxl"}
    assert {x.port for x in card_links} == {"cxl-switch"}


@pytest.mark.parametrize("name", ["nvme-gen4", "nvme-gen5"])
def test_nvme_servers_have_two_drives_behind_one_switch(name):
    s = load_system(name)
    drives = s.tiers_of("ssd")
    assert drives == ["nvme0", "nvme1"]
    ports = {x.port for x in s.links if set(x.ends) & set(drives)}
    assert ports == {"pcie-switch"}
    for d in drives:
        tier = s.tiers[d]
        assert tier.read_size_curve is not None
        assert tier.read_bandwidth(4096) < tier.read_bandwidth(1 << 20) == tier.read_bw


def test_gen5_drives_are_faster_than_gen4():
    g4, g5 = load_system("nvme-gen4"), load_system("nvme-gen5")
    assert g5.tiers["nvme0"].read_bw > 1.9 * g4.tiers["nvme0"].read_bw


def test_laptop_gpu_computes_from_dram_and_flash_reads_depend_on_size():
    s = load_system("laptop-flash")
    assert s.fast_tier == "dram" and s.gpu.memory == "dram"
    flash = s.tiers["flash"]
    assert flash.kind == "flash"
    sizes = [4096, 16384, 32768, 65536, 262144, 1 << 20]
    rates = [flash.read_bandwidth(n) for n in sizes]
    # LLM in a flash's M1 Max: 4 KiB random reads about a ninth of the sequential 6.10 GB/s
    assert rates == sorted(rates) and rates[-1] > 8 * rates[0]
    assert Topology(s).route("flash", "dram").via == []


def test_show_renders_ports_curves_and_asymmetric_links():
    cxl = runner.invoke(app, ["hardware", "show", "cxl-host"]).stdout
    assert "shared ports" in cxl and "cxl-switch" in cxl
    assert "streams → bandwidth" in cxl and "32: 17GB/s" in cxl
    t4 = runner.invoke(app, ["hardware", "show", "t4-gcp"]).stdout
    assert "5.18GB/s → / 13.8GB/s ←" in t4          # FlexGen's 4.82 / 12.89 GiB/s, shown in GB/s
    laptop = runner.invoke(app, ["hardware", "show", "laptop-flash"]).stdout
    assert "read size → throughput" in laptop and "shared ports" not in laptop


@pytest.mark.parametrize("name", NAMES)
def test_links_behind_a_port_list_the_host_end_first(name):
    # the simulator tells a port's two directions apart by the order of each link's ends
    system = load_system(name)
    for link in system.links:
        if link.port:
            assert system.tiers[link.ends[0]].kind in ("hbm", "dram"), link.name
