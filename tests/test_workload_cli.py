"""`memsim workload list/show` end to end: ZeRO Table 1 and the 1M-token KV figure through the CLI,
one JSON document, exit code 2 with the file and key named for bad input."""

import json

import pytest
from typer.testing import CliRunner

from memsim.cli import app

runner = CliRunner()
ZERO_TABLE1 = {0: 120_000_000_000, 1: 31_406_250_000, 2: 16_640_625_000, 3: 1_875_000_000}


def show(*args):
    result = runner.invoke(app, ["workload", "show", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def error(*args):
    result = runner.invoke(app, ["workload", *args])
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    return " ".join(result.stderr.split())


@pytest.mark.parametrize("stage", range(4))
def test_zero_table1_via_cli(stage):
    doc = show("zero-table1", "--set", f"training.zero_stage={stage}")
    pdb = doc["per_device_bytes"]
    assert doc["params"] == 7_500_000_000 and doc["data_parallel"] == 64
    assert pdb["weights"] + pdb["gradients"] + pdb["optimizer"] == ZERO_TABLE1[stage]
    assert set(pdb) >= {"weights", "gradients", "optimizer", "activations", "kv_cache", "total"}


def test_llama3_8b_1m_kv_is_128_gib_via_cli():
    doc = show("llama3-8b-1m")
    assert doc["per_device_bytes"]["kv_cache"] == 128 * 2**30
    assert doc["model"] == "llama-3-8b" and doc["tokens_per_step"] == 1024


def test_show_is_deterministic_and_has_the_stable_keys():
    first = runner.invoke(app, ["workload", "show", "llama2-7b-train", "--json"]).stdout
    second = runner.invoke(app, ["workload", "show", "llama2-7b-train", "--json"]).stdout
    assert first == second
    doc = json.loads(first)
    for key in ("params", "per_device_bytes", "flops_per_step", "tokens_per_step", "kind", "layers"):
        assert key in doc
    # 6·N·tokens plus attention: within a few percent of 6·N·T for a 7B model at 4k tokens
    assert 1.0 < doc["flops_per_step"] / (6 * doc["params"] * 4096) < 1.25


def test_list_json_covers_the_catalog():
    result = runner.invoke(app, ["workload", "list", "--json"])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    names = {w["name"] for w in doc["workloads"]}
    assert {"llama2-7b-train", "llama2-70b-train", "llama2-70b-lora", "zero-table1", "llama3-8b-infer",
            "opt-30b-flexgen", "opt-175b-flexgen", "llama3-8b-1m", "llama2-70b-serve", "mixtral-8x7b-infer",
            "qwen2.5-7b-serve"} <= names
    assert "gpt3-175b" in doc["models"]


def test_human_output_is_a_table():
    result = runner.invoke(app, ["workload", "show", "opt-30b-flexgen"])
    assert result.exit_code == 0
    assert "per-device bytes" in result.stdout and "kv_cache" in result.stdout


def test_unknown_set_key_names_the_key():
    message = error("show", "zero-table1", "--set", "training.zero_stag=3")
    assert "training.zero_stag" in message and "did you mean 'zero_stage'" in message


def test_hardware_overrides_are_ignored():
    doc = show("zero-table1", "--set", "hardware.tiers.dram.capacity=1TiB")
    assert doc["params"] == 7_500_000_000


def test_bad_value_names_the_key():
    message = error("show", "zero-table1", "--set", "training.zero_stage=4")
    assert "training.zero_stage" in message


def test_unknown_model_did_you_mean(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("name: w\nmodel: llama-2-7\ninference: {batch_size: 1}\n")
    message = error("show", str(path))
    assert str(path) in message and "model" in message and "did you mean 'llama-2-7b'" in message


def test_heads_not_dividing_hidden(tmp_path):
    config = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 2, "num_attention_heads": 30,
              "intermediate_size": 11008, "vocab_size": 32000, "max_position_embeddings": 4096}
    (tmp_path / "bad.json").write_text(json.dumps(config))
    (tmp_path / "w.yaml").write_text("name: w\nmodel: bad.json\ntraining: {seq_len: 128}\n")
    message = error("show", str(tmp_path / "w.yaml"))
    assert "bad.json" in message and "num_attention_heads" in message and "does not divide" in message


def test_two_kinds_rejected(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("name: w\nmodel: llama-2-7b\ninference: {}\ntraining: {}\n")
    assert "exactly one of training, inference, serving" in error("show", str(path))
