"""ds_config precision: ``auto`` is not fp32; fp16 and bf16 both enabled is refused (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys


def _show(tmp_path, ds: dict):
    (tmp_path / "ds.json").write_text(json.dumps({"train_micro_batch_size_per_gpu": 1, **ds}))
    (tmp_path / "w.yaml").write_text("name: w\nmodel: llama-2-7b\n"
                                     "training: {seq_len: 1024, precision: bf16, deepspeed: ds.json}\n")
    proc = subprocess.run([sys.executable, "-m", "memsim", "workload", "show", str(tmp_path / "w.yaml"),
                           "--json"], capture_output=True, text=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout)


def test_auto_keeps_the_workloads_precision(tmp_path):
    code, doc = _show(tmp_path, {"fp16": {"enabled": "auto"}, "bf16": {"enabled": "auto"}})
    assert code == 0, doc
    # bf16 Llama-2-7B weights: 2 bytes per parameter (fp32 would be 4)
    assert abs(doc["per_device_bytes"]["weights"] / doc["params"] - 2) < 0.01


def test_fp16_and_bf16_both_enabled_is_an_error(tmp_path):
    code, doc = _show(tmp_path, {"fp16": {"enabled": True}, "bf16": {"enabled": True}})
    assert code == 2 and doc["key"] == "fp16.enabled" and doc["file"].endswith("ds.json")
