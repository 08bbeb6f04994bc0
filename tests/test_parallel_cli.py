"""`training.parallel` through the CLI: the alias, the JSON `parallel` block and exit-2 errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from memsim.workloads.spec import Training

WORKLOAD = """name: l70-3d
model: llama-3-70b
training:
  micro_batch: 1
  seq_len: 4096
  grad_accum: 8
  zero_stage: 1
  parallel: {tensor: 8, pipeline: 4, data: 2}
  sequence_parallel: true
"""


def _run(path, *extra):
    return subprocess.run([sys.executable, "-m", "memsim", "workload", "show", str(path), "--json", *extra],
                          capture_output=True, text=True, timeout=300)


def test_data_parallel_is_an_alias_of_parallel_data():
    assert Training(parallel={"data": 4}).data_parallel == 4
    assert Training(data_parallel=8).parallel.data == 8
    with pytest.raises(ValueError, match="disagree"):
        Training(data_parallel=2, parallel={"data": 4})


@pytest.mark.slow
def test_workload_json_reports_the_busiest_rank(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(WORKLOAD)
    out = _run(path)
    assert out.returncode == 0, out.stderr
    par = json.loads(out.stdout)["parallel"]
    assert (par["tensor"], par["pipeline"], par["data"], par["gpus"]) == (8, 4, 2, 64)
    stages = par["per_stage"]
    # 1F1B: stage 0 holds 4 micro-batches of activations, stage 3 one
    assert stages[0]["activations"] == 4 * stages[3]["activations"] > 0
    assert par["busiest_rank"] == {"stage": 0, "bytes": stages[0]["total"]}
    # ~70.6e9 params / 32 model-parallel ranks in bf16, within 10% per stage
    assert 0.9 * 2 * 70.6e9 / 32 < stages[1]["weights"] < 1.1 * 2 * 70.6e9 / 32


@pytest.mark.slow
@pytest.mark.parametrize("override, key", [("training.parallel.tensor=3", "training.parallel.tensor"),
                                           ("training.parallel.pipeline=7", "training.parallel.pipeline")])
@pytest.mark.slow
def test_bad_layout_exits_2_naming_the_key(tmp_path, override, key):
    path = tmp_path / "w.yaml"
    path.write_text(WORKLOAD)
    out = _run(path, "--set", override)
    assert out.returncode == 2
    assert key in out.stdout + out.stderr
