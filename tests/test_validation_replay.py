"""Replay and compare on a micro model: the numbers are sane and the accounting is exact.

Never a timing-accuracy assertion (shared machines are noisy): times are only checked to be
positive and finite; bytes moved and peak bytes are deterministic and are checked exactly.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

pytest.importorskip("torch")

from memsim.cli import app
from memsim.contracts.plan import Plan
from memsim.errors import SpecError
from memsim.hardware import load_system
from memsim.validation.calibrate import calibrate, write_system
from memsim.validation.compare import validate
from memsim.validation.replay import replay
from memsim.validation.suite import load_suite
from memsim.workloads import build_trace, load_workload

MICRO = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
         "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 4,
         "num_hidden_layers": 2, "vocab_size": 256, "max_position_embeddings": 256,
         "hidden_act": "silu", "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("micro")
    (root / "micro.json").write_text(json.dumps(MICRO))
    (root / "micro-train.yaml").write_text(yaml.safe_dump({
        "name": "micro-train", "model": "micro.json",
        "training": {"micro_batch": 1, "seq_len": 32, "precision": "fp32", "optimizer": "adamw"}}))
    (root / "micro-infer.yaml").write_text(yaml.safe_dump({
        "name": "micro-infer", "model": "micro.json",
        "inference": {"batch_size": 4, "prompt_len": 32, "gen_len": 4, "dtype": "fp32"}}))
    system = calibrate("cpu", quick=True, scratch=root)
    write_system(system, root / "machine.yaml")
    return {"root": root, "workload": root / "micro-train.yaml", "system": root / "machine.yaml",
            "infer": root / "micro-infer.yaml"}


@pytest.fixture(scope="module")
def trace(files):
    return build_trace(load_workload(files["workload"]))


PLANS = {
    "resident": Plan(),
    "weights-disk-recompute": Plan(placement={"weight": {"disk": 1.0}}, activations="recompute"),
    "activations-offload": Plan(activations="offload", activation_tier="disk"),
    "optimizer-half-disk": Plan(placement={"optimizer": {"dram": 0.5, "disk": 0.5}}),
    # every state streamed in and written back: write-backs race the next layers' fetches
    "states-disk": Plan(placement={"weight": {"disk": 1.0}, "grad": {"disk": 1.0},
                                   "optimizer": {"disk": 1.0}}, activations="recompute"),
}
# inference: the KV cache homed off the compute tier (decode appends, then attends over it), and
# FlexGen's block schedule (2 GPU batches of 2: prefetch and drain count layers, not sub-batches)
INFER_PLANS = {
    "infer-kv-disk": Plan(placement={"kv": {"disk": 1.0}}),
    "infer-flexgen": Plan(placement={"weight": {"disk": 1.0}, "kv": {"disk": 1.0}},
                          gpu_batch_size=2, num_gpu_batches=2),
}


@pytest.mark.slow
@pytest.mark.parametrize("plan_name", sorted(PLANS))
def test_replay_numbers_are_sane_and_bytes_match_the_simulator(files, trace, plan_name):
    from memsim.sim import simulate

    system = load_system(files["system"])
    plan = PLANS[plan_name]
    m = replay(system, trace, plan, repeats=2, warmup=1, scratch=files["root"])
    assert m.step_s > 0 and math.isfinite(m.step_s)
    assert m.compute_s > 0 and all(t >= 0 and math.isfinite(t) for _, t in m.ops)
    assert len(m.ops) >= trace.num_ops  # recompute adds ops, never drops any
    predicted = simulate(system, trace, plan)
    for tier, peak in predicted.peak_bytes.items():  # same program, same staging ring: exact,
        assert m.peak_range[tier] == (peak, peak), tier  # in every step, however copies race
    off_disk = [n for n, t in m.copy_bytes.items() if n.startswith("disk->")]
    if plan_name == "resident":
        assert m.copy_bytes == {}
    else:
        assert off_disk and m.copy_bytes[off_disk[0]] > 0
    assert not any(files["root"].glob("memsim-*")), "scratch files must be removed"


def test_weights_on_disk_are_read_for_forward_and_backward(files, trace):
    system = load_system(files["system"])
    layer_weights = sum(t.bytes for n, t in trace.tensors.items() if n.startswith("L{layer}") and
                        t.cls == "weight") * trace.meta["layers"]
    other = sum(t.bytes for n, t in trace.tensors.items() if "{layer}" not in n and t.cls == "weight")
    m = replay(system, trace, Plan(placement={"weight": {"disk": 1.0}}), repeats=3, warmup=0)
    assert m.warmup_s == [] and len(m.steps_s) == 3
    for tier, (low, high) in m.peak_range.items():
        assert low <= m.peak_bytes[tier] <= high
    # every layer's weights come in for its forward and again for its backward; the optimizer
    # overwrites weights whole, so it writes them back without reading them
    assert m.copy_bytes["dram->disk"] == layer_weights + other
    assert m.copy_bytes["disk->dram"] >= 2 * layer_weights


def test_plan_for_another_workload_is_bad_input(files, trace):
    system = load_system(files["system"])
    with pytest.raises(SpecError, match="workload"):
        replay(system, trace, Plan(workload="something-else"), repeats=1)
    plan = files["root"] / "other.yaml"
    plan.write_text(yaml.safe_dump({"workload": "llama2-7b-train", "fingerprint": "0123456789abcdef"}))
    result = CliRunner().invoke(app, ["validate", "--hardware", str(files["system"]), "--workload",
                                      str(files["workload"]), "--plan", str(plan)])
    assert result.exit_code == 2
    assert "workload" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_suite_and_validate_json(files, tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "micro", "repeats": 1, "warmup": 1, "rounds": 2, "workloads": {"w": str(files["workload"])},
        "plans": {"resident": {}, "wdisk": {"placement": {"weight": {"disk": 1.0}}}}}))
    assert [c.name for c in load_suite(suite).cases] == ["w/resident", "w/wdisk"]
    png = tmp_path / "plot.png"
    result = CliRunner().invoke(app, ["validate", "--hardware", str(files["system"]), "--suite",
                                      str(suite), "--plot", str(png), "--probe", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [c["name"] for c in doc["cases"]] == ["w/resident", "w/wdisk"]
    for case in doc["cases"]:
        assert case["predicted_s"] > 0 and case["measured_s"] > 0
        assert case["error"] == pytest.approx((case["predicted_s"] - case["measured_s"]) / case["measured_s"])
        # two rounds, each of one warm-up step (reported, not measured) and one timed step; the
        # case reports its median round (the upper of two), and the peak range covers both
        assert len(case["warmup_s"]) == 2 and case["steps_s"] == case["rounds_s"]
        assert case["measured_s"] == max(case["rounds_s"])
        for peak in case["peak_bytes"].values():
            assert peak["measured_min"] <= peak["measured"] <= peak["measured_max"]
    assert doc["median_abs_error"] >= 0 and set(doc["peak_bytes"]) == {"w/resident", "w/wdisk"}
    assert doc["cases"][0]["copy_busy"] == {}  # resident: nothing moves
    reads = doc["cases"][1]["copy_busy"]["disk->dram"]  # weights streamed from disk
    assert reads["predicted_s"] > 0 and reads["measured_s"] > 0 and reads["measured_Bps"] > 0
    assert png.stat().st_size > 1000
    # every round probed (memsim.validation.drift) and predicted at its rates; the case's
    # prediction is its median round's, and the calibrated prediction stays beside it
    for case in doc["cases"]:
        assert len(case["drift"]) == 2 and len(case["rounds_predicted_s"]) == 2
        assert all(v > 0 for d in case["drift"] for v in d.values())
        median = case["rounds_s"].index(case["measured_s"])
        assert case["predicted_s"] == case["rounds_predicted_s"][median]
        assert case["predicted_calibrated_s"] > 0
    assert doc["median_abs_error_calibrated"] >= 0
    assert not any("host buffers" in note for note in doc["notes"])  # calibrated on these pages


@pytest.mark.slow
def test_without_probe_every_round_is_predicted_at_calibrations_rates(files, tmp_path):
    """Also: a System calibrated on other host pages than the replay gets (huge pages or not,
    memsim.validation.diskio.aligned_buffer) says so, as its disk rates are another draw."""
    from memsim.validation.diskio import host_buffers

    doc = yaml.safe_load(files["system"].read_text())
    assert doc["calibration"]["host_buffers"] == host_buffers()
    other = "4 KiB pages" if host_buffers() != "4 KiB pages" else "2 MiB huge pages"
    doc["calibration"]["host_buffers"] = other
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(doc))
    result = subprocess.run(
        [sys.executable, "-m", "memsim", "validate", "--hardware", str(tmp_path / "other.yaml"),
         "--workload", str(files["workload"]), "--repeats", "1", "--warmup", "0",
         "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (case,) = report["cases"]
    assert case["drift"] == [] and case["predicted_calibrated_s"] is None
    assert "median_abs_error_calibrated" not in report
    assert any(other in note and "calibrate again" in note for note in report["notes"])


def test_step_counts_come_from_the_arguments_then_the_suite_then_the_defaults(files, tmp_path):
    from memsim.validation.compare import step_counts

    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"name": "n", "repeats": 4, "warmup": 0, "rounds": 5,
                                     "workloads": {"w": str(files["workload"])},
                                     "plans": {"resident": {}}}))
    loaded = load_suite(suite)
    assert step_counts(loaded) == (4, 0, 5)  # warmup 0 is the suite's choice, not "unset"
    assert step_counts(loaded, repeats=2, warmup=1, rounds=3) == (2, 1, 3)
    assert step_counts(None) == (3, 2, 1)


def test_suite_errors_name_the_key(tmp_path, files):
    suite = tmp_path / "bad.yaml"
    suite.write_text(yaml.safe_dump({"name": "bad", "workloads": {"w": str(files["workload"])},
                                     "plans": {"resident": {}}, "cases": ["w/residnt"]}))
    with pytest.raises(SpecError, match=r"cases\.0.*did you mean 'resident'"):
        load_suite(suite)
    suite.write_text(yaml.safe_dump({"name": "bad", "workloads": {"w": str(files["workload"])},
                                     "plans": {"p": {"placement": {"weight": {"nvme": 1.0}}}}}))
    with pytest.raises(SpecError, match="nvme"):
        validate(files["system"], suite=suite, repeats=1)
    suite.write_text(yaml.safe_dump({"name": "bad", "warmup": -1, "plans": {"resident": {}},
                                     "workloads": {"w": str(files["workload"])}}))
    with pytest.raises(SpecError, match="warmup"):
        load_suite(suite)


def test_validate_needs_exactly_one_of_workload_and_suite(files):
    result = CliRunner().invoke(app, ["validate", "--hardware", str(files["system"])])
    assert result.exit_code == 2 and "--workload" in result.output


@pytest.mark.parametrize("plan_name", ["weights-disk-recompute", "activations-offload",
                                       "optimizer-half-disk", *INFER_PLANS])
def test_replay_copies_what_the_simulator_copies_in_the_same_order(files, trace, plan_name):
    """Per copy direction, the replay makes the simulator's copies, same bytes, in the same order
    (both execute one Program and one fetch schedule). A fetch of an offloaded activation queues
    when its write-back lands, which depends on timing in both, so there only the copies
    themselves must agree. Inference: decode attention fetches the context its segment did not
    append (one read per decode layer and GPU batch), as the simulator does since its KV fix."""
    from memsim.sim.engine import StepEngine
    from memsim.sim.program import build_program

    system = load_system(files["system"])
    if plan_name in INFER_PLANS:
        plan, trace = INFER_PLANS[plan_name], build_trace(load_workload(files["infer"]))
    else:
        plan = PLANS[plan_name]
    engine = StepEngine(system, build_program(trace, system, plan), plan.prefetch_depth, False,
                        trace.meta)
    engine.run()
    simulated: dict[str, list[int]] = {}
    for src, dst, nbytes, _start, _end in engine.clock.copier.log:
        simulated.setdefault(f"{src}->{dst}", []).append(nbytes)
    m = replay(system, trace, plan, repeats=1)
    replayed = {name: [b for _, b in log] for name, log in m.copy_log.items()}
    if plan_name == "activations-offload":
        replayed = {k: sorted(v) for k, v in replayed.items()}
        simulated = {k: sorted(v) for k, v in simulated.items()}
    assert replayed == simulated
    if plan_name in INFER_PLANS:
        kv_reads = [b for t, b in m.copy_log["disk->dram"] if t.endswith(".kv") or ".kv#" in t]
        groups = plan.num_gpu_batches or 1
        decode_layers = (trace.meta["gen_len"] - 1) * trace.meta["layers"] * groups
        assert len(kv_reads) == decode_layers  # the context, fetched once per decode segment
        predicted = engine._result(0.0).peak_bytes
        assert m.peak_bytes["disk"] == predicted["disk"]  # the KV cache counts whole, as allocated


def test_a_copy_engine_runs_landed_before_anyone_sees_the_copy_done():
    """A written-back buffer goes back the moment its write lands (as in the simulator), not when
    the compute thread next polls: ``landed`` runs on the engine's thread before ``done`` is set."""
    from memsim.validation.engines import Engine, Job, wait

    order: list[str] = []
    engine = Engine("dram->disk")
    try:
        job = Job("t:dram->disk", 1, lambda _stream: order.append("copied"))
        job.landed = lambda: order.append("released")
        wait(engine.submit(job))
        assert order == ["copied", "released"]
        failing = Job("u:dram->disk", 1, lambda _stream: None)
        failing.landed = lambda: 1 / 0
        with pytest.raises(ZeroDivisionError):  # a failing callback surfaces in the waiter
            wait(engine.submit(failing))
    finally:
        engine.close()
