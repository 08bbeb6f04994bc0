"""Planning traced modules: staging keeps the graph's meaning, the MILP fits where resident does
not and simulates no slower than the checkpointing baselines, and ``memsim plan`` runs on a trace.

Example modules are the tracer's own (``torch_examples``), sized so their activations matter
beside the runtime's reserved HBM; each budget lies between what ``resident`` needs and what
the leanest uniform policy (recompute or offload every stage) needs, both simulated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache

import pytest
import torch

from memsim.api import plan
from memsim.contracts.plan import Plan
from memsim.errors import Infeasible
from memsim.hardware import load_system
from memsim.planners import mip, traced
from memsim.sim import simulate
from memsim.workloads import load_trace
from memsim.workloads import torch_examples as ex
from memsim.workloads.stages import stage
from memsim.workloads.torch_trace import InputSpec, build_module, trace_module

EXAMPLES = {
    "mlp": (ex.mlp, {"d_in": 1024, "hidden": 4096, "depth": 6}, [InputSpec((8192, 1024))]),
    "gpt": (ex.gpt, {"vocab": 4096, "d_model": 512, "layers": 4, "heads": 8, "kv_heads": 8,
                     "ffn": 1376}, [InputSpec((8, 512), torch.int64)]),
    "transformer_block": (ex.transformer_block, {"d_model": 512, "heads": 8, "ffn": 2048},
                          [InputSpec((16, 512, 512))]),
    "convnet": (ex.convnet, {"channels": 64}, [InputSpec((256, 3, 32, 32))]),
}
GIB = 2**30


@cache
def _traced(name: str, train: bool = True):
    factory, kwargs, inputs = EXAMPLES[name]
    module = build_module(factory, name, None, kwargs)
    return trace_module(module, inputs, train=train, name=name)


def _system(capacity: int | None = None):
    sets = [f"hardware.tiers.hbm.capacity={capacity}"] if capacity else []
    return load_system("h100-sxm", sets)


def _budget(trace) -> tuple[int, int]:
    """(resident's simulated HBM peak, a budget halfway to the leanest uniform policy's)."""
    system = _system()
    need = simulate(system, trace, Plan()).peak_bytes["hbm"]
    lean = min(simulate(system, trace, p).peak_bytes["hbm"]
               for p in (Plan(activations="recompute"),
                         Plan(activations="offload", activation_tier="dram")))
    assert lean < need
    return need, (need + lean) // 2


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_staging_keeps_the_graph(name):
    raw = _traced(name)
    staged = stage(raw)
    assert stage(staged) is staged  # idempotent
    assert staged.num_ops == raw.num_ops and staged.flops == raw.flops
    assert staged.bytes_by_class() == raw.bytes_by_class()
    layers = staged.meta["layers"]
    assert 1 < layers == len(staged.meta["stages"])
    fwd = [b.first_layer for b in staged.blocks if b.name.startswith("forward")]
    bwd = [b.first_layer for b in staged.blocks if b.name.startswith("backward")]
    assert fwd == sorted(fwd) and bwd == sorted(bwd, reverse=True)  # stages never go back
    # renaming into stages changes no byte and no second of the resident step
    system = _system()
    a, b = simulate(system, raw, Plan()), simulate(system, staged, Plan())
    assert b.step_time_s == pytest.approx(a.step_time_s, rel=1e-9)
    assert b.peak_bytes == a.peak_bytes


# convnet's peak is its first stage's own backward at full resolution, which no stage policy
# lowers (recompute-all and offload-all peak where resident does): it has no such budget
@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt", "mlp", "transformer_block"])
def test_mip_fits_where_resident_does_not(name):
    trace = stage(_traced(name))
    need, budget = _budget(trace)
    system = _system(budget)
    report = plan(system, trace, "mip", time_limit=10)
    assert report.feasible and report.result.peak_bytes["hbm"] <= budget < need
    base = {b.name: b for b in report.baselines}
    assert set(base) == {"resident", "checkpoint-full", "checkpoint-sqrt"}
    assert not base["resident"].feasible
    info = report.plan.planner
    assert info.name == "mip" and not info.status.startswith("baseline:")  # the MILP's own plan
    assert info.solve_s is not None and info.solve_s < 60
    for b in base.values():
        if b.feasible:
            assert report.result.step_time_s <= b.step_time_s * (1 + 1e-9), b.name
    again = plan(system, trace, "mip", time_limit=10)  # deterministic
    assert again.plan.layer_policy == report.plan.layer_policy
    assert again.result.step_time_s == report.result.step_time_s
    # the model's estimate is the simulator's figure within a generous band
    assert info.estimate_s == pytest.approx(report.result.step_time_s, rel=0.25)
    print(f"{name}: budget {budget / GIB:.2f} GiB (resident needs {need / GIB:.2f}); mip "
          f"{report.result.step_time_s:.6g} s peak {report.result.peak_bytes['hbm'] / GIB:.2f} GiB "
          f"solve {info.solve_s:.3f} s; "
          + ", ".join(f"{b.name} {b.step_time_s or 'does not fit'}" for b in report.baselines))


def test_mip_keeps_everything_when_it_fits():
    trace = stage(_traced("mlp"))
    report = plan(_system(), trace, "mip", time_limit=10)
    assert report.plan.activations == "keep" and not report.plan.layer_policy
    resident = next(b for b in report.baselines if b.name == "resident")
    assert report.result.step_time_s == pytest.approx(resident.step_time_s, rel=1e-9)


def test_nothing_fits_is_infeasible_with_a_diagnosis():
    trace = stage(_traced("mlp"))
    weights = trace.bytes_by_class()["weight"]
    with pytest.raises(Infeasible) as err:
        plan(_system(weights), trace, "mip", time_limit=5)  # the weights alone fill the GPU
    diagnosis = err.value.diagnosis
    assert diagnosis.shortfalls and diagnosis.shortfalls[0].tier == "hbm"


def test_unstaged_training_graph_is_refused():
    from memsim.errors import SpecError

    with pytest.raises(SpecError, match="stages"):
        plan(_system(), _traced("mlp"), "mip", time_limit=5)


def test_forward_only_module_is_planned_resident():
    trace = _traced("mlp", train=False)
    report = plan(_system(), trace, "mip", time_limit=5)
    assert report.feasible and report.plan.activations == "keep"
    assert {b.name for b in report.baselines} == {"resident"}  # checkpointing needs a backward


def test_model_counts_recompute_and_offload_per_stage():
    trace = stage(_traced("gpt"))
    st = traced.stage_profile(mip.planning_view(_system(), trace), trace)
    assert st.count == trace.meta["layers"]
    assert all(r <= k for r, k in zip(st.held_recompute, st.held_keep, strict=True))  # C∪X ⊆ A∪C
    assert sum(st.held_recompute) < sum(st.held_keep)  # recompute frees bytes
    assert sum(st.held_offload) < sum(st.held_keep)
    assert sum(st.fwd_s) > 0 and sum(st.bwd_s) > sum(st.fwd_s)  # backward ~2x forward


@cache
def _llama_70b():
    module = build_module(ex.decoder, "decoder", torch.bfloat16, {"model": "llama-2-70b"})
    raw = trace_module(module, [InputSpec((2, 4096), torch.int64)], train=True, attention="flash")
    assert raw.meta["params"] == 68_976_648_192
    return stage(raw)


@pytest.mark.slow
def test_traced_70b_decoder_plan():
    """Llama-2-70B traced on meta (2x4096 tokens, flash attention): at 320 GiB of HBM resident
    overflows; the MILP fits and beats both checkpointing baselines in simulation."""
    trace = _llama_70b()
    assert trace.meta["layers"] >= 80
    budget = 320 * GIB
    report = plan(_system(budget), trace, "mip", time_limit=10)
    base = {b.name: b for b in report.baselines}
    assert report.feasible and report.result.peak_bytes["hbm"] <= budget
    assert not base["resident"].feasible
    assert not report.plan.planner.status.startswith("baseline:")
    for name in ("checkpoint-full", "checkpoint-sqrt"):
        assert base[name].feasible and report.result.step_time_s < base[name].step_time_s
    print(f"llama-2-70b 2x4096 @320GiB: mip {report.result.step_time_s:.6g} s peak "
          f"{report.result.peak_bytes['hbm'] / GIB:.1f} GiB solve {report.plan.planner.solve_s:.3f} s; "
          + ", ".join(f"{b.name} {b.step_time_s or 'does not fit'}" for b in report.baselines))


@pytest.mark.slow
def test_traced_70b_decoder_on_one_h100():
    """On one real 80 GB H100 nothing the baselines do fits (weights and gradients alone are
    257 GiB); the MILP homes most of both in DRAM, streams them per stage, and fits."""
    report = plan(_system(), _llama_70b(), "mip", time_limit=10)
    assert report.feasible and report.result.peak_bytes["hbm"] <= 80 * GIB
    assert not any(b.feasible for b in report.baselines)
    placement = report.plan.placement
    assert placement["weight"]["dram"] > 0.5 and placement["grad"]["dram"] > 0.5
    assert report.plan.planner.estimate_s == pytest.approx(report.result.step_time_s, rel=0.1)
    print(f"llama-2-70b 2x4096 on h100-sxm: mip {report.result.step_time_s:.6g} s peak "
          f"{report.result.peak_bytes['hbm'] / GIB:.1f} GiB, weights {placement['weight']}, "
          f"grads {placement['grad']}, estimate {report.plan.planner.estimate_s:.6g} s")


def _memsim(*args: str) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "memsim", *args, "--json"], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "80"}, timeout=600)
    return proc.returncode, json.loads(proc.stdout)  # the whole of stdout: one document


@pytest.mark.slow
def test_plan_cli_on_a_traced_module(tmp_path):
    path = tmp_path / "mlp.json"
    rc, doc = _memsim("trace", "memsim.workloads.torch_examples:mlp", "--arg", "d_in=1024",
                      "--arg", "hidden=4096", "--arg", "depth=6", "--input", "8192x1024",
                      "--train", "-o", str(path))
    assert rc == 0 and doc["path"] == str(path)
    need, budget = _budget(load_trace(path))
    rc, doc = _memsim("plan", "--hardware", "h100-sxm", "--workload", str(path),
                      "--set", f"hardware.tiers.hbm.capacity={budget}")
    assert rc == 0, doc
    assert doc["feasible"] and doc["kind"] == "module" and doc["planner"]["name"] == "mip"
    assert doc["peak_bytes"]["hbm"] <= budget < need
    base = {b["name"]: b for b in doc["baselines"]}
    assert base["resident"]["feasible"] is False
    assert all(doc["step_time_s"] <= b["step_time_s"] * (1 + 1e-9) for b in base.values() if b["feasible"])
    # the plan it printed is what simulate runs
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(doc["plan"]))
    rc, sim = _memsim("simulate", "--hardware", "h100-sxm", "--workload", str(path), "--plan",
                      str(plan_file), "--set", f"hardware.tiers.hbm.capacity={budget}")
    assert rc == 0 and sim["step_time_s"] == pytest.approx(doc["step_time_s"], rel=1e-9)
    # nothing fits: exit 3, still one JSON document, naming the tier
    rc, doc = _memsim("plan", "--hardware", "h100-sxm", "--workload", str(path),
                      "--set", "hardware.tiers.hbm.capacity=1GiB")
    assert rc == 3 and doc["exit_code"] == 3 and "hbm" in doc["error"]


@pytest.mark.slow
def test_simulate_hint_for_a_forward_only_module(tmp_path):
    """A forward-only trace has nothing for the planner to decide: the exit-3 hint says so
    instead of sending the user to `memsim plan --planner mip`."""
    path = tmp_path / "mlp-fwd.json"
    rc, _ = _memsim("trace", "memsim.workloads.torch_examples:mlp", "--arg", "d_in=1024",
                    "--arg", "hidden=4096", "--arg", "depth=6", "--input", "8192x1024", "-o", str(path))
    assert rc == 0
    rc, doc = _memsim("simulate", "--hardware", "h100-sxm", "--workload", str(path),
                      "--set", "hardware.tiers.hbm.capacity=64MiB")
    assert rc == 3
    hints = " ".join(doc["diagnosis"]["suggestions"])
    assert "--train" in hints and "--planner mip" not in hints
