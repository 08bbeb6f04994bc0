"""Every shipped family: parameter totals against published figures, KV/state bytes per token
against the formula of each attention kind written out here.

Published totals (``sum of numel`` of the released checkpoint unless said otherwise): the
safetensors totals of huggingface.co (hub id in each config's ``_name_or_path``), exact where a
public source quotes the digits -- Qwen3-30B-A3B 30,532,122,624 (its GGUF
``general.parameter_count``), DeepSeek-V2-Lite 15,706,484,224 and Qwen1.5-MoE-A2.7B
14,315,784,192 (safetensors totals, also KerasHub's qwen1.5_moe preset), OLMo-2-1124-7B
7,298,617,344 (HF API ``safetensors.total``), DeepSeek-V3 671,026,419,200 (the checkpoint's main
model, its 14B MTP module excluded, as the DeepSeek-V3 report arXiv:2412.19437 counts 671B).
Rounded where only rounded figures are published: Jamba-v0.1 51.6B (HF card; arXiv:2403.19887
says 52B), Command-R 35B (c4ai-command-r-v01 card), StarCoder2-15B 15.96B (rounded HF figure);
each within 0.1% of the rounded figure too.
"""

import json
import subprocess
import sys

import pytest

from memsim.workloads.accounting import kv_bytes
from memsim.workloads.models import load_model, model_path

# Llama 4: Scout's safetensors total 108,641,793,536 (HF API); Maverick's decoder 400,711,848,960
# with the same 871,932,416-parameter vision encoder and projector (a public reconciliation of
# Meta's constructors with the HF aggregate, 401.6B); 17B active each (Meta's model cards).
VISION = 871_932_416

