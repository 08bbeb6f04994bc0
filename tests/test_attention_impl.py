"""Attention implementations that move more than the fused kernel: the fp32 cache of CPU
attention and HF's GQA expansion (repeat_kv), in the trace's bytes, the planner's estimate and
the simulated step (memsim.hardware.attention_impl)."""

from __future__ import annotations

import copy

import pytest

from memsim.contracts.plan import Plan
from memsim.hardware.attention_impl import attention_bytes, fresh_scale, query_group
from memsim.hardware.catalog import load_system
from memsim.planners.baselines import zero_inference
from memsim.planners.profile import op_seconds
from memsim.sim import simulate
from memsim.specio import validate
from memsim.workloads import build_trace, workload_architecture
from memsim.workloads.spec import Workload

# (model, query heads per KV head) from each model's config.json
MODELS = {"llama-2-7b": 1, "llama-3-8b": 4, "qwen2.5-7b": 7}


def _trace(model: str, batch: int = 8, gen: int = 8):
    workload = validate(Workload, {"name": f"{model}-t", "model": model, "inference": {
        "batch_size": batch, "prompt_len": 256, "gen_len": gen, "kv_bits": 16, "dtype": "fp16"}},
        "test")
    workload_architecture(workload)
    return build_trace(workload)


def _decode_attention(trace):
    return next(op for b in trace.blocks for op in b.ops
                if op.kind == "attention" and op.phase == "decode")


@pytest.mark.parametrize("model", MODELS)
def test_expansion_bytes_follow_the_query_group(model: str) -> None:
    trace = _trace(model)
    op = _decode_attention(trace)
    group = MODELS[model]
    assert query_group(op, trace) == group
    cache = op.bytes_read - op.bytes_written
    fused = attention_bytes(op, trace, on_cpu=False, gqa_expand=False)
    expanded = attention_bytes(op, trace, on_cpu=False, gqa_expand=True)
    assert fused == op.bytes_read + op.bytes_written
    if group == 1:  # repeat_kv returns the cache itself: multi-head attention moves nothing more
        assert expanded == fused
    else:  # read the cache, write group copies, the matmuls read them instead of the cache
        assert expanded - fused == pytest.approx(2 * group * cache)


def test_cpu_attention_streams_an_fp32_cache() -> None:
    trace = _trace("llama-3-8b")
    op = _decode_attention(trace)
    cache = op.bytes_read - op.bytes_written
    gpu = attention_bytes(op, trace, on_cpu=False, gqa_expand=False)
    cpu = attention_bytes(op, trace, on_cpu=True, gqa_expand=False)
    assert cpu - gpu == pytest.approx(cache)  # 4 bytes per element where the fp16 cache has 2
    both = attention_bytes(op, trace, on_cpu=True, gqa_expand=True)
    assert both - gpu == pytest.approx(2 * cache * (1 + 2 * 4) - cache)


def test_matmuls_and_training_attention_are_untouched() -> None:
    trace = _trace("llama-3-8b")
    for op in (o for b in trace.blocks for o in b.ops if o.kind != "attention"):
        assert attention_bytes(op, trace, on_cpu=True, gqa_expand=True) == op.bytes_read + op.bytes_written
    train = copy.deepcopy(_decode_attention(trace))
    train.phase = "forward"
    trained = attention_bytes(train, trace, on_cpu=True, gqa_expand=True)
    assert trained == train.bytes_read + train.bytes_written


def test_achieved_bandwidth_replaces_the_memory_side_for_its_kind_only() -> None:
    cpu = load_system("a6000-workstation").cpu
    assert cpu.bandwidth("attention", "decode") == pytest.approx(24.6e9)
    assert cpu.bandwidth("matmul", "decode") == pytest.approx(cpu.mem_bw * cpu.memory_efficiency)
    nbytes = 1e9
    assert cpu.op_time(0.0, nbytes, "fp32", "attention", "decode") == pytest.approx(
        nbytes / 24.6e9 + cpu.launch_overhead)
    assert cpu.op_time(0.0, nbytes, "fp32", "matmul", "decode") == pytest.approx(
        nbytes / (cpu.mem_bw * cpu.memory_efficiency) + cpu.launch_overhead)


def test_fresh_writes_cost_more_on_the_cpu_only() -> None:
    system = load_system("a6000-workstation")
    cpu = system.cpu
    scale = fresh_scale(cpu)
    assert scale == pytest.approx(cpu.bandwidth("attention", "decode") / cpu.first_touch_bw)
    assert scale > 1
    assert fresh_scale(cpu.model_copy(update={"first_touch_bw": None})) == 1.0
    trace = _trace("llama-3-8b")
    op = _decode_attention(trace)
    cache = op.bytes_read - op.bytes_written
    plain = attention_bytes(op, trace, on_cpu=True, gqa_expand=True)
    fresh = attention_bytes(op, trace, on_cpu=True, gqa_expand=True, fresh=scale)
    assert fresh - plain == pytest.approx(2 * cache * 4 * (scale - 1))  # the 4 copies, in fp32
    gpu = attention_bytes(op, trace, on_cpu=False, gqa_expand=True)
    assert attention_bytes(op, trace, on_cpu=False, gqa_expand=True, fresh=scale) == gpu


def test_planner_prices_cpu_attention_as_the_simulator_does() -> None:
    system = load_system("a6000-workstation")
    trace = _trace("llama-3-8b")
    op = _decode_attention(trace)
    sec = op_seconds(system, op, system.cpu, trace=trace)
    assert sec == pytest.approx(system.cpu.op_time(
        op.flops, attention_bytes(op, trace, on_cpu=True, gqa_expand=False), op.dtype, op.kind,
        op.phase, op.rows))
    assert sec > op_seconds(system, op, system.cpu)  # the fp16 bytes alone would be faster


def test_zero_inference_kv_offload_pays_the_expansion_on_the_cpu() -> None:
    """ZeRO-Inference's plan expands GQA; the CPU time of its decode attention grows with the
    query group, and a multi-head model's step is the same with or without the expansion."""
    system = load_system("a6000-workstation", ["hardware.overheads=false"])
    cpu_s = {}
    for model, group in MODELS.items():
        trace = _trace(model, batch=16)
        plan = zero_inference(system, trace, {"offload_param": "cpu", "kv_offload": True})
        assert plan.gqa_expand and plan.cpu_attention
        fused = copy.deepcopy(plan)
        fused.gqa_expand = False
        on, off = simulate(system, trace, plan), simulate(system, trace, fused)
        assert on.feasible and off.feasible
        cpu_s[model] = (on.breakdown["cpu"], off.breakdown["cpu"])
        if group == 1:
            assert on.step_time_s == pytest.approx(off.step_time_s, rel=1e-9)
        else:  # memory-bound: the cache, group copies written into fresh memory, read back
            want = 1 + group + group * fresh_scale(system.cpu)
            ratio = on.breakdown["cpu"] / off.breakdown["cpu"]
            assert 0.8 * want < ratio < 1.05 * want
            assert on.step_time_s > off.step_time_s
    ratios = [cpu_s[m][0] / cpu_s[m][1] for m in ("llama-3-8b", "qwen2.5-7b")]
    assert ratios[0] < ratios[1]  # a larger group costs more


def test_plan_files_carry_gqa_expand() -> None:
    plan = Plan.from_dict({"gqa_expand": True})
    assert plan.gqa_expand and Plan.from_dict(plan.to_dict()).gqa_expand
    assert Plan().gqa_expand is False
