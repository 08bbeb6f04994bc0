"""DeepSpeed ds_config and vLLM engine args fill a workload; CSV and Poisson request streams."""

import json

import numpy as np
import pytest

from memsim.errors import SpecError
from memsim.workloads import build_trace, load_workload
from memsim.workloads.serving import draw_lengths
from memsim.workloads.spec import Lengths


def _training(tmp_path, ds: dict, extra: str = "") -> str:
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    path = tmp_path / "w.yaml"
    path.write_text(f"name: w\nmodel: llama-2-7b\ntraining:\n  seq_len: 512\n  deepspeed: ds.json\n{extra}")
    return str(path)


DS = {"train_batch_size": 32, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
      "fp16": {"enabled": True}, "optimizer": {"type": "Adam"},
      "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}


def test_deepspeed_config_fills_training(tmp_path):
    w = load_workload(_training(tmp_path, DS))
    t = w.training
    assert (t.zero_stage, t.micro_batch, t.grad_accum, t.precision, t.optimizer) == (2, 2, 2, "fp16", "adam")
    assert t.data_parallel == 8  # 32 / (2 × 2)
    assert t.offload.optimizer == "cpu" and t.offload.param == "none"
    trace = build_trace(w)
    assert trace.meta["hints"] == {"offload_optimizer": "cpu", "offload_param": "none"}
    assert trace.meta["zero_stage"] == 2 and trace.meta["tokens_per_step"] == 2 * 512 * 2


def test_explicit_keys_and_set_win_over_deepspeed(tmp_path):
    path = _training(tmp_path, DS, "  zero_stage: 1\n")
    assert load_workload(path).training.zero_stage == 1
    assert load_workload(path, ["training.micro_batch=4"]).training.micro_batch == 4


def test_deepspeed_auto_values_are_skipped(tmp_path):
    ds = {**DS, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto"}
    t = load_workload(_training(tmp_path, ds)).training
    assert t.micro_batch == 1 and t.data_parallel == 1


def test_deepspeed_unknown_optimizer_names_file_and_key(tmp_path):
    with pytest.raises(SpecError) as info:
        load_workload(_training(tmp_path, {**DS, "optimizer": {"type": "Lamb"}}))
    assert info.value.key == "optimizer.type" and info.value.file.endswith("ds.json")


def test_catalog_deepspeed_workload():
    w = load_workload("llama2-70b-zero3-offload")
    assert (w.training.zero_stage, w.training.data_parallel, w.training.offload.param) == (3, 8, "nvme")


def _serving(tmp_path, body: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nmodel: llama-3-8b\nserving:\n" + body)
    return str(path)


POISSON = ("  arrival: {process: poisson, rate_per_s: 4, seed: 3}\n  num_requests: 100\n"
           "  prompt_len: {dist: fixed, value: 100}\n  output_len: {dist: uniform, low: 10, high: 20}\n")


def test_vllm_engine_args_fill_the_scheduler(tmp_path):
    body = POISSON + ("  vllm: {block_size: 32, swap_space: 2, max_num_seqs: 16, preemption_mode: swap,"
                      " kv_cache_dtype: fp8, dtype: bfloat16}\n")
    w = load_workload(_serving(tmp_path, body))
    s = w.serving
    assert (s.scheduler.block_size, s.scheduler.max_num_seqs, s.scheduler.preempt) == (32, 16, "swap")
    assert s.kv_bits == 8 and s.dtype == "bf16"
    meta = build_trace(w).meta
    assert meta["scheduler"]["swap_bytes"] == 2 * 2**30 and meta["scheduler"]["block_size"] == 32


def test_vllm_unknown_arg_did_you_mean(tmp_path):
    with pytest.raises(SpecError, match="did you mean 'block_size'") as info:
        load_workload(_serving(tmp_path, POISSON + "  vllm: {blocksize: 32}\n"))
    assert info.value.key == "serving.vllm.blocksize"


def test_poisson_arrivals_have_the_rate_and_lengths_the_distribution(tmp_path):
    trace = build_trace(load_workload("llama2-70b-serve", ["serving.num_requests=4000"]))
    gaps = np.diff([0.0, *trace.requests.arrival_s])
    assert abs(gaps.mean() - 1 / 2.0) < 0.05 * (1 / 2.0)
    assert min(trace.requests.prompt_len) >= 4 and max(trace.requests.prompt_len) <= 3072
    rng = np.random.Generator(np.random.PCG64(0))
    draws = draw_lengths(Lengths(dist="lognormal", mean=300, sigma=0.5), 20000, rng, 10**6)
    assert abs(draws.mean() - 300) < 6


def test_csv_requests_with_azure_style_columns(tmp_path):
    (tmp_path / "log.csv").write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:47.000000,400,20\n2023-11-16 18:15:46.500000,100,10\n")
    trace = build_trace(load_workload(_serving(tmp_path, "  arrival: {csv: log.csv}\n  num_requests: 10\n")))
    r = trace.requests
    assert r.arrival_s == [0.0, 0.5] and r.prompt_len == [100, 400] and r.output_len == [10, 20]


def test_csv_missing_column_is_named(tmp_path):
    (tmp_path / "log.csv").write_text("arrival_s,prompt_len\n0,10\n")
    with pytest.raises(SpecError, match="output_len"):
        build_trace(load_workload(_serving(tmp_path, "  arrival: {csv: log.csv}\n")))


def test_poisson_needs_lengths(tmp_path):
    with pytest.raises(SpecError, match="prompt_len and output_len"):
        load_workload(_serving(tmp_path, "  arrival: {process: poisson, rate_per_s: 1}\n"))