PUBLISHED = {  # name: published total parameters
    "gemma-2b": 2_506_172_416, "gemma-7b": 8_537_680_896, "gemma-2-2b": 2_614_341_888,
    "gemma-2-9b": 9_241_705_984, "gemma-2-27b": 27_227_128_320, "gemma-3-1b": 999_885_952,
    "phi-3-mini-4k": 3_821_079_552, "qwen3-8b": 8_190_735_360, "qwen3-30b-a3b": 30_532_122_624,
    "qwen1.5-moe-a2.7b": 14_315_784_192, "deepseek-v2-lite": 15_706_484_224,
    "deepseek-v3": 671_026_419_200, "falcon-7b": 6_921_720_704, "pythia-6.9b": 6_857_302_016,
    "starcoder2-15b": 15.96e9, "olmo-7b": 6_888_095_744, "olmo-2-7b": 7_298_617_344,
    "command-r": 35e9, "mamba-130m": 129_135_360, "mamba-2.8b": 2_768_345_600, "jamba-v0.1": 51.6e9,
    # language model only: the checkpoint's total less its vision encoder and projector
    "llama-4-scout": 108_641_793_536 - VISION, "llama-4-maverick": 400_711_848_960,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_params_match_published(name):
    published = PUBLISHED[name]
    assert load_model(name).params == pytest.approx(published, rel=1e-3)  # within 0.1%


def test_active_params_of_moe():
    # Qwen3-30B-A3B: 8 of 128 experts active, 3,353,032,704 (its card: 3.3B; a public
    # parameter-counting test quotes the same digits)
    assert load_model("qwen3-30b-a3b").active_params == 3_353_032_704
    assert load_model("deepseek-v3").active_params == pytest.approx(37e9, rel=0.02)
    assert load_model("jamba-v0.1").active_params == pytest.approx(12e9, rel=0.02)
    for name in ("llama-4-scout", "llama-4-maverick"):  # top-1 routed + 1 shared expert
        assert load_model(name).active_params == pytest.approx(17e9, rel=0.02)


def test_kv_full_gqa_and_mqa():
    # Qwen3-8B: 36 layers × 2 × 8 KV heads × 128 × 2 bytes per token, at any context
    assert load_model("qwen3-8b").kv_seq_bytes(10_000) == 36 * 2 * 8 * 128 * 2 * 10_000
    # Falcon-7B multi-query: 1 KV head of 64
    assert load_model("falcon-7b").kv_seq_bytes(100) == 32 * 2 * 1 * 64 * 2 * 100


@pytest.mark.parametrize(("name", "layers", "kv_heads", "head_dim", "window"), [
    ("gemma-2b", 18, 1, 256, None), ("gemma-7b", 28, 16, 256, None),
    ("olmo-7b", 32, 32, 128, None), ("olmo-2-7b", 32, 32, 128, None),
    ("command-r", 40, 64, 128, None), ("pythia-6.9b", 32, 32, 128, None),
    ("falcon-40b", 60, 8, 64, None), ("qwen1.5-moe-a2.7b", 24, 16, 128, None),
    ("qwen3-30b-a3b", 48, 4, 128, None), ("phi-3-mini-4k", 32, 32, 96, 2047),
    ("starcoder2-15b", 40, 4, 128, 4096),
])
def test_kv_per_token_of_each_family(name, layers, kv_heads, head_dim, window):
    # 2 (K and V) × layers × KV heads × head_dim × 2 bytes × tokens held (the window caps it)
    arch = load_model(name)
    for ctx in (1000, 10_000):
        held = min(ctx, window) if window else ctx
        assert arch.kv_seq_bytes(ctx) == 2 * layers * kv_heads * head_dim * 2 * held


def test_kv_sliding_window_stops_growing():
    g = load_model("gemma-2-9b")  # 21 local (window 4096) + 21 global layers, 8 KV heads × 256
    per = 2 * 8 * 256 * 2
    assert g.kv_seq_bytes(1000) == 42 * per * 1000
    assert g.kv_seq_bytes(32768) == 21 * per * 32768 + 21 * per * 4096
    g3 = load_model("gemma-3-1b")  # 5 local : 1 global → layers 5, 11, 17, 23 global; window 512
    assert g3.mixers.count("attn") == 4
    assert g3.kv_seq_bytes(8192) == 4 * 2 * 256 * 2 * 8192 + 22 * 2 * 256 * 2 * 512
    m = load_model("mistral-7b")  # every layer slides over 4096
    assert m.kv_seq_bytes(8192) == m.kv_seq_bytes(4096) == 32 * 2 * 8 * 128 * 2 * 4096
    # the trace's KV tensor follows: batch 8 sequences of 8448 tokens, mean over 42 layers
    assert kv_bytes(g, 8 * 8448, 16, layers=42, context=8448) == 8 * g.kv_seq_bytes(8448)


def test_kv_llama4_chunked_layers_hold_a_chunk():
    # 3 of 4 layers attend within 8192-token chunks (at most a chunk held), every 4th is global
    scout = load_model("llama-4-scout")
    assert scout.mixers.count("attn") == 12 and scout.sliding_window == 8192
    per = 2 * 8 * 128 * 2
    assert scout.kv_seq_bytes(100_000) == 12 * per * 100_000 + 36 * per * 8192
    maverick = load_model("llama-4-maverick")  # MoE every other layer (odd ones), dense between
    assert maverick.mlps[:4] == ("dense", "moe", "dense", "moe") and maverick.experts == 128


def test_kv_mla_caches_the_latent():
    d = load_model("deepseek-v3")  # (kv_lora_rank 512 + qk_rope_head_dim 64) × 61 layers × 2 bytes
    assert d.kv_seq_bytes(4096) == (512 + 64) * 61 * 2 * 4096
    assert load_model("deepseek-v2-lite").kv_seq_bytes(1) == (512 + 64) * 27 * 2


def test_ssm_state_is_fixed():
    m = load_model("mamba-2.8b")  # 64 layers × d_inner 5120 × (d_conv 4 + d_state 16) × 2 bytes
    assert m.kv_seq_bytes(1) == m.kv_seq_bytes(100_000) == 64 * 5120 * (4 + 16) * 2
    j = load_model("jamba-v0.1")  # 4 attention layers (8 KV heads × 128) and 28 Mamba layers
    assert j.mixers.count("attn") == 4
    assert j.kv_seq_bytes(1000) == 4 * 2 * 8 * 128 * 2 * 1000 + 28 * 8192 * (4 + 16) * 2


def test_unknown_family_read_as_dense_and_missing_keys_exit_2(tmp_path):
    config = json.loads(model_path("llama-2-7b").read_text())
    config["model_type"] = "granite_like"
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps(config))
    arch = load_model(str(ok))
    assert arch.params == load_model("llama-2-7b").params and "dense" in arch.notes[0]
    del config["intermediate_size"], config["vocab_size"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(config))
    spec = tmp_path / "w.yaml"
    spec.write_text(f"name: w\nmodel: {bad}\ninference: {{batch_size: 1, prompt_len: 8, gen_len: 2}}\n")
    out = subprocess.run([sys.executable, "-m", "memsim", "workload", "show", str(spec), "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "intermediate_size" in out.stdout + out.stderr and "vocab_size" in out.stdout + out.stderr


@pytest.mark.slow
def test_workload_list_ships_many_models():
    out = subprocess.run([sys.executable, "-m", "memsim", "workload", "list", "--json"],
                         capture_output=True, text=True, check=True)
    assert len(json.loads(out.stdout)["models"]) >= 25
