"""Tensor-parallel communication overlapped with its GEMMs (Megatron-Core's --tp-comm-overlap)."""

from __future__ import annotations

import pytest

from memsim.errors import SpecError
from memsim.hardware import load_system
from memsim.sim import simulate
from memsim.sim.parallel import Costs, run_pass
from memsim.workloads import build_trace
from memsim.workloads.parallel import Layout
from memsim.workloads.parallel_work import layer_ops, overlap_tp_comm
from memsim.workloads.spec import Workload
from tests.test_parallel_accounting import TINY


def test_each_sp_collective_sits_beside_one_gemm():
    fwd, bwd = layer_ops(TINY, Layout(tensor=2, sequence_parallel=True), b=2, s=4, e=2, flash=True,
                         zero_stage=0)
    work = overlap_tp_comm({"layer_fwd": fwd, "layer_bwd": bwd})
    for ops in (work["layer_fwd"], work["layer_bwd"]):
        comms = [i for i, o in enumerate(ops) if o["unit"] == "comm"]
        assert comms and all(ops[i]["mode"] == "overlap" for i in comms)
        assert all(ops[i + 1].get("kind") == "matmul" for i in comms)  # the GEMM it runs beside
    # the forward reduce-scatter of out_proj now runs with out_proj, not after it
    names = [o["name"] for o in work["layer_fwd"]]
    assert names.index("tp_attn_rs") == names.index("out_proj") - 1
    # nothing lost or duplicated
    assert sorted(o["name"] for o in fwd) == sorted(names)


def test_an_overlapped_pass_costs_the_longer_of_gemm_and_collective():
    s = load_system("h100-sxm")
    lay = Layout(tensor=8, sequence_parallel=True)
    cost = Costs(s, lay, "bf16", 50e9)
    gemm = {"unit": "gpu", "name": "g", "kind": "matmul", "phase": "forward", "flops": 2e12, "bytes": 1e8,
            "rows": 8192, "shape": (8192, 8192, 8192)}
    ag = {"unit": "comm", "name": "ag", "coll": "all_gather", "bytes": 6e8, "group": "tensor", "mode": "sync"}
    blocking = run_pass([ag, gemm], cost).end
    beside = run_pass(overlap_tp_comm({"layer_fwd": [ag, gemm], "layer_bwd": []})["layer_fwd"], cost).end
    assert blocking == pytest.approx(cost(ag) + cost(gemm))
    assert beside == pytest.approx(max(cost(ag), cost(gemm)))


def _w(**extra) -> Workload:
    t = {"micro_batch": 1, "seq_len": 4096, "grad_accum": 8, "zero_stage": 1,
         "parallel": {"tensor": 8, "pipeline": 2}, "sequence_parallel": True, **extra}
    return Workload(name=f"tpo-{sorted(extra.items())}", model="llama-3-8b", training=t)


def test_overlap_shortens_the_step_and_its_exposed_comm():
    s = load_system("h100-sxm", ["hardware.nodes=2"])
    plain = simulate(s, build_trace(_w()))
    over = simulate(s, build_trace(_w(tp_comm_overlap=True)))
    assert over.step_time_s < plain.step_time_s
    assert over.parallel["exposed_comm_s"] < plain.parallel["exposed_comm_s"]
    assert over.breakdown["compute"] == pytest.approx(plain.breakdown["compute"])


def test_overlap_needs_sequence_parallelism():
    with pytest.raises(SpecError) as err:
        build_trace(_w(sequence_parallel=False, tp_comm_overlap=True))
    assert err.value.exit_code == 2 and "tp_comm_overlap" in str(err.value)
