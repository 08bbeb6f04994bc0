"""Sharding accounting of parallel layouts, against bytes computed by hand."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memsim.errors import SpecError
from memsim.workloads.accounting import kv_bytes
from memsim.workloads.models import Architecture, load_model
from memsim.workloads.parallel import (
    Layout,
    busiest_stage,
    kv_bytes_per_gpu,
    layer_activation_bytes,
    rank_states,
    stage_activation_bytes,
    stage_params,
    validate_layout,
)

# hidden 8, 4 layers, 4 heads of 2 (2 KV heads), SwiGLU 16, vocab 32, untied, RMSNorm:
# qkv 8·16=128, out 8·8=64, mlp 3·8·16=384, norms 2·8=16 → 592 per layer; embed 256; head 8+256.
TINY = Architecture(name="tiny", family="llama", hidden=8, layers=4, heads=4, kv_heads=2, head_dim=2,
                    intermediate=16, vocab=32, max_positions=64, gated_mlp=True, norm="rms",
                    qkv_bias=False, linear_bias=False, tied_embeddings=False, learned_positions=0,
                    dropout=False)


def test_unsharded_layout_holds_the_whole_model():
    assert TINY.params == 256 + 4 * 592 + 264
    assert stage_params(TINY, Layout(), 0).total == TINY.params


def test_tp2_pp2_by_hand():
    lay = Layout(tensor=2, pipeline=2)
    # per layer on a rank: (128+64)/2 + 16 norms + 384/2 = 304; 2 layers per stage
    assert stage_params(TINY, lay, 0).total == 2 * 304 + 256 // 2
    assert stage_params(TINY, lay, 1).total == 2 * 304 + 8 + 256 // 2
    s = rank_states(TINY, lay, 1, zero_stage=0)
    assert (s.weights, s.grads, s.optimizer) == (744 * 2, 744 * 2, 744 * 12)
    assert busiest_stage(TINY, lay)[0] == 1


def test_zero_stages_shard_over_data_times_context():
    lay = Layout(tensor=2, pipeline=2, data=2, context=2)  # DP group of 4
    z = {k: rank_states(TINY, lay, 1, zero_stage=k) for k in range(4)}
    assert (z[1].weights, z[1].grads, z[1].optimizer) == (1488, 1488, 8928 // 4)
    assert (z[2].weights, z[2].grads) == (1488, 1488 // 4)
    assert (z[3].weights, z[3].grads, z[3].optimizer) == (372, 372, 2232)


def test_llama3_70b_tp8_shards_sum_to_the_model():
    arch = load_model("llama-3-70b")
    lay = Layout(tensor=8)
    replicated = arch.layers * 2 * arch.norm_params + arch.norm_params
    assert 8 * (stage_params(arch, lay, 0).total - replicated) == arch.params - replicated
    # ZeRO paper's 16 B/param for mixed-precision Adam, divided by 8
    full = rank_states(arch, Layout(), 0).total
    assert full == 16 * arch.params
    assert rank_states(arch, lay, 0).total == pytest.approx(full / 8, rel=1e-3)


def test_moe_experts_split_by_expert_parallelism():
    arch = load_model("mixtral-8x7b")
    one, ep = stage_params(arch, Layout(data=8), 0), stage_params(arch, Layout(data=8, expert=8), 0)
    assert ep.dense == one.dense and ep.expert * 8 == one.expert
    # expert states shard over data×context/expert = 1 rank: ZeRO-1 leaves them whole
    s = rank_states(arch, Layout(data=8, expert=8), 0, zero_stage=1)
    assert s.optimizer == -(-12 * ep.dense // 8) + 12 * ep.expert


def test_activations_korthikanti_tp_and_sp():
    # GPT-style (MHA, 4h GeLU MLP, dropout, no flash): Korthikanti Eq. 2 per layer,
    # sbh(10 + 24/t + 5as/(ht)) without SP and sbh/t·(34 + 5as/h) with SP.
    gpt = Architecture(name="gpt", family="gpt2", hidden=64, layers=8, heads=8, kv_heads=8, head_dim=8,
                       intermediate=256, vocab=128, max_positions=512, gated_mlp=False, norm="layer",
                       qkv_bias=True, linear_bias=True, tied_embeddings=True, learned_positions=0,
                       dropout=True, activation="gelu")
    s, b, h, a, t = 128, 2, 64, 8, 4
    sbh = s * b * h
    assert layer_activation_bytes(gpt, Layout(), b, s, 2, flash=False) == sbh * (34 + 5 * a * s // h)
    assert layer_activation_bytes(gpt, Layout(tensor=t), b, s, 2, flash=False) == \
        sbh * 10 + sbh * (24 + 5 * a * s // h) // t
    assert layer_activation_bytes(gpt, Layout(tensor=t, sequence_parallel=True), b, s, 2, flash=False) == \
        sbh * (34 + 5 * a * s // h) // t
    # context parallelism: each rank keeps its half of the sequence (flash: no s² term)
    assert layer_activation_bytes(gpt, Layout(context=2), b, s, 2) == \
        layer_activation_bytes(gpt, Layout(), b, s // 2, 2)


def test_1f1b_stage_i_holds_p_minus_i_microbatches():
    lay = Layout(pipeline=4)
    per = layer_activation_bytes(TINY, lay, 1, 16, 2)
    got = [stage_activation_bytes(TINY, lay, i, b=1, s=16, microbatches=8) for i in range(4)]
    assert got == [(4 - i) * 1 * per for i in range(4)]
    assert stage_activation_bytes(TINY, lay, 0, b=1, s=16, microbatches=2) == 2 * per


def test_kv_per_gpu_under_tp_and_pp():
    arch = load_model("llama-3-70b")  # 8 KV heads, 80 layers
    full = kv_bytes(arch, 1000)
    assert kv_bytes_per_gpu(arch, Layout(tensor=4), 1000) == full // 4
    assert kv_bytes_per_gpu(arch, Layout(tensor=4, pipeline=2), 1000) == full // 8
    assert kv_bytes_per_gpu(arch, Layout(tensor=16), 1000) == full // 8  # one replicated head each


@pytest.mark.parametrize("layout, key", [
    (Layout(tensor=3), "training.parallel.tensor"),
    (Layout(pipeline=3), "training.parallel.pipeline"),
    (Layout(data=2, expert=2), "training.parallel.expert"),
    (Layout(tensor=2, data=8), "training.parallel.data"),
])
def test_invalid_layouts_name_the_key(layout, key):
    with pytest.raises(SpecError) as err:
        validate_layout(TINY, layout, nodes=1, gpus_per_node=8, file="w.yaml")
    assert err.value.key == key and err.value.file == "w.yaml" and err.value.exit_code == 2


def test_valid_layout_passes():
    lay = Layout(tensor=8, pipeline=4, data=4)
    validate_layout(load_model("llama-3-70b"), lay, nodes=16, gpus_per_node=8)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(t=st.sampled_from([1, 2, 4, 8]), p=st.sampled_from([1, 2, 4]), d=st.sampled_from([1, 2, 4]),
       c=st.sampled_from([1, 2]), zero=st.integers(0, 3), which=st.sampled_from(["tensor", "pipeline",
                                                                                 "data", "context"]),
       model=st.sampled_from(["llama-3-70b", "mixtral-8x7b", "llama-2-7b"]))
def test_more_parallelism_never_increases_a_ranks_model_states(t, p, d, c, zero, which, model):
    arch = load_model(model)
    base = Layout(tensor=t, pipeline=p, data=d, context=c)
    more = Layout(**{**base.__dict__, which: 2 * getattr(base, which)})
    for lay in (base, more):
        validate_layout(arch, lay, nodes=64, gpus_per_node=8)
    def peak(lay: Layout) -> int:
        return busiest_stage(arch, lay, zero_stage=zero)[1].total
    assert peak(more) <= peak(base)
