"""``plan`` with a throughput target, run as a user runs it: buyable options only, each simulated.

The regression: on one H100 a target of 800 tokens/s once suggested "hbm +841 GiB" (no such GPU)
and its own simulated result missed the target. Every option must be hardware a buyer can get,
and the answer must say, from the simulator, whether it meets the target.
"""

from __future__ import annotations

import pytest

from tests.test_cli_json_subprocess import memsim

GIB = 2**30


def _preset(tmp_path, target) -> str:
    path = tmp_path / "cost.yaml"
    path.write_text(f"name: mip-cost\nkind: mip\noptions: {{target_tokens_per_s: {target}}}\n")
    return str(path)


@pytest.mark.slow
def test_throughput_target_on_one_h100_suggests_buyable_hardware(tmp_path):
    code, doc, stderr = memsim("plan", "--hardware", "h100-sxm", "--workload", "llama2-70b-train",
                               "--planner", _preset(tmp_path, 800))
    assert code == 0, stderr
    up = doc["upgrade"]
    for key in ("target_tokens_per_s", "add_bytes", "cost_usd", "estimate_s", "notes", "capacity_bytes"):
        assert key in up  # the keys the upgrade document had before
    assert "hbm" not in up["add_bytes"] and up["capacity_bytes"]["hbm"] == 80 * GIB
    kinds = {o["kind"] for o in up["options"]}
    assert {"none", "gpus", "machine"} <= kinds
    for o in up["options"]:
        assert "hbm" not in o["add_bytes"]
        assert o["gpus"] <= 8  # never more GPUs than a catalog node has
        tps = o["simulated_tokens_per_s"]
        assert o["meets_target"] == (tps is not None and tps >= 800)
    # meeting options first; the one chosen is the one planned: its figures are the plan's
    flags = [o["meets_target"] for o in up["options"]]
    assert flags == sorted(flags, reverse=True)
    first = up["options"][0]
    assert up["chosen"] == first["label"] and up["meets_target"] == first["meets_target"]
    assert doc["tokens_per_s"] >= first["simulated_tokens_per_s"] * (1 - 1e-9)
    assert up["meets_target"] is (doc["tokens_per_s"] >= 800)
    # 70B on one H100 reaches ~375 tokens/s; the best buyable answer is more of the node's H100s
    # with ZeRO-3 (its gathers and reduce-scatters cost NVLink time: whether eight reach 800 is
    # the simulator's to say, and the verdict must follow it)
    none = next(o for o in up["options"] if o["kind"] == "none")
    assert none["gpus"] == 1 and not none["meets_target"]
    assert first["kind"] == "gpus" and "ZeRO-3" in first["label"] and doc["job"]["gpus"] == first["gpus"]
    assert first["simulated_tokens_per_s"] > 1.5 * none["simulated_tokens_per_s"]
    assert up["meets_target"] is any(o["meets_target"] for o in up["options"])


@pytest.mark.slow
def test_memory_upgrade_is_resimulated_until_it_meets_the_target(tmp_path):
    # Llama-2-70B's 1.1 TB of model states on a node cut to 512 GiB of DRAM spill to NVMe (~150
    # tokens/s). The server takes 8 TB of DRAM (h100-sxm.yaml, max_capacity), so buying DRAM is
    # the cheapest option per hour; the simulator, not the MIP's estimate, says it meets 300.
    code, doc, stderr = memsim("plan", "--hardware", "h100-sxm", "--workload", "llama2-70b-train",
                               "--set", "hardware.tiers.dram.capacity=512GiB",
                               "--planner", _preset(tmp_path, 300))
    assert code == 0, stderr
    up = doc["upgrade"]
    first = up["options"][0]
    assert first["kind"] == "memory" and up["chosen"] == first["label"]
    assert list(up["add_bytes"]) == ["dram"] and 0 < up["add_bytes"]["dram"] <= 8e12 - 512 * GIB
    assert up["cost_usd"] > 0 and up["meets_target"] and first["simulated_tokens_per_s"] >= 300
    assert doc["capacity_bytes"]["dram"] == 512 * GIB + up["add_bytes"]["dram"]
    assert doc["tokens_per_s"] >= 300 and doc["job"]["gpus"] == 1


def test_bad_target_exits_2_naming_the_key(tmp_path):
    code, doc, _ = memsim("plan", "--hardware", "h100-sxm", "--workload", "llama2-7b-train",
                          "--planner", _preset(tmp_path, -1))
    assert code == 2 and doc["exit_code"] == 2
    assert doc["key"] == "options.target_tokens_per_s"
