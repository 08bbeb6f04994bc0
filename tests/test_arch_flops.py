"""FLOPs per token follow the architecture: active experts only, MLA projections, the SSM scan,
sliding windows (memsim.workloads.arch_flops)."""

from __future__ import annotations

import pytest

from memsim.workloads import build_trace, load_workload
from memsim.workloads.models import load_model


def _decode(name: str, *overrides: str):
    w = load_workload(name, list(overrides))
    trace = build_trace(w)
    ops = {op.name.removeprefix("L{layer}."): op
           for op in next(b for b in trace.blocks if b.name == "decode").ops}
    return w, load_model(w.model), ops


def _matmul_params(arch) -> int:
    """Parameters a token multiplies in the layers: active params less norms, embeddings, head."""
    return arch.active_params - arch.embed_params - arch.head_params


@pytest.mark.parametrize("name", ["deepseek-v3-infer", "jamba-infer", "mamba-2.8b-infer",
                                  "gemma2-9b-infer", "mixtral-8x7b-infer", "qwen3-8b-infer"])
def test_decode_matmul_flops_are_two_per_active_weight(name):
    w, arch, ops = _decode(name)
    matmuls = sum(op.flops for op in ops.values() if op.kind == "matmul")
    per_token = matmuls * arch.layers / w.inference.batch_size
    # within 1%: norms, biases, Mamba's conv/A/D and DeepSeek's router bias are no matmul weights
    assert per_token == pytest.approx(2 * _matmul_params(arch), rel=0.01)


def test_deepseek_v3_mla_and_dense_first_layers():
    w, _, ops = _decode("deepseek-v3-infer")
    b = w.inference.batch_size
    # MLA projections of one token, one layer: q through the 1536 rank, kv down to 512+64,
    # kv up to 128 heads of (128 nope + 128 v), o from 128×128
    mla = 7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256
    assert ops["qkv"].flops == pytest.approx(2 * b * mla)
    assert ops["out_proj"].flops == pytest.approx(2 * b * 128 * 128 * 7168)
    # MLP: 3 dense layers of 18432, 58 MoE layers of 8 routed + 1 shared expert of 2048
    up = (3 * 2 * 7168 * 18432 + 58 * 2 * 7168 * 9 * 2048) / 61
    assert ops["mlp_up"].flops == pytest.approx(2 * b * up)
    # attention over the expanded latent: (nope+rope) for QKᵀ, v_head for AV, 128 heads
    ctx = w.inference.prompt_len + 1 + w.inference.gen_len / 2
    assert ops["attention"].flops == pytest.approx(2 * b * 128 * ctx * (192 + 128))


def test_ssm_scan_does_not_grow_with_context():
    short = _decode("mamba-2.8b-infer", "inference.prompt_len=512")[2]["attention"].flops
    w, _, ops = _decode("mamba-2.8b-infer", "inference.prompt_len=16384")
    assert ops["attention"].flops == short
    d, n = 5120, 16  # 2·d·d_conv (conv) + 9·d·n (selective scan) + d (skip) per token
    assert short == w.inference.batch_size * (2 * d * 4 + 9 * d * n + d)


def test_sliding_window_layers_attend_over_the_window():
    w, _, ops = _decode("gemma2-9b-infer", "inference.prompt_len=16384")
    b, ctx = w.inference.batch_size, 16384 + 1 + w.inference.gen_len / 2
    per_layer = 4 * b * 16 * 256  # 4·b·a·d per key
    assert ops["attention"].flops == pytest.approx(per_layer * (ctx + 4096) / 2)  # 21 global, 21 local
