"""DeepSpeed's weight quantization (ZeRO-Inference): its packing, its packed embeddings, and its
Linear that dequantizes the whole weight into fp16 memory before a plain GEMM reads it."""

import pytest

from memsim.errors import SpecError
from memsim.workloads import build_trace, load_workload
from memsim.workloads.kernels import layer_kernels
from memsim.workloads.models import load_model
from memsim.workloads.quantization import WeightQuant, linear_bytes, parse_quantization

H = 7168  # OPT-30B


def test_packing_is_values_plus_fp16_scale_and_minimum_per_group():
    q = parse_quantization({"quant_method": "deepspeed", "bits": 4, "group_size": 64})
    assert q == WeightQuant("deepspeed", 4, 64)
    n = H * H
    assert linear_bytes(q, [(H, H, 1)]) == n // 2 + (n // 64) * 4  # 0.5625 bytes a weight
    assert linear_bytes(WeightQuant("deepspeed", 8, 64), [(H, H, 1)]) == n + (n // 64) * 4
    with pytest.raises(SpecError) as info:
        parse_quantization({"quant_method": "deepspeed", "bits": 3})
    assert info.value.key == "quantization_config.bits"


def test_embedding_and_tied_head_are_packed():
    arch = load_model("opt-30b-zero-int4")
    embed, head = arch.table_bytes(2)
    table = arch.vocab * arch.hidden
    positions = arch.learned_positions * arch.hidden * 2  # OPT's learned positions stay fp16
    assert embed == positions + table // 2 + (table // 64) * 4
    assert head == arch.norm_params * 2  # tied: the LM head is the packed token table
    plain = load_model("opt-30b")
    assert plain.table_bytes(2) == (plain.embed_params * 2, plain.head_params * 2)
    # the whole model: every linear and the table at 0.5625 bytes a weight, the rest fp16
    assert arch.weight_bytes(2) == pytest.approx(0.5625 * arch.params, rel=0.02)


def test_dequant_materialises_the_weight_once_per_forward():
    arch = load_model("opt-30b-zero-int4")
    linears = 12 * H * H  # q, k, v, out and fc1, fc2 (4h)
    packed = linears // 2 + (linears // 64) * 4
    for rows in (1, 512):  # decode and a prefill: one dequant either way, unlike a fused kernel
        k = {x.key: x for x in layer_kernels(arch, 8, rows, 512, 2, 2, dequant=True)}
        assert k["dequant"].weight_bytes == packed  # reads the packed weights...
        assert k["dequant"].written == 2 * linears  # ...writes them in fp16
        assert k["dequant"].flops == 2 * linears
        gemm_weights = sum(k[n].weight_bytes for n in ("qkv", "out_proj", "mlp_up", "mlp_down"))
        biases = 2 * (3 * H + H + 4 * H + H)
        assert gemm_weights == 2 * linears + biases  # the GEMMs read the fp16 temporary


def test_dequant_traffic_reaches_the_trace_but_not_the_copies():
    """The trace copies the packed bytes over PCIe; the GPU moves 4.56 bytes a weight."""
    w = load_workload("opt-30b-flexgen", ["inference.batch_size=4", "inference.gen_len=2"])
    packed = w.model_copy(update={"model": "opt-30b-zero-int4"})
    trace = build_trace(packed)
    weights = trace.bytes_by_class()["weight"]
    arch = load_model("opt-30b-zero-int4")
    assert weights == pytest.approx(arch.weight_bytes(2), rel=1e-3)
    decode = next(b for b in trace.blocks if b.name == "decode").ops
    gpu_side = ("dequant", "qkv", "out_proj", "mlp_up", "mlp_down")
    moved = sum(o.bytes_read + o.bytes_written for o in decode if o.name.endswith(gpu_side))
    per_layer = 12 * H * H
    assert moved / per_layer > 4.5  # packed read + fp16 written + fp16 read by the GEMMs
