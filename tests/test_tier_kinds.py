"""Tier kinds are one table (hardware/kinds/tiers.yaml): the schema, the tiers'
defaults, diagnoses and framework configs read it instead of naming kinds."""

from __future__ import annotations

import yaml

from memsim.catalog import catalog_dir
from memsim.emit.common import device_of
from memsim.hardware import list_systems, load_system
from memsim.hardware.spec import TIER_KINDS, Tier
from memsim.kinds import storage_kinds, tier_kind, tier_kinds
from memsim.planners.lp import SLACK_PRICE


def test_the_schema_accepts_exactly_the_tables_kinds():
    table = yaml.safe_load((catalog_dir("hardware") / "kinds" / "tiers.yaml").read_text())
    assert TIER_KINDS == tuple(table) == tuple(tier_kinds())
    assert set(SLACK_PRICE) == set(table)
    for name in list_systems():
        assert all(t.kind in table for t in load_system(name).tiers.values()), name


def test_a_tiers_defaults_follow_its_kind():
    def tier(kind: str) -> Tier:
        return Tier(kind=kind, capacity="1GB", read_bw="1GB/s", write_bw="1GB/s")

    assert tier("hbm").is_per_device and not tier("dram").is_per_device
    assert tier("cxl").is_duplex and not tier("ssd").is_duplex and not tier("flash").is_duplex
    assert Tier(kind="ssd", capacity="1GB", read_bw="1GB/s", write_bw="1GB/s", duplex=True).is_duplex
    assert storage_kinds() == ("ssd", "flash")
    assert [k for k, v in tier_kinds().items() if v.gpu_runtime] == ["hbm"]


def test_diagnoses_and_framework_devices_read_the_table():
    assert tier_kind("hbm").growth("hbm") == "HBM (a larger GPU)"
    assert tier_kind("cxl").growth("host") == "host (cxl)" and tier_kind("dram").growth("dram") == "dram"
    assert tier_kind("cxl").link == "cxl" and tier_kind("ssd").link == "nvme"
    assert SLACK_PRICE["ssd"] < SLACK_PRICE["dram"] < SLACK_PRICE["cxl"] < SLACK_PRICE["hbm"]
    system = load_system("nvme-gen4")
    disks = [t for t, v in system.tiers.items() if v.kind in storage_kinds()]
    assert disks and all(device_of(system, t) == "disk" for t in disks)
