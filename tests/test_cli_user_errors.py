"""A new user's mistakes, run as ``python -m memsim`` subprocesses: each exits 2 with one line
naming the flag, file or key, never a traceback (issue 19's tracebacks and silent acceptances)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "memsim" / "data" / "workloads" / "models"


def memsim(*args: str, cwd: Path | None = None) -> tuple[int, dict]:
    """Run ``python -m memsim ARGS --json``; the exit code and the one JSON document on stdout."""
    env = {**os.environ, "COLUMNS": "80"}
    proc = subprocess.run([sys.executable, "-m", "memsim", *args, "--json"], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc.returncode, json.loads(proc.stdout)


PLAN = ["plan", "-H", "h100-sxm", "-w", "llama2-7b-train"]


@pytest.mark.slow
def test_output_into_missing_folder(tmp_path: Path) -> None:
    code, doc = memsim(*PLAN, "-o", str(tmp_path / "missing" / "plan.yaml"))
    assert code == 2 and doc["key"] == "-o" and "missing" in doc["error"]


@pytest.mark.slow
def test_output_onto_directory(tmp_path: Path) -> None:
    code, doc = memsim(*PLAN, "-o", str(tmp_path))
    assert code == 2 and doc["key"] == "-o" and "is a directory" in doc["error"]


@pytest.mark.slow
def test_timeline_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    code, doc = memsim("simulate", "-H", "h100-sxm", "-w", "llama2-7b-train",
                       "--timeline", str(tmp_path / "f" / "t.json"))
    assert code == 2 and doc["key"] == "--timeline"


def test_study_output_onto_existing_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    code, doc = memsim("study", "memory-wall-trend", "--dry-run", "-o", str(tmp_path / "f"))
    assert code == 2 and doc["key"] == "-o" and "existing file" in doc["error"]


@pytest.mark.slow
@pytest.mark.parametrize("limit", ["-1", "0", "nan"])
def test_time_limit_must_be_positive(limit: str) -> None:
    code, doc = memsim(*PLAN, "--time-limit", limit)
    assert code == 2 and doc["key"] == "--time-limit"


@pytest.mark.slow
def test_huge_seq_len_names_the_flag() -> None:
    code, doc = memsim(*PLAN, "--set", "training.seq_len=99999999999999999999")
    assert code == 2 and doc["file"] == "--set" and doc["key"] == "training.seq_len"
    assert "16777216" in doc["error"]


@pytest.mark.slow
@pytest.mark.parametrize("layers", [100_000, 10**30])
def test_absurd_layer_count_is_refused_up_front(tmp_path: Path, layers: int) -> None:
    config = json.loads((MODELS / "llama-2-7b.json").read_text())
    config["num_hidden_layers"] = layers
    (tmp_path / "deep.json").write_text(json.dumps(config))
    (tmp_path / "deep.yaml").write_text("extends: llama2-7b-train\nmodel: deep.json\n")
    code, doc = memsim("workload", "show", str(tmp_path / "deep.yaml"))
    assert code == 2 and doc["key"] == "num_hidden_layers" and "4,096" in doc["error"]


def test_set_index_out_of_range_says_so() -> None:
    code, doc = memsim("hardware", "show", "h100-sxm", "--set", "links.9.efficiency=0.5")
    assert code == 2 and doc["file"] == "--set" and "out of range" in doc["error"]
    assert "not a mapping" not in doc["error"]


def test_missing_extends_parent_is_named(tmp_path: Path) -> None:
    (tmp_path / "w.yaml").write_text("extends: nope/parent.yaml\n")
    code, doc = memsim("workload", "show", str(tmp_path / "w.yaml"))
    assert code == 2 and doc["key"] == "extends" and "nope/parent.yaml" in doc["error"]


@pytest.fixture(scope="module")
def saved_plan(tmp_path_factory) -> dict:
    """A real plan for llama2-7b-train, written by ``memsim plan -o``."""
    import yaml

    path = tmp_path_factory.mktemp("plan") / "plan.yaml"
    code, _ = memsim(*PLAN, "-o", str(path))
    assert code == 0
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize(("change", "key"), [
    ({"layer_policy": {500: "keep"}}, "layer_policy.500"),
    ({"prefetch_depth": -2}, "prefetch_depth"),
    ({"version": 7}, "version"),
])
@pytest.mark.slow
def test_bad_plan_file_is_refused(tmp_path: Path, saved_plan: dict, change: dict, key: str) -> None:
    import yaml

    data = {**saved_plan, **change}
    if "layer_policy" in change:
        data["layer_policy"] = {**saved_plan["layer_policy"], **change["layer_policy"]}
    path = tmp_path / "bad-plan.yaml"
    path.write_text(yaml.safe_dump(data))
    code, doc = memsim("simulate", "-H", "h100-sxm", "-w", "llama2-7b-train", "--plan", str(path))
    assert code == 2 and doc["key"] == key and doc["file"] == str(path)


@pytest.mark.slow
@pytest.mark.parametrize("length", ["0", "-5"])
def test_request_csv_with_non_positive_length(tmp_path: Path, length: str) -> None:
    (tmp_path / "r.csv").write_text(f"arrival_s,prompt_len,output_len\n0.0,128,16\n0.5,{length},16\n")
    (tmp_path / "w.yaml").write_text("extends: llama3-8b-serve-csv\nserving:\n  arrival: {csv: r.csv}\n"
                                     "  num_requests: 2\n")
    code, doc = memsim("workload", "show", str(tmp_path / "w.yaml"))
    assert code == 2 and doc["key"] == "prompt_len" and "line 3" in doc["error"]


def _study(tmp_path: Path, axes: str, extra: str = "") -> Path:
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nrun: simulate\nbase: {hardware: l4, workload: llama3-8b-infer}\n"
                    f"axes:\n{axes}{extra}")
    return path


@pytest.mark.slow
def test_study_axis_key_typo_fails_the_dry_run(tmp_path: Path) -> None:
    path = _study(tmp_path, "  - {key: inference.batch_sise, values: [1, 2]}\n")
    code, doc = memsim("study", str(path), "--dry-run")
    assert code == 2 and doc["key"] == "axes.0" and "did you mean 'batch_size'" in doc["error"]


@pytest.mark.slow
def test_study_bad_set_fails_the_dry_run(tmp_path: Path) -> None:
    path = _study(tmp_path, "  - {key: inference.batch_size, values: [1, 2]}\n")
    code, doc = memsim("study", str(path), "--dry-run", "--set", "inference.gen_len=-3")
    assert code == 2 and doc["key"] == "base.set" and "inference.gen_len" in doc["error"]


@pytest.mark.slow
def test_study_with_one_bad_value_still_runs_the_dry_run(tmp_path: Path) -> None:
    """A bad value on one axis point is an answer (bad_input), not a mistake in the study."""
    path = _study(tmp_path, "  - {key: inference.batch_size, values: [1, 0]}\n")
    code, doc = memsim("study", str(path), "--dry-run", "-o", str(tmp_path / "out"))
    assert code == 0 and len(doc["points"]) == 2


def test_study_filter_with_a_doubled_operator(tmp_path: Path) -> None:
    path = _study(tmp_path, "  - {key: inference.batch_size, values: [1, 2]}\n",
                  "filters: ['inference.batch_size <== 1']\n")
    code, doc = memsim("study", str(path), "--dry-run")
    assert code == 2 and doc["key"] == "filters"


@pytest.mark.slow
def test_ray_address_without_a_cluster(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    path = _study(tmp_path, "  - {key: inference.batch_size, values: [1, 2]}\n")
    code, doc = memsim("study", str(path), "--backend", "ray", "--ray-address", "auto",
                       "-o", str(tmp_path / "out"))
    assert code == 2 and doc["key"] == "--ray-address" and "auto" in doc["error"]


def _run(*args: str) -> subprocess.CompletedProcess:
    """``python -m memsim ARGS`` with stdout and stderr captured (so neither is a terminal)."""
    return subprocess.run([sys.executable, "-m", "memsim", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "120"}, timeout=300)


def test_version() -> None:
    import memsim as pkg

    proc = _run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"memsim {pkg.__version__}"


def test_shell_completion_is_offered() -> None:
    # --show-completion detects the shell from the process tree, which a test runner need not have;
    # that the options are offered is what memsim decides
    proc = _run("--help")
    assert proc.returncode == 0
    assert "--install-completion" in proc.stdout and "--show-completion" in proc.stdout


@pytest.mark.slow
def test_plan_first_line_answers_and_progress_is_logged() -> None:
    proc = _run(*PLAN)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("FITS — llama2-7b-train (training, seq 4096, micro-batch 1)")
    assert "on 1 of 8 GPUs of h100-sxm" in first
    assert "(others)" not in proc.stdout and "(compute tier)" in proc.stdout
    assert "solving mip" in proc.stderr  # plain progress lines: stderr is not a terminal here
    assert " bytes" not in proc.stderr  # sizes in GiB, not raw byte counts


@pytest.mark.slow
def test_job_is_in_the_json_document() -> None:
    code, doc = memsim("simulate", "-H", "h100-sxm", "-w", "llama3-8b-infer")
    assert code == 0
    assert doc["job"]["gpus"] == 1 and doc["job"]["gpus_in_node"] == 8
    assert doc["job"]["compute_tier"] == "hbm" and doc["job"]["batch_size"] >= 1


@pytest.mark.slow
def test_study_plot_labels_and_mfu_percent(tmp_path: Path) -> None:
    """Plot axes read as words with units; MFU is a percentage in the report; no infeasible key
    is printed on a plot where every point is feasible."""
    from memsim.studies.labels import axis_label, metric_label
    from memsim.studies.report import human

    assert metric_label("mfu") == ("MFU (%)", 100.0)
    assert metric_label("peak_bytes.hbm")[0] == "peak hbm (GiB)"
    assert axis_label("hardware.tiers.dram.capacity") == "dram capacity"
    assert human("mfu", 0.4123) == "41.2%"
    path = _study(tmp_path, "  - {key: inference.batch_size, values: [1, 2]}\n",
                  "metrics: [feasible, tokens_per_s, mfu]\n")
    code, doc = memsim("study", str(path), "-o", str(tmp_path / "out"), "-j", "1")
    assert code == 0 and doc["statuses"] == {"ok": 2}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "%" in report


@pytest.mark.slow
def test_study_metric_typo_is_exit_2(tmp_path: Path) -> None:
    path = _study(tmp_path, "  - {key: inference.batch_size, values: [1]}\n",
                  "metrics: [feasible, tokens_per_sec]\n")
    code, doc = memsim("study", str(path), "-o", str(tmp_path / "out"), "-j", "1")
    assert code == 2 and doc["key"] == "metrics" and "did you mean 'tokens_per_s'" in doc["error"]
