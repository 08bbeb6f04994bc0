"""Running studies for real (memsim's own workloads, planner and simulator; nothing faked):
failing points recorded, interruption and resume, local vs Ray point by point, outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memsim.cli import app
from memsim.studies import run_study

# A cheap real case: Llama-2-7B decoding a few tokens on one H100 (small trace, quick simulation).
WORKLOAD = """\
name: tiny-infer
model: llama-2-7b
inference: {batch_size: 1, prompt_len: 128, gen_len: 4, dtype: fp16}
"""


def study_file(folder: Path, axes: str, run: str = "simulate", extra: str = "") -> Path:
    (folder / "tiny.yaml").write_text(WORKLOAD)
    path = folder / "study.yaml"
    planner = ", planner: mip, time_limit: 2" if run == "plan" else ""  # simulate: all resident
    path.write_text(f"name: tiny\nrun: {run}\n"
                    f"base: {{hardware: h100-sxm, workload: tiny.yaml{planner}}}\n"
                    f"axes:\n{axes}"
                    "metrics: [feasible, step_time_s, tokens_per_s, peak_bytes.hbm]\n" + extra)
    return path


BATCH_AXIS = "  - {key: inference.batch_size, values: [1, 2, 4, 8]}\n"
MIXED_AXIS = ("  - {key: hardware.tiers.hbm.capacity, values: [80GiB, 4GiB]}\n"
              "  - {key: inference.batch_size, values: [1, 0]}\n")


def mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "points").glob("*.json")}


@pytest.mark.slow
def test_failing_points_are_recorded_and_the_study_completes(tmp_path: Path):
    run = run_study(study_file(tmp_path, MIXED_AXIS), tmp_path / "out", jobs=1)
    by = {(r["hardware.tiers.hbm.capacity"], r["inference.batch_size"]): r for r in run.rows}
    assert by[("80GiB", 1)]["status"] == "ok" and by[("80GiB", 1)]["tokens_per_s"] > 0
    assert by[("4GiB", 1)]["status"] == "infeasible"  # 13 GB of fp16 weights cannot sit in 4 GiB
    assert by[("4GiB", 1)]["feasible"] is False and "hbm" in by[("4GiB", 1)]["reason"]
    for hbm in ("80GiB", "4GiB"):  # batch 0 is rejected by the workload schema: the key is named
        assert by[(hbm, 0)]["status"] == "bad_input"
        assert "inference.batch_size" in by[(hbm, 0)]["reason"]
    assert run.best["point"] == by[("80GiB", 1)]["point"]
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert [r["status"] for r in rows] == [r["status"] for r in run.rows]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Best point" in report and "## Why points failed" in report
    assert any(p.suffix == ".png" for p in (tmp_path / "out").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])  # in-process, and the process pool
def test_interrupted_study_resumes_without_recomputing(tmp_path: Path, jobs: int):
    path, out = study_file(tmp_path, BATCH_AXIS), tmp_path / "out"
    seen: list[int] = []

    def stop_after_two(done: int, total: int) -> None:
        seen.append(done)
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(path, out, jobs=jobs, progress=stop_after_two)
    finished = mtimes(out)
    assert len(finished) == 2 and not (out / "results.csv").exists()

    run = run_study(path, out, jobs=1)
    assert (run.computed, run.cached) == (2, 2)
    log = json.loads((out / "run.json").read_text())
    assert log["computed"] == 2 and not set(log["computed_hashes"]) & {n[:-5] for n in finished}
    after = mtimes(out)
    assert all(after[name] == mtime for name, mtime in finished.items())  # untouched, not rewritten
    assert len(after) == 4 and all(r["status"] == "ok" for r in run.rows)

    # A new axis value computes only the new point.
    path.write_text(path.read_text().replace("[1, 2, 4, 8]", "[1, 2, 4, 8, 16]"))
    again = run_study(path, out, jobs=1)
    assert (again.computed, again.cached) == (1, 4)


@pytest.mark.slow
def test_outputs_are_deterministic(tmp_path: Path):
    path = study_file(tmp_path, BATCH_AXIS)
    first = run_study(path, tmp_path / "a", jobs=1)
    second = run_study(path, tmp_path / "b", jobs=2)  # the process pool: same bytes
    for name in ("results.csv", "report.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for row in first.rows:
        key = f"{row['hash']}.json"
        a, b = tmp_path / "a" / "points" / key, tmp_path / "b" / "points" / key
        assert a.read_bytes() == b.read_bytes()
    assert second.computed == 4


@pytest.mark.slow
def test_local_and_ray_backends_agree_point_by_point(tmp_path: Path):
    pytest.importorskip("ray")
    # The planner offloads weights when HBM is short; 256 MiB cannot hold one layer's working set.
    axes = MIXED_AXIS.replace("[80GiB, 4GiB]", "[80GiB, 256MiB]")
    path = study_file(tmp_path, axes, run="plan")
    local = run_study(path, tmp_path / "local", jobs=2)
    ray_run = run_study(path, tmp_path / "ray", backend="ray", jobs=2)
    assert ray_run.computed == len(ray_run.rows) == len(local.rows) == 4
    for a, b in zip(local.rows, ray_run.rows, strict=True):
        assert a == b
    assert {r["status"] for r in local.rows} == {"ok", "infeasible", "bad_input"}


def test_cli_json_is_one_document(tmp_path: Path):
    path = study_file(tmp_path, BATCH_AXIS, extra="costs: {usd_per_gpu_hour: 2.5}\n"
                      "target: {metric: tokens_per_s, at_least: 1, minimize: cost}\n")
    result = CliRunner().invoke(app, ["study", str(path), "-o", str(tmp_path / "out"), "-j", "1", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["points"] == 4 and doc["statuses"] == {"ok": 4}
    assert doc["best"]["usd_per_hour"] == pytest.approx(2.5)  # its 1 GPU of 8: 1/8 of 8 × 2.5
    assert all(r["usd_per_mtoken"] > 0 for r in doc["rows"])


def test_a_metric_no_result_has_is_reported_with_a_did_you_mean(tmp_path: Path):
    path = study_file(tmp_path, "  - {key: inference.batch_size, values: [1]}\n")
    path.write_text(path.read_text().replace("peak_bytes.hbm]", "peak_bytes.hbm, tokens_per_sec]"))
    run = run_study(path, tmp_path / "out", jobs=1)
    assert run.rows[0]["status"] == "ok" and run.rows[0]["tokens_per_sec"] is None
    assert run.warnings == ["metric 'tokens_per_sec' is in no result (did you mean 'tokens_per_s'?)"]


@pytest.mark.slow
def test_an_example_study_runs_with_one_command(tmp_path: Path):
    out = tmp_path / "wall"
    result = CliRunner().invoke(app, ["study", "memory-wall-trend", "-o", str(out), "-j", "2"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    years = {r["year"] for r in rows}
    assert years == {"2024", "2026", "2028", "2030"}
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["plot0-mfu-vs-year.png", "plot1-tokens-per-s-vs-year.png"]
    assert "## Best point" in (out / "report.md").read_text()


@pytest.mark.slow
def test_ctrl_c_stops_running_workers_at_once(tmp_path: Path):
    """Ctrl-C must not wait for running points (a worker inside HiGHS would only notice the signal
    when its solve returns): the workers are terminated, finished points are kept, resume works."""
    import multiprocessing
    import signal

    path, out = study_file(tmp_path, BATCH_AXIS), tmp_path / "out"

    def stop_after_one(done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(path, out, jobs=2, progress=stop_after_one)
    children = multiprocessing.active_children()
    for child in children:
        child.join(timeout=10)
    assert not any(child.is_alive() for child in children)
    assert any(child.exitcode == -signal.SIGTERM for child in children)  # stopped, not drained
    assert len(mtimes(out)) >= 1
    run = run_study(path, out, jobs=1)
    assert run.cached >= 1 and len(run.rows) == 4 and all(r["status"] == "ok" for r in run.rows)


def test_cost_follows_the_gpus_a_plan_uses(tmp_path: Path):
    """One H100 of an 8-GPU node pays an eighth of the node's price: its $/Mtoken is that of the
    GPU whose throughput it is (the whole node's price made an H100 look 8× too expensive)."""
    from memsim.hardware import load_system

    path = study_file(tmp_path, "  - {key: inference.batch_size, values: [1]}\n")
    run = run_study(path, tmp_path / "o", jobs=1)
    node = load_system("h100-sxm")
    (row,) = run.rows
    assert row["status"] == "ok"
    assert row["usd_per_hour"] == pytest.approx(node.usd_per_hour / node.gpu.count)
    assert row["usd_per_mtoken"] == pytest.approx(row["usd_per_hour"] / (row["tokens_per_s"] * 3600) * 1e6,
                                                  rel=1e-4)
