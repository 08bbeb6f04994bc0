"""``--json`` as scripts use it: ``memsim`` run as a real process, its stdout parsed whole.

An in-process runner captures ``sys.stdout`` only; a C library (HiGHS printed its banner on every
MIP solve) writes to file descriptor 1 directly, which only a real subprocess sees. Every command
is run here; each must print exactly one JSON document, also when it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def memsim(*args: str, cwd: Path | None = None, timeout: float = 300) -> tuple[int, dict, str]:
    """Run ``python -m memsim ARGS --json``; return the exit code, the parsed stdout and stderr."""
    env = {**os.environ, "COLUMNS": "80"}
    proc = subprocess.run([sys.executable, "-m", "memsim", *args, "--json"], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)
    try:
        doc = json.loads(proc.stdout)  # the whole of stdout: one document, nothing before or after
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not one JSON document ({exc}):\n{proc.stdout[:2000]}\n"
                             f"stderr:\n{proc.stderr[-2000:]}") from None
    return proc.returncode, doc, proc.stderr


FAST = {
    "hardware list": (["hardware", "list"], "systems"),
    "hardware show": (["hardware", "show", "h100-sxm"], "tiers"),
    "workload list": (["workload", "list"], "workloads"),
    "workload show": (["workload", "show", "llama2-7b-train"], "per_device_bytes"),
    "plan (MIP)": (["plan", "--hardware", "h100-sxm", "--workload", "llama2-7b-train"], "planner"),
    "simulate": (["simulate", "--hardware", "h100-sxm", "--workload", "llama2-7b-train",
                  "--planner", "zero-offload"], "step_time_s"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST)
def test_every_quick_command_prints_one_document(name: str):
    args, key = FAST[name]
    code, doc, stderr = memsim(*args)
    assert code == 0, stderr
    assert key in doc


@pytest.mark.slow
def test_plan_keeps_the_contract_keys():
    code, doc, _ = memsim("plan", "--hardware", "h100-sxm", "--workload", "llama2-7b-train")
    assert code == 0
    assert doc["feasible"] is True and doc["step_time_s"] > 0 and doc["tokens_per_s"] > 0
    assert doc["planner"]["name"] == "mip" and doc["planner"]["status"] in ("optimal", "feasible")
    assert set(doc["peak_bytes"]) <= set(doc["capacity_bytes"])
    assert all(isinstance(v, int) for v in doc["peak_bytes"].values())
    assert {"name", "feasible", "step_time_s"} <= set(doc["baselines"][0])


@pytest.mark.slow
def test_the_console_script_is_the_same_entry_point():
    script = shutil.which("memsim")
    if script is None:
        pytest.skip("the memsim console script is not on PATH (install with pip install -e .)")
    proc = subprocess.run([script, "plan", "--hardware", "h100-sxm", "--workload", "llama2-7b-train",
                           "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["planner"]["name"] == "mip"


@pytest.mark.slow
def test_trace_prints_one_document(tmp_path: Path):
    pytest.importorskip("torch")
    out = tmp_path / "mlp.json"
    code, doc, stderr = memsim("trace", "memsim.workloads.torch_examples:mlp", "--input", "4x64",
                               "--train", "-o", str(out))
    assert code == 0, stderr
    assert doc["path"] == str(out) and doc["ops"] > 0 and doc["flops"] > 0 and out.is_file()


@pytest.mark.slow
def test_reproduce_prints_one_document(tmp_path: Path):
    out = tmp_path / "r.md"
    code, doc, stderr = memsim("reproduce", "--case", "kivi", "-o", str(out))
    assert code == 0, stderr
    assert [c["name"] for c in doc["cases"]] == ["kivi"] and out.is_file()


def _tiny_study(tmp_path: Path) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "json-subprocess", "run": "simulate",
        "base": {"hardware": "h200", "workload": "llama2-7b-train"},
        "axes": [{"key": "training.micro_batch", "values": [1, 2]}],
        "metrics": ["feasible", "step_time_s"]}))
    return path


@pytest.mark.slow
def test_study_and_its_dry_run_print_one_document(tmp_path: Path):
    path = _tiny_study(tmp_path)
    code, dry, stderr = memsim("study", str(path), "-o", str(tmp_path / "out"), "--dry-run")
    assert code == 0, stderr
    assert len(dry["points"]) == 2
    code, run, stderr = memsim("study", str(path), "-o", str(tmp_path / "out"), "-j", "1")
    assert code == 0, stderr
    assert run["points"] == 2 and run["statuses"] == {"ok": 2}


@pytest.mark.slow
def test_a_simulate_study_runs_the_planner_it_names(tmp_path: Path):
    """``run: simulate`` with a named planner simulates that planner's plan (it was silently
    ignored: ZeRO-Offload's 7B job came out infeasible, every byte resident)."""
    path = _tiny_study(tmp_path)
    study = yaml.safe_load(path.read_text())
    study["base"]["planner"] = "zero-offload"
    path.write_text(yaml.safe_dump(study))
    code, run, stderr = memsim("study", str(path), "-o", str(tmp_path / "zo"), "-j", "1")
    assert code == 0, stderr
    resident = memsim("study", str(_tiny_study(tmp_path)), "-o", str(tmp_path / "res"), "-j", "1")[1]
    assert [r["status"] for r in run["rows"]] == ["ok", "ok"]
    pairs = zip(run["rows"], resident["rows"], strict=True)
    assert all(offload["step_time_s"] > local["step_time_s"] for offload, local in pairs)


