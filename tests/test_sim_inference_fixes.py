"""Regression tests for four inference bugs of the step simulator (each failed before its fix).

1. decode attention read its KV without fetching it when ``qkv`` had just appended to it in the
   same segment; 2. chunked prefill wrote the whole prompt's KV back every chunk; 3. with FlexGen's
   GPU batches ``prefetch_depth`` counted sub-batch segments, not layers; 4. a scratch buffer
   reused by every layer (``act``) got one instance per GPU batch, alive for the whole step.
Hand-sized cases use ``make_system`` (GPU ↔ DRAM at 10 GB/s, 5 us latency); the catalog cases
check the figures the planner engineer found.
"""

from __future__ import annotations

import pytest

import memsim
from memsim.contracts.plan import Plan
from memsim.sim import simulate
from memsim.sim.engine import StepEngine
from memsim.sim.program import build_program
from memsim.workloads.trace import Block, Op, Tensor, Trace
from tests.conftest import GB, make_system

L = "L{layer}."
TOKEN = 1000  # KV bytes per token (one layer, the whole batch)


def qkv_attention_trace(layers: int = 1, prompt: int = 512, gen: int = 4, chunks: int = 1,
                        act: int = 1000, weight: int = 10**6, flops: float = 1e9) -> Trace:
    """The shape of ``memsim.workloads.inference``: ``qkv`` appends to ``L{layer}.kv`` and a
    separate ``attention`` op reads it; a scratch ``act`` written and read within each layer."""
    tensors = {n: Tensor(n, b, c) for n, b, c in [
        ("hidden", act, "activation"), ("act", act, "activation"),
        (L + "weight", weight, "weight"), (L + "kv", (prompt + gen) * TOKEN, "kv")]}

    def layer(phase: str) -> list[Op]:
        return [
            Op(L + "qkv", "matmul", phase, flops, weight + act, act, ("hidden", L + "weight"),
               ("act", L + "kv")),
            Op(L + "attention", "attention", phase, flops / 10, act, act, ("act", L + "kv"), ("act",)),
            Op(L + "mlp", "matmul", phase, flops, weight + act, act, ("act", "hidden", L + "weight"),
               ("hidden",)),
        ]

    blocks = [
        Block("embed", [Op("embed", "embedding", "prefill", 0.0, act, act, (), ("hidden",))],
              iterations=chunks),
        Block("prefill", layer("prefill"), repeat=layers, iterations=chunks),
        Block("decode", layer("decode"), repeat=layers, iterations=gen - 1),
    ]
    meta = {"kind": "inference", "layers": layers, "dtype": "bf16", "batch_size": 8,
            "prompt_len": prompt, "gen_len": gen, "tokens_per_step": 8 * gen,
            "flops_per_step": 1.0, "data_parallel": 1, "prefill_chunk": prompt // chunks,
            "prefill_chunks": chunks}
    return Trace("qkv-attention", "inference", tensors, blocks, meta)


def copies(trace: Trace, plan: Plan, system=None) -> list[tuple[str, str, int, float, float]]:
    system = system or make_system()
    engine = StepEngine(system, build_program(trace, system, plan), plan.prefetch_depth, False,
                        trace.meta)
    engine.run()
    return engine.clock.copier.log


# -- 1. KV is fetched for decode attention ----------------------------------------------------


def test_decode_attention_fetches_the_context_its_segment_did_not_write():
    log = copies(qkv_attention_trace(), Plan(placement={"kv": {"dram": 1.0}}))
    into = sorted(c[2] for c in log if (c[0], c[1]) == ("dram", "hbm"))
    out = sorted(c[2] for c in log if (c[0], c[1]) == ("hbm", "dram"))
    # decode iteration i attends over prompt + i + 1 tokens; the segment appended the last one
    assert into == [512 * TOKEN, 513 * TOKEN, 514 * TOKEN]
    assert out == [TOKEN, TOKEN, TOKEN, 512 * TOKEN]  # the prompt once, then one token a step


