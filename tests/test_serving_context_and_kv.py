"""Serving inputs beyond the model's context say so (exit 2 or a note), and a KV pool too small for
one request gets the same shortfall from ``plan`` as from ``simulate`` (the simulator's)."""

from __future__ import annotations

import pytest

from tests.test_cli_json_subprocess import memsim


def _serving(tmp_path, model: str, prompt: str, output: str = "{dist: fixed, value: 100}", n: int = 8) -> str:
    path = tmp_path / "w.yaml"
    path.write_text(f"name: s\nmodel: {model}\nserving:\n"
                    "  arrival: {process: poisson, rate_per_s: 0.5, seed: 1}\n"
                    f"  num_requests: {n}\n  prompt_len: {prompt}\n  output_len: {output}\n  dtype: bf16\n")
    return str(path)


def test_a_prompt_beyond_the_context_exits_2_naming_the_key(tmp_path):
    path = _serving(tmp_path, "llama-3-8b", "{dist: fixed, value: 60000}")
    code, doc, _ = memsim("workload", "show", path)
    assert code == 2 and doc["key"] == "serving.prompt_len.value" and doc["file"] == path
    assert "8,192" in doc["error"]  # Llama-3-8B's max_position_embeddings
    both = _serving(tmp_path, "llama-3-8b", "{dist: fixed, value: 8000}",
                    "{dist: uniform, low: 1, high: 500}")
    code, doc, _ = memsim("workload", "show", both)
    assert code == 2 and doc["key"] == "serving.output_len.high"


def test_lognormal_tails_cut_at_the_context_are_noted(tmp_path):
    path = _serving(tmp_path, "llama-3-8b", "{dist: lognormal, mean: 4000, sigma: 1.0}", n=200)
    code, doc, _ = memsim("workload", "show", path)
    assert code == 0
    assert any("context length (8,192 tokens): cut" in n for n in doc["workload_notes"])


def test_a_replayed_request_beyond_the_context_exits_2_naming_the_csv(tmp_path):
    (tmp_path / "r.csv").write_text("arrival_s,prompt_len,output_len\n0,100,10\n1.0,9000,10\n")
    path = tmp_path / "w.yaml"
    path.write_text("name: s\nmodel: llama-3-8b\nserving:\n  arrival: {csv: r.csv}\n  num_requests: 2\n")
    code, doc, _ = memsim("workload", "show", str(path))
    assert code == 2 and doc["file"].endswith("r.csv") and doc["key"] == "prompt_len"
    assert "request 2" in doc["error"]


@pytest.mark.slow
def test_plan_and_simulate_agree_on_the_kv_shortfall(tmp_path):
    # Qwen2.5-7B (128k context) on an L4: ~15 GiB of weights leave a ~6 GiB pool; one request of
    # 120,100 tokens needs ~6.4 GiB of KV blocks, so none is ever scheduled. The shortfall is one
    # request's blocks over the pool (hundreds of MiB), not a batch of eight (tens of GiB).
    path = _serving(tmp_path, "qwen2.5-7b", "{dist: fixed, value: 120000}")
    code, planned, _ = memsim("plan", "--hardware", "l4", "--workload", path)
    assert code == 3
    code, simulated, _ = memsim("simulate", "--hardware", "l4", "--workload", path)
    assert code == 3
    p, s = planned["diagnosis"]["shortfalls"], simulated["diagnosis"]["shortfalls"]
    assert p == s and p[0]["tier"] == "hbm"
    assert 0 < p[0]["short_bytes"] < 2**30
    assert "KV pool" in planned["diagnosis"]["summary"]
