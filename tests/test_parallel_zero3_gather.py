"""ZeRO-3's gather granularity: one collective per layer, or one per parameter tensor (each
paying the ring's latency), as DeepSpeed 0.3.x issued them."""

from __future__ import annotations

import pytest

from memsim.hardware import load_system
from memsim.hardware.collectives import collective_time
from memsim.sim import simulate
from memsim.sim.parallel import Costs
from memsim.workloads import build_trace
from memsim.workloads.models import parse_config
from memsim.workloads.parallel import Layout
from memsim.workloads.parallel_work import gather_per_tensor, layer_param_tensors, rank_work
from memsim.workloads.spec import Workload

GPT = parse_config({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 128,
                    "n_positions": 32, "n_inner": 256, "activation_function": "gelu_new"}, name="gpt-tiny")


def test_parameter_tensors_of_a_layer_by_hand():
    # GPT-2: fused c_attn, c_proj, c_fc, c_proj (4 weights, 4 biases), two LayerNorms (w, b each)
    assert layer_param_tensors(GPT) == 12
    # a Llama-style layer: q, k, v, o, gate, up, down and two RMSNorm weights, no biases
    llama = parse_config({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
                          "vocab_size": 128}, name="llama-tiny")
    assert layer_param_tensors(llama) == 9


def test_per_tensor_gathers_carry_their_count_and_keep_the_bytes():
    work = rank_work(GPT, Layout(data=4), micro_batch=1, seq_len=8, microbatches=1, precision="bf16",
                     optimizer="adamw", zero_stage=3, flash=True)
    before = [o for o in work["layer_fwd"] + work["layer_bwd"] if o["name"].startswith("zero3_gather")]
    gather_per_tensor(work, GPT)
    after = [o for o in work["layer_fwd"] + work["layer_bwd"] if o["name"].startswith("zero3_gather")]
    assert [o["bytes"] for o in after] == [o["bytes"] for o in before] and len(after) == 2
    assert {o["calls"] for o in after} == {12}
    # other collectives are untouched
    assert all("calls" not in o for o in work["layer_fwd"] if not o["name"].startswith("zero3_gather"))


def test_a_split_gather_costs_each_call_its_latency():
    s = load_system("a100-80gb-sxm", ["hardware.nodes=16"])
    layout = Layout(data=128)
    cost = Costs(s, layout, "bf16", 25e9)
    op = {"unit": "comm", "coll": "all_gather", "bytes": 1.2e9, "group": "data", "mode": "prefetch"}
    one = cost(op)
    twelve = cost(dict(op, calls=12))
    assert one == pytest.approx(collective_time(s, "all_gather", 1.2e9, 128))
    assert twelve == pytest.approx(12 * collective_time(s, "all_gather", 1e8, 128))
    # same bytes, 11 more rings of 127 hops: exactly 11 · 127 hop latencies more
    assert twelve - one == pytest.approx(11 * 127 * s.network.latency)


def test_tensor_granularity_slows_a_gather_bound_step():
    s = load_system("a100-80gb-sxm", ["hardware.nodes=4"])
    base = {"micro_batch": 1, "seq_len": 1024, "grad_accum": 1, "zero_stage": 3, "precision": "fp16",
            "parallel": {"data": 32}}
    layer = simulate(s, build_trace(Workload(name="z3", model="llama-3-8b", training=base)))
    tensor = simulate(s, build_trace(Workload(name="z3", model="llama-3-8b",
                                              training={**base, "zero3_gather": "tensor"})))
    assert layer.parallel is not None and tensor.parallel is not None
    assert tensor.step_time_s > layer.step_time_s
    assert tensor.parallel["exposed_comm_s"] >= layer.parallel["exposed_comm_s"]