@pytest.mark.slow
def test_bad_input_is_a_document_with_exit_2():
    code, doc, stderr = memsim("plan", "--hardware", "h100-sxm", "--workload", "llama2-7b-trian")
    assert code == 2 and doc["exit_code"] == 2
    assert "did you mean 'llama2-7b-train'" in doc["error"]
    assert "did you mean" in stderr  # the human line is still on stderr


def test_a_bad_key_names_file_and_key():
    code, doc, _ = memsim("workload", "show", "llama2-7b-train", "--set", "training.micro_bach=2")
    assert code == 2
    assert doc["key"] and "micro_bach" in doc["key"]


def test_a_usage_error_is_a_document_with_exit_2():
    code, doc, _ = memsim("plan", "--hardware", "h100-sxm", "--no-such-flag")
    assert code == 2 and doc == {"error": "No such option: --no-such-flag", "exit_code": 2,
                                 "file": None, "key": None}
    code, doc, _ = memsim("plan")
    assert code == 2 and "--hardware" in doc["error"]


@pytest.mark.slow
def test_infeasible_is_a_document_with_exit_3():
    code, doc, _ = memsim("simulate", "--hardware", "l4", "--workload", "llama2-70b-train",
                          "--planner", "resident")
    assert code == 3 and doc["exit_code"] == 3 and doc["feasible"] is False
    assert doc["diagnosis"]["shortfalls"][0]["short_bytes"] > 0


@pytest.mark.slow
def test_calibrate_and_validate_print_one_document_each(tmp_path: Path):
    pytest.importorskip("torch")
    machine = tmp_path / "me.yaml"
    code, doc, stderr = memsim("calibrate", "--quick", "-o", str(machine), "--scratch", str(tmp_path))
    assert code == 0, stderr
    assert doc["path"] == str(machine) and machine.is_file()
    code, doc, stderr = memsim("validate", "--hardware", str(machine), "--workload",
                               str(ROOT / "validation" / "workloads" / "tiny-llama-train-s128.yaml"),
                               "--repeats", "1", "--warmup", "0", "--scratch", str(tmp_path))
    assert code == 0, stderr
    assert len(doc["cases"]) == 1 and doc["cases"][0]["measured_s"] > 0
    assert doc["median_abs_error"] >= 0


@pytest.mark.slow
def test_a_partial_reproduce_never_replaces_the_full_document(tmp_path: Path):
    full = tmp_path / "reproductions.md"
    text = (ROOT / "docs" / "reproductions.md").read_text()
    full.write_text(text)
    code, doc, _ = memsim("reproduce", "--case", "kivi", "-o", str(full))
    assert code == 2 and doc["key"] == "--output" and doc["file"] == str(full)
    assert full.read_text() == text  # untouched


@pytest.mark.slow
def test_reproduce_without_output_writes_no_docs_folder_where_the_user_stands(tmp_path: Path):
    code, doc, stderr = memsim("reproduce", "--case", "kivi", cwd=tmp_path)
    assert code == 0, stderr
    assert doc["path"] is None and list(tmp_path.iterdir()) == []  # a partial run writes no file
