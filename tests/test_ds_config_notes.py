"""ds_config import says what it does not act on: every key is read into the workload, refused
(exit 2), or named in a note that ``workload show`` and ``plan`` print."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

DS = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": 2,
    "bf16": {"enabled": True},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}},
    "gradient_clipping": 1.0,
    "zero_optimization": {"stage": 1, "overlap_comm": True, "reduce_bucket_size": 5e8},
    "activation_checkpointing": {"partition_activations": True, "cpu_checkpointing": True,
                                 "number_checkpoints": 4},
    "tensor_parallel": {"autotp_size": 2},
    "pipeline": {"stages": 2, "partition": "uniform"},
}


def _run(tmp_path, ds: dict, *args: str, yaml_extra: str = ""):
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    (tmp_path / "w.yaml").write_text("name: w\nmodel: llama-2-7b\n"
                                     f"training: {{seq_len: 1024, deepspeed: ds.json{yaml_extra}}}\n")
    cmd = args or ("workload", "show", str(tmp_path / "w.yaml"))
    if args:
        cmd = (*args, "--workload", str(tmp_path / "w.yaml"))
    proc = subprocess.run([sys.executable, "-m", "memsim", *cmd, "--json"], capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, json.loads(proc.stdout)


def test_every_key_is_read_refused_or_noted(tmp_path):
    code, doc = _run(tmp_path, DS)
    assert code == 0, doc
    job = doc["job"]
    assert job["parallel"]["tensor"] == 2 and job["parallel"]["pipeline"] == 2  # training.parallel
    assert job["zero_stage"] == 1 and job["grad_accum"] == 2 and job["precision"] == "bf16"
    notes = " | ".join(doc["workload_notes"])
    # activation checkpointing: what memsim does instead, and exactly what it does not model
    assert "activation_checkpointing" in notes and "layer_policy" in notes
    assert "cpu_checkpointing" in notes and "partition_activations" in notes and "number_checkpoints" in notes
    assert "auto" in notes and "train_micro_batch_size_per_gpu" in notes
    for key in ("scheduler", "gradient_clipping", "optimizer.params", "zero_optimization.overlap_comm",
                "zero_optimization.reduce_bucket_size", "pipeline.partition"):
        assert key in notes, key
    assert all(n.startswith("ds.json: ") for n in doc["workload_notes"])


def test_a_workload_key_that_overrides_the_ds_config_is_said(tmp_path):
    code, doc = _run(tmp_path, {"zero_optimization": {"stage": 3}}, yaml_extra=", zero_stage: 2")
    assert code == 0 and doc["job"]["zero_stage"] == 2
    assert any("training.zero_stage=2" in n and "overrides" in n for n in doc["workload_notes"])


@pytest.mark.parametrize(("ds", "key"), [
    ({"tensor_parallel": {"autotp_size": "two"}}, "tensor_parallel.autotp_size"),
    ({"pipeline": {"stages": 0}}, "pipeline.stages"),
    ({"zero_optimization": {"stage": 2, "offload_param": {"device": "nvme"}}},
     "zero_optimization.offload_param.device"),
])
def test_contradictions_exit_2_naming_file_and_key(tmp_path, ds, key):
    code, doc = _run(tmp_path, ds)
    assert code == 2 and doc["key"] == key and doc["file"].endswith("ds.json")


@pytest.mark.slow
def test_plan_prints_the_workload_notes(tmp_path):
    ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 0, "overlap_comm": True},
          "activation_checkpointing": {"profile": True}}
    code, doc = _run(tmp_path, ds, "plan", "--hardware", "h100-sxm", "--planner", "zero-offload")
    assert code == 0, doc
    assert any("activation_checkpointing" in n for n in doc["notes"])
    assert any("zero_optimization.overlap_comm" in n for n in doc["notes"])
