"""The workload's ``weights: {bits, group_size}`` override, ``kv_cache_dtype`` and the
dequantization cost of weight-only quantized GEMMs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from memsim.hardware import load_system
from memsim.workloads import build_trace, load_workload, workload_architecture
from memsim.workloads.dequant import DEQUANT_FLOPS_PER_WEIGHT, DEQUANT_TILE_ROWS
from memsim.workloads.models import load_model, model_path


def _ops(trace, block):
    ops = next(b for b in trace.blocks if b.name == block).ops
    return {op.name.removeprefix("L{layer}."): op for op in ops}


def test_weights_override_equals_the_quantization_config_path(tmp_path):
    w = load_workload("llama3-8b-infer", ["weights.bits=4", "weights.group_size=128"])
    arch = workload_architecture(w)
    config = json.loads(model_path("llama-3-8b").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    path = tmp_path / "gptq.json"
    path.write_text(json.dumps(config))
    assert arch.weight_bytes(2) == load_model(str(path)).weight_bytes(2)
    # written out: per linear n/2 qweight + n/128 fp16 scales + n/128/2 packed zeros + 4·in g_idx
    n = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    g_idx = 32 * 4 * (4 * 4096 + 2 * 4096 + 14336)
    base = load_model("llama-3-8b")
    assert arch.weight_bytes(2) == (base.params - n) * 2 + n // 2 + n // 128 * 2 + n // 256 + g_idx
    trace = build_trace(w)
    layers = trace.tensors["L{layer}.weight"].bytes * 32
    assert layers == pytest.approx(arch.weight_bytes(2) - (base.embed_params + base.head_params) * 2, abs=32)
    awq = workload_architecture(load_workload("llama3-8b-infer", ["weights.bits=4", "weights.method=awq"]))
    assert awq.weight_bytes(2) == arch.weight_bytes(2) - g_idx


def test_kv_cache_dtype_fp8_is_one_byte_per_element():
    w = load_workload("qwen3-8b-infer", ["inference.kv_cache_dtype=fp8"])
    kv = build_trace(w).tensors["L{layer}.kv"]
    b, ctx = w.inference.batch_size, w.inference.prompt_len + w.inference.gen_len
    assert kv.bytes == b * ctx * 2 * 8 * 128 * 1 and kv.dtype == "fp8_e4m3"
    auto = build_trace(load_workload("qwen3-8b-infer", ["inference.kv_cache_dtype=auto"]))
    assert auto.tensors["L{layer}.kv"].bytes == 2 * kv.bytes
    serve = load_workload("qwen2.5-7b-serve", ["serving.kv_cache_dtype=fp8_e5m2"])
    assert serve.serving.kv_bits == 8
    assert build_trace(serve).meta["token_costs"]["kv_bytes_per_token"] == 28 * 2 * 4 * 128


def test_kv_cache_dtype_disagreeing_with_kv_bits_exits_2(tmp_path):
    spec = tmp_path / "w.yaml"
    spec.write_text("name: w\nmodel: llama-3-8b\ninference: {kv_bits: 4, kv_cache_dtype: fp8}\n")
    out = subprocess.run([sys.executable, "-m", "memsim", "workload", "show", str(spec), "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "kv_cache_dtype" in out.stdout + out.stderr


def test_dequant_work_per_weight_and_per_tile():
    w = load_workload("llama3-8b-infer", ["weights.bits=4"])
    trace = build_trace(w)
    linears = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336  # one layer's quantized weights
    decode, prefill = _ops(trace, "decode"), _ops(trace, "prefill")
    assert decode["dequant"].flops == DEQUANT_FLOPS_PER_WEIGHT * linears  # 32 rows: one tile
    rows = w.inference.batch_size * w.inference.prompt_len
    tiles = math.ceil(rows / DEQUANT_TILE_ROWS)
    assert prefill["dequant"].flops == DEQUANT_FLOPS_PER_WEIGHT * linears * tiles
    assert decode["dequant"].dtype == "fp32"  # CUDA cores, not tensor cores
    plain = _ops(build_trace(load_workload("llama3-8b-infer")), "decode")
    assert "dequant" not in plain
    # the packed weights are what a decode GEMM reads: ~3.5x less than bf16
    assert 3.3 < plain["mlp_up"].bytes_read / decode["mlp_up"].bytes_read < 4.0
    # on an H100 the decode step's dequant is small beside its (memory-bound) GEMMs, prefill's is not
    gpu = load_system("h100-sxm").compute["gpu"]

    def t(op):
        return gpu.op_time(op.flops, op.bytes_read + op.bytes_written, op.dtype, op.kind, op.phase)
    gemms = ("qkv", "out_proj", "mlp_up", "mlp_down")
    assert t(decode["dequant"]) < 0.5 * sum(t(decode[k]) for k in gemms)
    assert t(prefill["dequant"]) > 0.1 * sum(t(prefill[k]) for k in gemms)
