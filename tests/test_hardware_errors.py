"""Bad hardware input through the CLI: exit code 2, one message naming the file and the key, no traceback."""

import json

import pytest
from typer.testing import CliRunner

from memsim.cli import app

runner = CliRunner()


def _show(*args: str):
    result = runner.invoke(app, ["hardware", "show", *args])
    message = " ".join(result.stderr.split())      # rich wraps long lines; compare unwrapped text
    return result, message


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _assert_bad(result, message, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no crash
    assert result.stdout == ""
    assert message.startswith("error:")
    for needle in needles:
        assert needle in message, (needle, message)


OVERRIDE = "extends: h100-sxm\nname: mine\n"
LINK = OVERRIDE + "links:\n  - {name: l, kind: pcie, ends: [hbm, %s], %s}\n"
ISLAND = "tiers:\n  island: {kind: cxl, capacity: 1GiB, read_bw: 1GB/s, write_bw: 1GB/s}\n"

CASES = {
    "malformed": ("name: x\ntiers:\n  hbm: {kind: hbm\n", ["line 4", "invalid YAML"]),
    "tab": ("name: x\ntiers:\n\thbm: 1\n", ["line 3, column 1", "invalid YAML"]),
    "duplicate": ("name: x\nname: y\n", ["line 2", "duplicate key 'name' (first at line 1)"]),
    "unknown_key": (OVERRIDE + "tiers:\n  hbm:\n    capacty: 10GiB\n",
                    ["tiers.hbm.capacty", "unknown key 'capacty'", "did you mean 'capacity'?"]),
    "unknown_top_key": ("extends: h100-sxm\nnmae: x\n", ["nmae", "did you mean 'name'?"]),
    "unknown_link_key": (OVERRIDE + "links:\n  - {name: l, kind: pcie, ends: [hbm, dram], bandwith: 1GB/s}\n",
                         ["links.0.bandwith", "did you mean 'bandwidth'?"]),
    "negative_capacity": (OVERRIDE + "tiers:\n  hbm:\n    capacity: -5GiB\n",
                          ["tiers.hbm.capacity", "negative"]),
    "negative_number": (OVERRIDE + "tiers:\n  dram:\n    capacity: -5\n",
                        ["tiers.dram.capacity", "greater than 0"]),
    "zero_capacity": (OVERRIDE + "tiers:\n  hbm:\n    capacity: 0GiB\n",
                      ["tiers.hbm.capacity", "greater than 0"]),
    "bad_unit": (OVERRIDE + "tiers:\n  dram:\n    read_bw: 64GB\n",
                 ["tiers.dram.read_bw", "expected a bandwidth", "'64GB'"]),
    "bad_flops": (OVERRIDE + "compute:\n  gpu:\n    peak_flops: {bf16: 5TB/s}\n",
                  ["compute.gpu.peak_flops.bf16", "expected a compute rate"]),
    "bad_kind": (OVERRIDE + "tiers:\n  hbm:\n    kind: hbn\n", ["tiers.hbm.kind", "'hbm'"]),
    "bad_curve": (OVERRIDE + "tiers:\n  nvme:\n    read_size_curve: [[4KiB, 1GB/s], [1KiB, 2GB/s]]\n",
                  ["tiers.nvme.read_size_curve", "strictly increasing"]),
    "link_to_missing_tier": (LINK % ("dramm", "bandwidth: 1GB/s"),
                             ["links[0] (l)", "unknown tier 'dramm'", "did you mean 'dram'?"]),
    "compute_on_missing_tier": (OVERRIDE + "compute:\n  cpu:\n    memory: dramm\n",
                                ["compute.cpu.memory", "unknown tier 'dramm'"]),
    "unknown_port": (LINK % ("dram", "bandwidth: 1GB/s, port: sw"),
                     ["links[0] (l)", "unknown port 'sw'"]),
    "link_without_bandwidth": (OVERRIDE + "links:\n  - {name: l, kind: pcie, ends: [hbm, dram]}\n",
                               ["links.0", "give either bandwidth or both pcie_gen and lanes"]),
    "disconnected": (OVERRIDE + ISLAND,
                     ["links", "disconnected", "island"]),
    "unknown_catalog_parent": ("extends: h100-sxn\nname: x\n",
                               ["extends", "no hardware named 'h100-sxn'", "did you mean 'h100-sxm'?"]),
    "missing_required": ("name: x\ntiers:\n  hbm: {kind: hbm, capacity: 1GiB, read_bw: 1GB/s}\n",
                         ["tiers.hbm.write_bw", "required key is missing"]),
    "not_a_mapping": ("- a\n- b\n", ["expected a mapping at the top level"]),
    "empty": ("", ["an empty file"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_file_exits_2_naming_file_and_key(tmp_path, case):
    text, needles = CASES[case]
    path = _write(tmp_path, f"{case}.yaml", text)
    result, message = _show(path)
    _assert_bad(result, message, f"{case}.yaml", *needles)


def test_binary_file(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81")
    result, message = _show(str(path))
    _assert_bad(result, message, "bin.yaml", "not a UTF-8 text file")


def test_extends_cycle(tmp_path):
    _write(tmp_path, "a.yaml", "extends: b.yaml\nname: a\n")
    b = _write(tmp_path, "b.yaml", "extends: a.yaml\nname: b\n")
    result, message = _show(b)
    _assert_bad(result, message, "a.yaml", "extends", "cycle")


def test_self_extends(tmp_path):
    path = _write(tmp_path, "self.yaml", "extends: self.yaml\nname: s\n")
    result, message = _show(path)
    _assert_bad(result, message, "self.yaml", "extends", "cycle")


def test_unknown_catalog_name():
    result, message = _show("h100-sxn")
    _assert_bad(result, message, "no hardware named 'h100-sxn'", "did you mean 'h100-sxm'?")


def test_missing_file():
    result, message = _show("does/not/exist.yaml")
    _assert_bad(result, message, "exist.yaml", "file not found")


@pytest.mark.parametrize(("override", "needles"), [
    ("tiers.hbm.capacty=40GiB", ["--set", "tiers.hbm.capacty", "did you mean 'capacity'?"]),
    ("hardware.tiers.hbm.capacity=lots", ["--set", "tiers.hbm.capacity", "'lots'"]),
    ("tiers.hbm.capacity=0", ["tiers.hbm.capacity", "greater than 0"]),
    ("tiers.hbm.capacity", ["--set expects key.path=value"]),
    ("name.first=x", ["--set name.first=x", "name is not a mapping"]),
])
def test_bad_set_exits_2(override, needles):
    result, message = _show("h100-sxm", "--set", override)
    _assert_bad(result, message, *needles)


def test_bad_input_with_json_is_an_error_document(tmp_path):
    path = _write(tmp_path, "bad.yaml", CASES["unknown_key"][0])
    result = runner.invoke(app, ["hardware", "show", path, "--json"])
    assert result.exit_code == 2
    assert json.loads(result.stdout) == {
        "error": f"{path}: tiers.hbm.capacty: unknown key 'capacty' (did you mean 'capacity'?)",
        "exit_code": 2, "file": path, "key": "tiers.hbm.capacty"}