def test_cpu_attention_reads_a_dram_kv_cache_where_it_lives():
    log = copies(qkv_attention_trace(), Plan(placement={"kv": {"dram": 1.0}}, cpu_attention=True))
    assert not [c for c in log if (c[0], c[1]) == ("dram", "hbm") and c[2] >= TOKEN * 100]
    assert sorted(c[2] for c in log if c[2] >= TOKEN) == sorted(
        [512 * TOKEN] + [TOKEN] * 3 + [1000] * 6)  # KV write-backs; act to the CPU and back


@pytest.fixture(scope="module")
def llama8b():
    return memsim.load_system("h100-sxm"), memsim.build_trace(memsim.load_workload("llama3-8b-infer"))


@pytest.mark.slow
def test_llama3_8b_kv_in_dram_costs_its_pcie_traffic(llama8b):
    system, trace = llama8b
    hbm = simulate(system, trace, Plan())
    dram = simulate(system, trace, Plan(placement={"kv": {"dram": 1.0}}))
    meta = trace.meta
    p, g, layers = meta["prompt_len"], meta["gen_len"], meta["layers"]
    per_token = trace.tensors["L{layer}.kv"].bytes / (p + g) * layers  # whole batch, all layers
    steps = g - 1
    fetched = per_token * sum(p + i for i in range(steps))  # ≈ KV at mean context × steps
    link = next(lk for lk in system.links if set(lk.ends) == {"hbm", "dram"})
    expected = fetched / link.rate("dram")  # PCIe 5 x16 at its 0.8 efficiency
    assert dram.link_busy["pcie-gpu:dram->hbm"] * dram.step_time_s == pytest.approx(expected, rel=0.1)
    assert 0.7 * expected < dram.step_time_s - hbm.step_time_s < 1.3 * expected
    cpu = simulate(system, trace, Plan(placement={"kv": {"dram": 1.0}}, cpu_attention=True))
    # next to its KV the CPU attention moves only activations over PCIe, not the cache
    assert cpu.link_busy.get("pcie-gpu:dram->hbm", 0.0) * cpu.step_time_s < 0.01 * expected


# -- 2. chunked prefill moves one chunk's KV per chunk -----------------------------------------


def test_chunked_prefill_writes_back_its_chunk_and_reads_the_context_so_far():
    log = copies(qkv_attention_trace(gen=2, chunks=4), Plan(placement={"kv": {"dram": 1.0}}))
    chunk = 128 * TOKEN
    out = sorted(c[2] for c in log if (c[0], c[1]) == ("hbm", "dram"))
    into = sorted(c[2] for c in log if (c[0], c[1]) == ("dram", "hbm"))
    assert out == [TOKEN] + [chunk] * 4  # each chunk its own KV; the decode step one token
    assert into == [chunk, 2 * chunk, 3 * chunk, 512 * TOKEN]  # chunk i reads the i before it


# -- 3. prefetch depth counts layers under FlexGen's block schedule ---------------------------


def test_flexgen_prefetches_the_next_layers_weights_during_the_whole_layer():
    """3 layers × 4 GPU batches; weights 3 GB in DRAM (0.3 s), each sub-batch 0.1 s. Layer j+1's
    weights load while all four sub-batches of layer j compute: only layer 0's load is exposed."""
    w, f = 3 * GB, 0.1 * 50e12  # 0.1 s per sub-batch op at 50 TFLOP/s (100 × 0.5 efficiency)
    tensors = {L + "weight": Tensor(L + "weight", w, "weight"),
               "hidden": Tensor("hidden", 4000, "activation")}
    ops = [Op(L + "mm", "matmul", "prefill", 4 * f, w, 4000, ("hidden", L + "weight"), ("hidden",))]
    blocks = [Block("embed", [Op("embed", "embedding", "prefill", 0.0, 0, 4000, (), ("hidden",))]),
              Block("layers", ops, repeat=3)]
    trace = Trace("fg", "inference", tensors, blocks, {"data_parallel": 1, "batch_size": 4})
    plan = Plan(placement={"weight": {"dram": 1.0}}, gpu_batch_size=1, num_gpu_batches=4)
    r = simulate(make_system(), trace, plan)
    fetch, sub = 5e-6 + 0.3, 0.1 + 10e-6
    embed = 10e-6 * 4  # the four GPU batches' embedding (launch overhead only)
    assert r.step_time_s == pytest.approx(max(fetch, embed) + 3 * 4 * sub, rel=1e-6)
    assert r.breakdown["exposed_transfer"] == pytest.approx(fetch - embed, rel=1e-6)


