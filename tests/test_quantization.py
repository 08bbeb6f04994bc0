"""Quantized weight bytes: the formulas of memsim.workloads.quantization, written out per method."""

import json

import pytest

from memsim.errors import SpecError
from memsim.workloads.models import load_model, model_path
from memsim.workloads.quantization import WeightQuant, linear_bytes, parse_quantization


def _with_quant(tmp_path, q):
    config = json.loads(model_path("llama-2-7b").read_text())
    config["quantization_config"] = q
    path = tmp_path / "q.json"
    path.write_text(json.dumps(config))
    return load_model(str(path))


def test_gptq_4bit_g128_llama_2_7b(tmp_path):
    arch = _with_quant(tmp_path, {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False})
    n = sum(i * o * c for i, o, c in arch.linear_shapes())
    assert n == 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)  # q, k, v, o and gate, up, down
    g_idx = 32 * 4 * (4 * 4096 + 2 * 4096 + 11008)  # int32 per input row of each linear
    packed = n // 2 + (n // 128) * 2 + (n // 128) // 2 + g_idx
    assert arch.weight_bytes(2) == (arch.params - n) * 2 + packed
    assert 3.5e9 < arch.weight_bytes(2) < 4.0e9  # the published 4-bit checkpoints are ~3.9 GB


def test_bnb_nf4_double_quant_and_int8():
    shapes = [(4096, 4096, 1)]
    n = 4096 * 4096
    nf4 = WeightQuant("bnb4", 4, 64, double_quant=True)
    assert linear_bytes(nf4, shapes) == n // 2 + n // 64 + (n // 64 // 256) * 4
    assert linear_bytes(WeightQuant("bnb4", 4, 64), shapes) == n // 2 + n // 64 * 4
    assert linear_bytes(WeightQuant("bnb8", 8), shapes) == n + 4096 * 4


def test_fp8_block_scales_of_deepseek_v3():
    q = parse_quantization({"quant_method": "fp8", "weight_block_size": [128, 128]})
    assert linear_bytes(q, [(7168, 2048, 1)]) == 7168 * 2048 + 56 * 16 * 4
    arch = load_model("deepseek-v3")  # the shipped config carries its FP8 quantization_config
    assert arch.weight_bytes(2) < 0.51 * arch.params * 2


def test_unknown_method_names_the_key():
    with pytest.raises(SpecError) as info:
        parse_quantization({"quant_method": "hqq"})
    assert info.value.key == "quantization_config.quant_method"
