"""Parallel layouts simulated: one rank's work, its three streams, the pipeline, the step."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from memsim.contracts.plan import Plan
from memsim.hardware import load_system
from memsim.sim import simulate
from memsim.sim.parallel import run_pass
from memsim.sim.pipeline import order_interleaved, simulate_pipeline
from memsim.workloads import build_trace
from memsim.workloads.parallel import Layout
from memsim.workloads.parallel_work import layer_ops, rank_work
from memsim.workloads.spec import Workload
from tests.test_parallel_accounting import TINY


def _colls(ops, group=None):
    return [(o["name"], o["coll"], o["bytes"]) for o in ops
            if o["unit"] == "comm" and (group is None or o["group"] == group)]


def test_tp_layer_collectives_by_hand():
    # b=2, s=4 → 8 tokens × hidden 8 × 2 bytes = 128 bytes per TP all-reduce
    fwd, bwd = layer_ops(TINY, Layout(tensor=2), b=2, s=4, e=2, flash=True, zero_stage=0)
    assert _colls(fwd) == [("tp_attn_ar", "all_reduce", 128), ("tp_mlp_ar", "all_reduce", 128)]
    assert [c[1] for c in _colls(bwd)] == ["all_reduce", "all_reduce"]
    # sequence parallelism: all-gather before qkv / mlp_up, reduce-scatter after out_proj / mlp_down
    fwd, _ = layer_ops(TINY, Layout(tensor=2, sequence_parallel=True), b=2, s=4, e=2, flash=True,
                       zero_stage=0)
    names = [o["name"] for o in fwd]
    assert names.index("tp_attn_ag") == names.index("qkv") - 1
    assert names.index("tp_attn_rs") == names.index("out_proj") + 1
    assert [c[1] for c in _colls(fwd)] == ["all_gather", "reduce_scatter"] * 2
    # a TP rank's qkv matmul: 8 tokens × hidden 8 × (4 q + 2·2 kv dims)/... halved by TP
    qkv = next(o for o in fwd if o["name"] == "qkv")
    assert qkv["flops"] == 2 * 8 * 8 * (2 * 2 + 2 * 1 * 2)


def test_context_ring_and_zero3_gathers_by_hand():
    fwd, bwd = layer_ops(TINY, Layout(context=2, data=2), b=1, s=8, e=2, flash=True, zero_stage=3)
    # each CP rank holds 4 tokens; K and V of 2 heads of 2 dims: 4·2·4·2 = 64 bytes a chunk, 2 chunks
    ring = next(o for o in fwd if o["name"] == "cp_ring_kv")
    assert (ring["coll"], ring["bytes"], ring["mode"]) == ("all_gather", 128, "overlap")
    assert next(o for o in bwd if o["name"] == "cp_ring_dkv_bwd")["bytes"] == 256
    # ZeRO-3 gathers the whole layer (592 params · 2 bytes) before forward and backward
    gathers = [o for o in fwd + bwd if o["name"].startswith("zero3_gather")]
    assert [(o["bytes"], o["mode"]) for o in gathers] == [(1184, "prefetch")] * 2


def test_rank_work_stage_states_and_sends():
    work = rank_work(TINY, Layout(tensor=2, pipeline=2, data=2), micro_batch=2, seq_len=4, microbatches=4,
                     precision="bf16", optimizer="adamw", zero_stage=1, flash=True)
    s0, s1 = work["stages"]
    assert (s0["params"], s1["params"]) == (2 * 304 + 128, 2 * 304 + 8 + 128)  # test_tp2_pp2_by_hand
    assert s1["optimizer"] == 744 * 12 // 2  # ZeRO-1 over 2 data ranks
    # each TP rank sends half of one micro-batch's hidden states (scatter/gather), re-gathered on NVLink
    assert (work["p2p_bytes"], work["p2p_gather_bytes"]) == (2 * 4 * 8 * 2 / 2, 2 * 4 * 8 * 2)
    assert s0["param_gather"] == 736 * 2  # ZeRO-1 re-gathers the updated bf16 weights
    assert [g["coll"] for g in s0["grad_sync"]] == ["reduce_scatter"]  # the sharded optimizer's shard


def test_run_pass_streams_step_by_step():
    ops = [{"unit": "gpu", "name": "a", "d": 1.0},
           {"unit": "comm", "name": "tp", "mode": "sync", "d": 0.5},  # blocks the next kernel
           {"unit": "comm", "name": "ring", "mode": "overlap", "d": 2.0},  # beside the next kernel
           {"unit": "gpu", "name": "attn", "d": 1.0},
           {"unit": "comm", "name": "grads", "mode": "async", "d": 3.0},  # trails the pass
           {"unit": "gpu", "name": "b", "d": 1.0}]
    run = run_pass(ops, lambda op: op["d"])
    # a [0,1]; tp [1,1.5]; ring [1.5,3.5] beside attn [1.5,2.5] → attn ends at 3.5; grads [3.5,6.5]
    # on the collective stream while b runs [3.5,4.5]
    assert run.end == pytest.approx(4.5)
    assert run.compute_s == pytest.approx(3.0)
    assert run.comm_s == pytest.approx(5.5)
    assert run.async_end == pytest.approx(6.5)


def test_prefetch_is_issued_when_the_layer_before_begins():
    layer = [{"unit": "comm", "name": "gather", "mode": "prefetch", "d": 1.5},
             {"unit": "gpu", "name": "k", "d": 2.0}]
    run = run_pass(layer * 2, lambda op: op["d"])
    # gather0 [0,1.5] → k0 [1.5,3.5]; gather1 issued when k0 began: [1.5,3.0] → k1 [3.5,5.5]
    assert run.end == pytest.approx(5.5)


def test_interleaved_order_and_bubble():
    assert order_interleaved(2, 0, 4, 2)[:5] == [("F", 0, 0), ("F", 0, 1), ("F", 1, 0), ("F", 1, 1),
                                                  ("F", 0, 2)]
    one = simulate_pipeline(4, 8, 1.0, 2.0)
    two = simulate_pipeline(4, 8, 1.0, 2.0, schedule="interleaved", chunks=2)
    # Narayanan et al. 2021 §2.2.2: the bubble shrinks by the number of chunks
    assert one.bubble_fraction == pytest.approx(3 / 11)
    assert two.bubble_fraction == pytest.approx(3 / (2 * 8 + 3))
    log = {(e.stage, e.kind, e.chunk, e.micro): (e.start, e.end) for e in two.events}
    # chunk 1 of micro-batch 0 enters stage 0 after chunk 0 left the last stage (4 × 0.5 s)
    assert log[(0, "F", 1, 0)] == (2.0, 2.5)


def _workload(**training) -> Workload:
    base = {"micro_batch": 1, "seq_len": 2048, "grad_accum": 8, "zero_stage": 1,
            "parallel": {"tensor": 8, "pipeline": 4, "data": 2}, "sequence_parallel": True}
    return Workload(name="l70", model="llama-3-70b", training={**base, **training})


@pytest.fixture(scope="module")
def dgx8():
    return load_system("h100-sxm", ["hardware.nodes=8"])


def test_step_of_a_3d_layout(dgx8):
    r = simulate(dgx8, build_trace(_workload()))
    par = r.parallel
    assert r.feasible and par["roles_simulated"] == 3
    stages = par["per_stage"]
    # the event log's in-flight micro-batches: stage i holds P − i, and its activations with them
    assert [s["inflight_microbatches"] for s in stages] == [4, 3, 2, 1]
    assert stages[0]["activations"] == 4 * stages[3]["activations"]
    assert par["busiest_rank"]["stage"] == 0 and par["per_gpu_peak_bytes"] == r.peak_bytes["hbm"]
    assert 0.15 < par["bubble_fraction"] < 0.4  # (P−1)/(M+P−1) = 3/11 with uneven end stages
    assert 0.1 < r.mfu < 0.7 and par["exposed_comm_s"] > 0
    assert {"nccl", "tp_comm_buffer", "pp_send_recv"} <= set(r.reserved_bytes["hbm"])


def test_recompute_trades_memory_for_time(dgx8):
    trace = build_trace(_workload())
    keep, rec = simulate(dgx8, trace), simulate(dgx8, trace, Plan(activations="recompute"))
    assert rec.peak_bytes["hbm"] < keep.peak_bytes["hbm"]
    assert rec.step_time_s > keep.step_time_s and rec.breakdown["recompute"] > 0


def test_more_tensor_parallelism_lowers_the_per_gpu_peak(dgx8):
    peaks = [simulate(dgx8, build_trace(_workload(parallel={"tensor": t, "pipeline": 4, "data": 16 // t})))
             .peak_bytes["hbm"] for t in (2, 4, 8)]
    assert peaks[0] > peaks[1] > peaks[2]


@pytest.mark.slow
def test_simulate_json_keys_and_exit_3(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("name: l70\nmodel: llama-3-70b\ntraining:\n  seq_len: 2048\n  grad_accum: 8\n"
                    "  parallel: {tensor: 8, pipeline: 4, data: 2}\n")
    cmd = [sys.executable, "-m", "memsim", "simulate", "-H", "h100-sxm", "-w", str(path),
           "--set", "hardware.nodes=8", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    par = doc["parallel"]
    assert {"per_gpu_peak_bytes", "busiest_rank", "bubble_fraction", "exposed_comm_s", "mfu"} <= set(par)
    assert par["busiest_rank"]["rank"] in range(64) and 0 < doc["mfu"] < 1
    # without pipeline and tensor parallelism 70B does not fit an 80 GB GPU: exit 3 with a diagnosis
    small = ["--set", "training.parallel.tensor=2", "--set", "training.parallel.pipeline=1"]
    out = subprocess.run([*cmd, *small], capture_output=True, text=True, timeout=300)
    assert out.returncode == 3, out.stderr
    assert json.loads(out.stdout)["feasible"] is False


def test_zero_offload_moves_states_to_host_memory(dgx8):
    from memsim.planners.layouts import policies

    trace = build_trace(_workload())
    keep, off = simulate(dgx8, trace), simulate(dgx8, trace, policies(dgx8)["zero-offload"])
    stage = off.parallel["per_stage"][0]
    assert stage["optimizer"] == 0 and stage["grads"] == 0  # homed in DRAM, stepped on the CPU
    assert off.peak_bytes["hbm"] < keep.peak_bytes["hbm"] and off.peak_bytes["dram"] > 0


def test_plan_picks_the_fastest_policy_and_names_the_smallest_change(dgx8):
    from memsim.api import plan
    from memsim.errors import Infeasible

    trace = build_trace(_workload())
    report = plan(dgx8, trace)
    steps = [b.step_time_s for b in report.baselines if b.feasible]
    assert report.plan.planner.name == "parallel" and all(report.result.step_time_s <= s for s in steps)
    assert report.to_dict()["parallel"]["busiest_rank"]["stage"] == 0
    small = build_trace(_workload(parallel={"tensor": 1, "pipeline": 1, "data": 2, "context": 2}))
    with pytest.raises(Infeasible) as err:
        plan(dgx8, small)
    d = err.value.diagnosis
    assert d.shortfalls[0].tier == "hbm" and d.shortfalls[0].short_bytes > 0
    assert any("training.parallel" in s and "fits with" in s for s in d.suggestions)


@pytest.mark.slow
def test_layout_search_returns_the_fastest_layout_beside_the_named_ones():
    from memsim.api import SIMULATOR
    from memsim.planners.layouts import search_layouts

    system = load_system("h100-sxm", ["hardware.nodes=2"])
    w = Workload(name="l8", model="llama-3-8b", training={"seq_len": 2048, "zero_stage": 1})
    found = search_layouts(system, w, global_batch=32, max_pipeline=4, simulator=SIMULATOR)
    fits = [c for c in found if c.policy is not None]
    assert fits and fits[0].result.step_time_s == min(c.result.step_time_s for c in fits)
    assert {"megatron-tp8", "fsdp"} <= {c.named for c in found}
    assert all(c.layout.gpus == 16 for c in found)


@pytest.mark.slow
def test_405b_on_16k_gpus_recomputes_the_fewest_layers_that_fit():
    from memsim.api import plan
    from memsim.workloads import load_trace

    system = load_system("h100-sxm", ["hardware.nodes=2048"])
    report = plan(system, load_trace("llama3-405b-pretrain"))
    full = next(b for b in report.baselines if b.name == "checkpoint-full")
    assert report.feasible and report.plan.layer_policy  # some layers kept, some recomputed
    assert report.result.step_time_s < full.step_time_s
    assert report.result.parallel["layout"]["gpus"] == 16384


def test_context_and_expert_parallelism_divide_what_a_gpu_holds():
    system = load_system("h100-sxm", ["hardware.nodes=2"])
    recompute = Plan(activations="recompute")
    cp = [simulate(system, build_trace(Workload(name="cp", model="llama-3-8b", training={
        "seq_len": 65536, "zero_stage": 1, "parallel": {"tensor": 2, "context": c, "data": 8 // c}})),
        recompute) for c in (1, 2)]
    assert cp[1].peak_bytes["hbm"] < cp[0].peak_bytes["hbm"]  # half the sequence each
    assert cp[1].parallel["exposed_comm_s"] > 0
    ep = [simulate(system, build_trace(Workload(name="ep", model="mixtral-8x7b", training={
        "seq_len": 4096, "zero_stage": 1, "parallel": {"tensor": 2, "pipeline": 2, "data": 4, "expert": e}})),
        recompute).parallel["per_stage"][1]["weights"] for e in (1, 2)]
    assert 0.45 < ep[1] / ep[0] < 0.6  # the experts split two ways; attention and norms stay


@pytest.mark.slow
def test_plan_layouts_cli_returns_the_searched_layout(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("name: l8\nmodel: llama-3-8b\ntraining:\n  seq_len: 2048\n  grad_accum: 2\n"
                    "  zero_stage: 1\n  parallel: {data: 8}\n")
    cmd = [sys.executable, "-m", "memsim", "plan", "-H", "h100-sxm", "-w", str(path), "--planner", "layouts",
           "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["planner"]["name"] == "layouts" and doc["feasible"]
    assert doc["parallel"]["layout"]["gpus"] == 8
    assert any(b["name"].startswith(("megatron-tp8", "fsdp")) for b in doc["baselines"])
    assert all(b["step_time_s"] is None or b["step_time_s"] >= doc["step_time_s"] for b in doc["baselines"])
    assert "--set training.parallel.tensor=" in " ".join(doc["notes"])
    # the micro-batch was searched too: the report's trace runs the one chosen
    chosen = next(n for n in doc["notes"] if "--set training.micro_batch=" in n)
    micro = int(chosen.split("--set training.micro_batch=")[1].split()[0])
    assert f"micro-batch {micro}," in chosen