def test_flexgen_write_back_drain_counts_layers():
    """2 GPU batches, depth 0: a sub-batch writes 2 GB of KV (0.2 s) after a 0.1 s op. A layer
    waits for the previous layer's write-backs; the second GPU batch does not wait for the first's."""
    tensors = {L + "kv": Tensor(L + "kv", 4 * GB, "kv")}
    ops = [Op(L + "write", "matmul", "prefill", 2 * 0.1 * 50e12, 0, 0, (), (L + "kv",))]
    trace = Trace("wb", "inference", tensors, [Block("layers", ops, repeat=3)],
                  {"data_parallel": 1, "batch_size": 2})
    plan = Plan(placement={"kv": {"dram": 1.0}}, prefetch_depth=0, gpu_batch_size=1, num_gpu_batches=2)
    r = simulate(make_system(), trace, plan)
    d, c = 0.1 + 10e-6, 5e-6 + 0.2
    # layer j+1 starts when layer j's two write-backs (FIFO on the link) are done: d + 2c after
    # layer j started; the last layer's two sub-batches, then its two write-backs
    assert r.step_time_s == pytest.approx(3 * d + 6 * c, rel=1e-6)


# -- 4. a scratch buffer is not multiplied by the GPU batches ----------------------------------


def test_scratch_activation_takes_one_gpu_batch_share():
    act = 30 * GB
    trace = qkv_attention_trace(layers=2, act=act)
    one = simulate(make_system(), trace, Plan())
    split = simulate(make_system(), trace, Plan(gpu_batch_size=2, num_gpu_batches=3))
    # hidden (the residual stream) is per GPU batch (3 × 1/3); act is one 1/3 buffer, reused
    assert split.peak_bytes["hbm"] == pytest.approx(one.peak_bytes["hbm"] - act + act / 3, rel=1e-3)


@pytest.mark.slow
def test_opt30b_flexgen_policy_holds_one_gpu_batch_of_scratch_on_the_gpu():
    system = memsim.load_system("t4-gcp")
    trace = memsim.build_trace(memsim.load_workload("opt-30b-flexgen"))
    plan = Plan(placement={"weight": {"hbm": 0.2, "dram": 0.8}, "kv": {"dram": 1.0},
                           "activation": {"dram": 1.0}},
                gpu_batch_size=48, num_gpu_batches=3, cpu_attention=True)
    prog = build_program(trace, system, plan)
    act = trace.tensors["act"].bytes  # 8.9 GiB at batch 144
    scratch = {t: info.bytes for t, info in prog.tensors.items() if t.startswith("act")}
    assert sum(scratch.values()) == act // 3  # one GPU batch's share, reused by every batch
    hidden = [info.bytes for t, info in prog.tensors.items() if t.startswith("hidden")]
    assert hidden == [trace.tensors["hidden"].bytes // 3] * 3  # state of each GPU batch
    assert simulate(system, trace, plan).feasible


@pytest.mark.slow
def test_opt175b_flexgen_policy_fits_a_t4():
    """``--percent 0 50 0 0 0 100 --gpu-batch-size 32 --num-gpu-batches 8 --cpu``."""
    system = memsim.load_system("t4-gcp")
    trace = memsim.build_trace(memsim.load_workload("opt-175b-flexgen"))
    plan = Plan(placement={"weight": {"dram": 0.5, "ssd": 0.5}, "kv": {"ssd": 1.0},
                           "activation": {"dram": 1.0}},
                gpu_batch_size=32, num_gpu_batches=8, cpu_attention=True)
    r = simulate(system, trace, plan)
    assert r.feasible, r.oom
    assert r.peak_bytes["hbm"] <= 16 * 10**9
