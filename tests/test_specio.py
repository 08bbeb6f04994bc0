"""Spec loading: extends a catalog entry, --set overrides, YAML without surprises."""

import json

import pytest
from typer.testing import CliRunner

from memsim.cli import app
from memsim.errors import SpecError
from memsim.hardware import load_system
from memsim.specio import apply_overrides, deep_merge, load_mapping, parse_assignment, read_yaml, resolve

runner = CliRunner()
GiB = 2**30


def test_user_file_extends_catalog_entry_and_overrides_a_few_keys(tmp_path):
    path = tmp_path / "my-dgx.yaml"
    path.write_text("extends: h100-sxm\nname: my-dgx\ndescription: a DGX with half the DRAM\n"
                    "tiers:\n  dram:\n    capacity: 1TiB\n"
                    "compute:\n  gpu:\n    count: 4\n")
    base, mine = load_system("h100-sxm"), load_system(str(path))
    assert mine.name == "my-dgx"
    assert mine.tiers["dram"].capacity == 2**40
    assert mine.tiers["dram"].read_bw == base.tiers["dram"].read_bw      # the rest is inherited
    assert mine.compute["gpu"].count == 4
    assert mine.compute["gpu"].peak_flops == base.compute["gpu"].peak_flops
    assert mine.links == base.links


def test_extends_chain_with_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    parent = tmp_path / "sub" / "parent.yaml"
    parent.write_text("extends: h200\nname: parent\ntiers:\n  dram: {capacity: 1TiB}\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: sub/parent.yaml\nname: child\ntiers:\n  hbm: {capacity: 100GiB}\n")
    system = load_system(str(child))
    assert system.name == "child"
    assert system.tiers["hbm"].capacity == 100 * GiB
    assert system.tiers["hbm"].read_bw == 4.8e12            # from h200
    assert system.tiers["dram"].capacity == 2**40           # from parent
    assert system.tiers["nvme"].capacity == 30_720_000_000_000   # from h100-sxm, two levels up


def test_lists_replace_in_extends(tmp_path):
    path = tmp_path / "one-link.yaml"
    path.write_text("extends: h100-sxm\nname: x\n"
                    "links:\n  - {name: only, kind: pcie, ends: [hbm, dram], bandwidth: 10GB/s}\n")
    data = load_mapping(path, "hardware")
    assert [link["name"] for link in data["links"]] == ["only"]


def test_set_overrides_through_the_cli():
    result = runner.invoke(app, ["hardware", "show", "h100-sxm", "--json",
                                 "--set", "tiers.dram.capacity=1TiB",
                                 "--set", "hardware.compute.gpu.peak_flops.bf16=1PFLOP/s",
                                 "--set", "links.0.efficiency=0.5"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["tiers"]["dram"]["capacity"] == 2**40
    assert doc["compute"]["gpu"]["peak_flops"]["bf16"] == 1e15
    assert doc["links"][0]["efficiency"] == 0.5
    assert doc["routes_to_hbm"]["dram"]["bottleneck_bytes_per_s"] == pytest.approx(63.008e9 * 0.5)


def test_load_system_keeps_only_hardware_overrides():
    system = load_system("h100-sxm", ["hardware.tiers.hbm.capacity=40GiB", "training.zero_stage=3"])
    assert system.tiers["hbm"].capacity == 40 * GiB


def test_set_can_add_a_port_and_attach_a_link():
    system = load_system("h100-sxm", ["hardware.ports.sw.bandwidth=20GB/s", "hardware.links.1.port=sw"])
    assert system.links[1].port == "sw" and system.ports["sw"].bandwidth == 20e9


@pytest.mark.parametrize(("text", "keys", "value"), [
    ("training.zero_stage=3", ["training", "zero_stage"], 3),
    ("a.b=1.5", ["a", "b"], 1.5),
    ("a=true", ["a"], True),
    ("tiers.cxl.capacity=512GiB", ["tiers", "cxl", "capacity"], "512GiB"),
    ("a.b=[1, 2]", ["a", "b"], [1, 2]),
    ("a.b=", ["a", "b"], ""),
    ("a.b=x=y", ["a", "b"], "x=y"),
])
def test_parse_assignment(text, keys, value):
    assert parse_assignment(text) == (keys, value)


@pytest.mark.parametrize("text", ["no-equals", "=5", "..=5"])
def test_parse_assignment_rejects(text):
    with pytest.raises(SpecError, match=r"key\.path=value"):
        parse_assignment(text)


def test_apply_overrides_does_not_mutate_its_input():
    data = {"a": {"b": 1}, "l": [{"x": 1}, {"x": 2}]}
    out = apply_overrides(data, ["a.b=2", "l.1.x=5", "a.c.d=7"], "f.yaml")
    assert out == {"a": {"b": 2, "c": {"d": 7}}, "l": [{"x": 1}, {"x": 5}]}
    assert data == {"a": {"b": 1}, "l": [{"x": 1}, {"x": 2}]}


def test_deep_merge_nests_mappings_and_replaces_the_rest():
    base = {"a": {"x": 1, "y": 2}, "l": [1, 2], "s": "base"}
    merged = deep_merge(base, {"a": {"y": 3}, "l": [9], "t": 1})
    assert merged == {"a": {"x": 1, "y": 3}, "l": [9], "s": "base", "t": 1}
    assert base["a"]["y"] == 2


def test_read_yaml_rejects_nested_duplicate_keys(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("tiers:\n  hbm:\n    capacity: 1GiB\n    capacity: 2GiB\n")
    with pytest.raises(SpecError, match=r"line 4.*duplicate key 'capacity' \(first at line 3\)") as info:
        read_yaml(path)
    assert info.value.file == str(path)


def test_yaml_is_safe(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        read_yaml(path)


def test_resolve_catalog_name_and_path(tmp_path):
    assert resolve("h100-sxm", "hardware").name == "h100-sxm.yaml"
    own = tmp_path / "x.yaml"
    own.write_text("a: 1\n")
    assert resolve(str(own), "hardware") == own
    with pytest.raises(SpecError, match="did you mean 'cxl-host'"):
        resolve("cxl-hots", "hardware")


def test_a_file_read_again_is_a_fresh_copy_and_an_edit_is_seen(tmp_path):
    """read_yaml keeps what it parsed: a second read must not share objects with the first
    (callers pop keys), and a file edited since must be parsed again."""
    path = tmp_path / "w.yaml"
    path.write_text("a: {b: [1, 2]}\n")
    first = read_yaml(path)
    first["a"]["b"].append(3)
    assert read_yaml(path) == {"a": {"b": [1, 2]}}
    path.write_text("a: {b: [1, 2, 3, 4]}\n")  # (another size: seen even within one mtime tick)
    assert read_yaml(path) == {"a": {"b": [1, 2, 3, 4]}}
