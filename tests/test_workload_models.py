"""Model configs: parameter counts match the published figures; bad configs name their key."""

import json

import pytest

from memsim.errors import SpecError
from memsim.workloads.models import list_models, load_model

PUBLISHED = {  # billions, from each model's paper / model card
    "llama-2-7b": 6.74, "llama-2-70b": 68.98, "llama-3-8b": 8.03, "llama-3-70b": 70.55,
    "mistral-7b": 7.24, "mixtral-8x7b": 46.70, "qwen2.5-7b": 7.62, "opt-30b": 30.0,
    "opt-175b": 175.0, "gpt3-175b": 175.0,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_param_counts_match_published(name):
    arch = load_model(name)
    assert abs(arch.params / 1e9 - PUBLISHED[name]) / PUBLISHED[name] < 0.01


def test_exact_counts_of_hf_modules():
    # sum(p.numel()) of the HF modules
    assert load_model("llama-2-7b").params == 6_738_415_616
    assert load_model("llama-3-8b").params == 8_030_261_248
    assert load_model("qwen2.5-7b").params == 7_615_616_512
    assert load_model("mixtral-8x7b").params == 46_702_792_704


def test_moe_active_params():
    arch = load_model("mixtral-8x7b")
    assert arch.is_moe and arch.experts == 8 and arch.experts_per_token == 2
    assert abs(arch.active_params / 1e9 - 12.88) < 0.01


def test_families_parse_their_features():
    assert load_model("qwen2.5-7b").qkv_bias and not load_model("llama-3-8b").qkv_bias
    assert load_model("llama-2-70b").kv_heads == 8
    opt = load_model("opt-30b")
    assert opt.norm == "layer" and not opt.gated_mlp and opt.learned_positions == 2050
    gpt3 = load_model("gpt3-175b")
    assert gpt3.tied_embeddings and gpt3.intermediate == 4 * 12288
    assert load_model("zero-7.5b").params == 7_500_000_000
    assert "gpt3-175b" in list_models()


def _write(tmp_path, **overrides):
    config = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 2, "num_attention_heads": 32,
              "intermediate_size": 11008, "vocab_size": 32000, "max_position_embeddings": 4096}
    config.update(overrides)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(config))
    return path


def test_heads_not_dividing_hidden_is_rejected(tmp_path):
    with pytest.raises(SpecError, match="num_attention_heads") as info:
        load_model(str(_write(tmp_path, num_attention_heads=30)))
    assert info.value.key == "num_attention_heads"


def test_kv_heads_must_divide_heads(tmp_path):
    with pytest.raises(SpecError) as info:
        load_model(str(_write(tmp_path, num_key_value_heads=5)))
    assert info.value.key == "num_key_value_heads"


def test_missing_key_and_unknown_family(tmp_path):
    with pytest.raises(SpecError) as info:
        load_model(str(_write(tmp_path, vocab_size=None)))
    assert info.value.key == "vocab_size"
    # an unknown model_type with the standard fields is read as a dense decoder, with a note
    arch = load_model(str(_write(tmp_path, model_type="lama")))
    assert arch.family == "lama" and "dense" in arch.notes[0] and "did you mean 'llama'" in arch.notes[0]


def test_unknown_model_did_you_mean():
    with pytest.raises(SpecError, match="did you mean 'llama-2-7b'"):
        load_model("llama-2-7")


def test_hub_ids_of_catalog_models_resolve_locally():
    assert load_model("meta-llama/Llama-2-7b-hf").name == "llama-2-7b"
    assert load_model("mistralai/mixtral-8x7b-v0.1").name == "mixtral-8x7b"
