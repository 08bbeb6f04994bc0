"""``memsim plan --emit`` as users run it: a real subprocess, its one JSON document parsed, the
emitted file simulated again with ``memsim simulate --plan``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

SERVE = ["--hardware", "l4", "--workload", "qwen2.5-7b-serve", "--set", "serving.num_requests=40"]


def memsim(*args: str, cwd=None) -> tuple[int, dict, str]:
    env = {**os.environ, "COLUMNS": "100"}
    proc = subprocess.run([sys.executable, "-m", "memsim", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)
    try:
        doc = json.loads(proc.stdout) if "--json" in args else {}
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not one JSON document ({exc}):\n{proc.stdout[:2000]}\n"
                             f"{proc.stderr[-2000:]}") from None
    return proc.returncode, doc, proc.stdout + proc.stderr


@pytest.mark.slow
def test_plan_emit_vllm_json_and_simulate_it_back(tmp_path):
    target = tmp_path / "engine.yaml"
    code, doc, log = memsim("plan", *SERVE, "--planner", "vllm-swap", "--emit", "vllm",
                            "--emit-path", str(target), "--json")
    assert code == 0, log
    info = doc["emit"]
    assert info["path"] == str(target) and target.is_file()
    assert info["format"] == "vllm" and info["exact"] is True and info["notes"] == []
    assert info["step_time_s"] == doc["step_time_s"] and info["usage"] == f"vllm serve --config {target}"
    args = yaml.safe_load(target.read_text())
    assert args["preemption-mode"] == "swap" and args["max-num-seqs"] == 128
    code, sim, log = memsim("simulate", *SERVE, "--plan", str(target), "--json")
    assert code == 0, log
    assert sim["step_time_s"] == info["step_time_s"] and sim["planner"]["name"] == "vllm config"


@pytest.mark.slow
def test_plan_emit_default_path_and_human_output(tmp_path):
    code, _, log = memsim("plan", "--hardware", "t4-gcp", "--workload", "opt-30b-flexgen",
                          "--set", "inference.batch_size=8", "--set", "inference.prompt_len=64",
                          "--set", "inference.gen_len=4", "--planner", "accelerate",
                          "--emit", "deepspeed", cwd=tmp_path)
    assert code == 0, log
    ds = json.loads((tmp_path / "ds_config.json").read_text())
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert "wrote ds_config.json (deepspeed)" in log and "not expressible" in log


def test_unknown_emit_format_exits_2_before_planning():
    code, doc, _ = memsim("plan", *SERVE, "--emit", "vlm", "--json")
    assert code == 2 and doc["key"] == "--emit" and "did you mean 'vllm'" in doc["error"]


@pytest.mark.slow
def test_emit_mistakes_exit_2(tmp_path):
    code, doc, _ = memsim("plan", *SERVE, "--emit", "vllm", "--emit-path", str(tmp_path / "no" / "x.yaml"),
                          "--json")
    assert code == 2 and doc["key"] == "--emit-path"
    code, doc, _ = memsim("plan", *SERVE, "--planner", "vllm-swap", "--emit", "flexgen", "--json")
    assert code == 2 and "FlexGen does not run serving" in doc["error"]


@pytest.mark.slow
def test_simulate_reads_a_users_own_framework_file(tmp_path):
    policy = tmp_path / "policy.sh"
    policy.write_text("python -m flexgen.flex_opt --model facebook/opt-30b --percent 20 80 0 100 0 100 "
                      "--gpu-batch-size 4 --num-gpu-batches 2 --prompt-len 64 --gen-len 4 "
                      "--cpu-cache-compute\n")
    code, doc, log = memsim("simulate", "--hardware", "t4-gcp", "--workload", "opt-30b-flexgen",
                            "--set", "inference.batch_size=8", "--set", "inference.prompt_len=64",
                            "--set", "inference.gen_len=4", "--plan", str(policy), "--json")
    assert code == 0, log
    assert doc["planner"]["name"] == "flexgen config" and doc["step_time_s"] > 0
    code, doc, _ = memsim("simulate", "--hardware", "t4-gcp", "--workload", "opt-30b-flexgen",
                          "--plan", str(policy), "--json")
    assert code == 2 and doc["key"] == "--prompt-len" and doc["file"] == str(policy)
