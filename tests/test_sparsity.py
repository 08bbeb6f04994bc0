"""inference.sparsity (LLM in a flash): the trace builder and the simulator execute the knobs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from memsim.errors import SpecError
from memsim.hardware import load_system
from memsim.planners import Plan
from memsim.sim import simulate
from memsim.workloads import load_trace
from memsim.workloads.sparsity import NEURONS, fractions
from memsim.workloads.spec import Sparsity

OPT = str(Path(__file__).parent.parent / "studies" / "reproductions" / "opt-6.7b.json")
SPARSE = {"active_fraction": 0.1, "window": 5, "window_fraction": 0.24, "load_fraction": 0.024,
          "predictor_fraction": 0.0125}


def _workload(tmp_path: Path, sparsity: dict | None, gen: int = 4) -> Path:
    inf = {"batch_size": 1, "prompt_len": 16, "gen_len": gen, "dtype": "fp16"}
    if sparsity is not None:
        inf["sparsity"] = sparsity
    path = tmp_path / f"w{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump({"name": "opt-sparse", "model": OPT, "inference": inf}))
    return path


def _decode(trace, key: str):
    block = next(b for b in trace.blocks if b.name == "decode")
    return next(o for o in block.ops if o.name.split(".")[-1] == key)


def test_bytes_are_conserved_and_decode_ffn_is_sparse(tmp_path):
    dense = load_trace(_workload(tmp_path, None))
    sparse = load_trace(_workload(tmp_path, SPARSE))
    w = "L{layer}.weight"
    sp = sparse.meta["sparsity"]
    pred = sp["predictor_bytes_per_layer"]
    assert pred > 0
    # resident + the store outside the window = the dense layer + the predictor
    assert abs(sparse.tensors[w].bytes + sparse.tensors[NEURONS].bytes - dense.tensors[w].bytes
               - pred) <= 2
    ffn = sp["ffn_bytes_per_layer"]
    assert sparse.tensors[NEURONS].bytes == pytest.approx(0.76 * ffn, rel=1e-6)
    for key in ("mlp_up", "mlp_down"):
        assert _decode(sparse, key).flops == pytest.approx(0.1 * _decode(dense, key).flops)
    assert sp["loaded_bytes_per_token_layer"] == pytest.approx(0.024 * ffn, rel=1e-6)
    assert sp["read_bytes"] == 4096 * 2  # one d_model row in fp16: unbundled
    assert sparse.flops < dense.flops


def test_independent_activation_defaults():
    w, load = fractions(Sparsity(active_fraction=0.1, window=5))
    assert w == pytest.approx(1 - 0.9 ** 5)
    assert load == pytest.approx(0.1 * 0.9 ** 5)
    assert fractions(Sparsity(active_fraction=0.2)) == (0.2, 0.2)


def test_simulator_reads_new_neurons_from_the_neuron_tier(tmp_path):
    system = load_system("laptop-flash", ["hardware.overheads=false"])
    flash = system.tiers["flash"]
    runs = {}
    for bundling in (False, True):
        trace = load_trace(_workload(tmp_path, {**SPARSE, "bundling": bundling}))
        plan = Plan(placement={"weight": {"dram": 1.0}}, neuron_tier="flash", prefetch_depth=0)
        r = simulate(system, trace, plan)
        assert r.feasible
        busy = sum(v for k, v in r.link_busy.items() if "flash->" in k) * r.step_time_s
        sp = trace.meta["sparsity"]
        # every decode step reads the newly active neurons of every layer, at the tier's read
        # rate for reads of one row (one bundle)
        steps = trace.meta["gen_len"] - 1
        reads = sp["loaded_bytes_per_token_layer"] * trace.meta["layers"] * steps
        assert busy == pytest.approx(reads / flash.read_bandwidth(sp["read_bytes"]), rel=0.05)
        # the reads wait for the predictor on the attention output: they overlap no compute
        assert r.step_time_s >= 0.95 * (busy + r.breakdown["compute"])
        runs[bundling] = r
    assert runs[True].step_time_s < 0.8 * runs[False].step_time_s  # bigger reads, faster flash
    # without a neuron tier the store lives with the weights: nothing comes from flash
    trace = load_trace(_workload(tmp_path, SPARSE))
    r = simulate(system, trace, Plan(placement={"weight": {"dram": 1.0}}))
    assert not any(v for k, v in r.link_busy.items() if "flash->" in k)


def test_user_errors(tmp_path):
    with pytest.raises(SpecError):
        load_trace(_workload(tmp_path, {"active_fraction": 0.1, "window_fraction": 0.9,
                                        "load_fraction": 0.2}))
    system = load_system("laptop-flash")
    with pytest.raises(SpecError) as err:
        Plan(neuron_tier="tape").check(system.tiers)
    assert err.value.key == "neuron_tier"


def test_cli_simulates_a_sparse_workload(tmp_path):
    path = _workload(tmp_path, {**SPARSE, "bundling": True})
    proc = subprocess.run([sys.executable, "-m", "memsim", "simulate", "-H", "laptop-flash", "-w",
                           str(path), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out
    bad = _workload(tmp_path, {"active_fraction": 1.5})
    proc = subprocess.run([sys.executable, "-m", "memsim", "simulate", "-H", "laptop-flash", "-w",
                           str(bad), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "active_fraction" in proc.stdout + proc.stderr
