"""Disaggregated prefill/decode (memsim/sim/disaggregated.py): TTFT by hand, TBT without prefill
interference, the JSON and the user's mistakes through ``python -m memsim``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memsim.planners.routing import route
from memsim.sim import simulate
from memsim.sim.synthetic import serving_trace
from memsim.workloads.trace import Requests
from tests.conftest import make_system

LLAMA3_8B_KV = 2 * 32 * 8 * 128 * 2  # K and V × layers × KV heads × head dim × fp16 bytes


def disaggregate(trace, *, link="10GB/s", latency=1e-3, transfer="after", prefill=1, decode=1,
                 tensor=1, prefill_tokens=None):
    """``meta["disaggregated"]`` as the workload builder writes it (memsim/workloads/disaggregated.py)."""
    tc = dict(trace.meta["token_costs"])
    pool = {"gpus": tensor, "instances": 1, "tensor": tensor, "pipeline": 1, "scheduler": {},
            "token_costs": tc}
    pre = {**pool, "gpus": prefill * tensor, "instances": prefill,
           "scheduler": {"max_num_batched_tokens": prefill_tokens} if prefill_tokens else {}}
    trace.meta["disaggregated"] = {
        "prefill": pre, "decode": {**pool, "gpus": decode * tensor, "instances": decode},
        "link": link, "latency": latency, "transfer": transfer,
        "kv_bytes_per_token": tc["kv_bytes_per_token"]}
    return trace


def prefill_seconds(system, trace, prompt: int) -> float:
    """One prompt's prefill iteration by the roofline (as tests/test_sim_serving.py times it)."""
    tc, gpu = trace.meta["token_costs"], system.gpu
    dense = gpu.op_time(prompt * tc["flops_per_token"],
                        tc["weight_bytes"] + prompt * tc["activation_bytes_per_token"], "bf16", "matmul",
                        "prefill")
    attn = gpu.op_time(prompt * (prompt + 1) // 2 * tc["attn_flops_per_token_ctx"],
                       (2 * prompt) * tc["kv_bytes_per_token"], "bf16", "attention", "prefill")
    return dense + attn + gpu.launch_overhead * (2 * tc["layers"] - 2)


def one_request(prompt=100, output=4, **kw):
    trace = serving_trace(n=1, layers=4, params=1e9)
    trace.requests = Requests([0.5], [prompt], [output])
    return disaggregate(trace, **kw)


def test_ttft_is_prefill_plus_bytes_over_bandwidth_plus_latency():
    system = make_system()
    trace = one_request(transfer="after")
    r = simulate(system, trace)
    kvb = trace.meta["token_costs"]["kv_bytes_per_token"]
    transfer = 100 * kvb / 10e9 + 1e-3
    assert r.serving.ttft_s["p50"] == pytest.approx(prefill_seconds(system, trace, 100) + transfer, rel=1e-12)
    assert r.serving.kv_transfer_bytes == 100 * kvb
    assert r.serving.kv_transfer_seconds["p50"] == pytest.approx(transfer, rel=1e-12)
    assert r.serving.completed == 1 and r.tokens_per_step == 4
    assert r.serving.pools["prefill"]["instances"] == r.serving.pools["decode"]["instances"] == 1


def test_layerwise_transfer_hides_all_but_the_last_layer():
    """Four equal layers: a slow link ends X after the first layer is done, a fast one X/4 after
    the prefill (X the whole copy's time)."""
    system = make_system()
    kvb = one_request().meta["token_costs"]["kv_bytes_per_token"]
    for bw in (1e9, 1e12):
        trace = one_request(link=bw, latency=0.0, transfer="layerwise")
        pre = prefill_seconds(system, trace, 100)
        x = 100 * kvb / bw
        got = simulate(system, trace).serving.ttft_s["p50"]
        assert got == pytest.approx(max(pre / 4 + x, pre + x / 4), rel=1e-12)
        after = simulate(system, one_request(link=bw, latency=0.0, transfer="after")).serving.ttft_s["p50"]
        assert got < after == pytest.approx(pre + x, rel=1e-12)


def test_tensor_parallel_instances_send_over_every_gpu_link():
    system = make_system(nvlink={"kind": "nvlink", "bandwidth": "100GB/s"},
                         compute__gpu__count=8)
    one = simulate(system, one_request(link="nvlink", latency=0.0, tensor=1)).serving
    two = simulate(system, one_request(link="nvlink", latency=0.0, tensor=2)).serving
    assert two.kv_transfer_bytes == one.kv_transfer_bytes
    assert two.kv_transfer_seconds["p50"] == pytest.approx(one.kv_transfer_seconds["p50"] / 2, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decode_pool_tbt_p99_is_no_worse_than_colocated_for_long_prompts(seed):
    """Prompts 8× the answers: colocated decodes share iterations with whole prompts; two colocated
    replicas on the same two GPUs still do, a decode instance never does."""
    system = make_system()
    base = serving_trace(n=120, rate_per_s=20.0, prompt=4096, output=32, layers=8, seed=seed)
    colocated = simulate(system, base).serving.tbt_s["p99"]
    replicas = []
    for share in route(base.requests, 2):
        sub = serving_trace(n=1, layers=8, seed=seed)
        sub.requests = share
        replicas.append(simulate(system, sub).serving.tbt_s["p99"])
    trace = disaggregate(serving_trace(n=120, rate_per_s=20.0, prompt=4096, output=32, layers=8, seed=seed),
                         link="50GB/s", latency=5e-6, transfer="layerwise")
    r = simulate(system, trace)
    assert r.serving.completed == 120
    assert r.serving.tbt_s["p99"] <= min(colocated, max(replicas))
    assert r.serving.tbt_s["p99"] < 0.5 * colocated  # the interference is large here, not a tie
    busy = r.serving.pools
    assert 0 < busy["prefill"]["utilization"] <= 1 and 0 < busy["decode"]["utilization"] <= 1


def test_one_token_requests_end_at_their_prefill():
    system = make_system()
    trace = one_request(output=1)
    r = simulate(system, trace)
    assert r.serving.completed == 1 and r.serving.kv_transfer_bytes == 0
    assert r.serving.ttft_s["p50"] == pytest.approx(prefill_seconds(system, trace, 100), rel=1e-12)


def test_same_inputs_same_result():
    system = make_system()
    runs = [simulate(system, disaggregate(serving_trace(n=40, prompt=1024, output=16, layers=4),
                                          prefill=2, decode=2)).to_dict() for _ in range(2)]
    for run in runs:
        run.pop("wall_s")
    assert json.dumps(runs[0], sort_keys=True) == json.dumps(runs[1], sort_keys=True)


# -- through the CLI ------------------------------------------------------------------------------

WORKLOAD = """name: llama3-8b-disagg
model: llama-3-8b
serving:
  arrival: {{process: poisson, rate_per_s: 4.0, seed: 1}}
  num_requests: 60
  prompt_len: {{dist: uniform, low: 1024, high: 4096}}
  output_len: {{dist: uniform, low: 16, high: 128}}
  disaggregated:
{body}
"""


def memsim(tmp_path: Path, body: str, *args: str) -> tuple[int, dict]:
    path = tmp_path / "w.yaml"
    path.write_text(WORKLOAD.format(body=body))
    proc = subprocess.run([sys.executable, "-m", "memsim", "simulate", "--hardware", "h100-sxm",
                           "--workload", str(path), "--json", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "80"}, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.slow
def test_cli_json_reports_the_transfer_and_both_pools(tmp_path: Path):
    code, doc = memsim(tmp_path, "    prefill: {gpus: 2, tensor: 2}\n    decode: {gpus: 2}\n"
                                 "    link: network\n    transfer: after")
    assert code == 0, doc
    s = doc["serving"]
    assert s["completed"] == 60 and doc["job"]["gpus"] == 4
    assert s["kv_transfer_bytes"] % LLAMA3_8B_KV == 0  # whole prompts of whole-model KV
    assert 60 * 1024 <= s["kv_transfer_bytes"] // LLAMA3_8B_KV <= 60 * 4096
    assert s["pools"]["prefill"]["instances"] == 1 and s["pools"]["prefill"]["tensor"] == 2
    assert s["pools"]["decode"]["instances"] == 2 and s["pools"]["decode"]["tensor"] == 1
    # h100-sxm's network: 50 GB/s × 0.9 per GPU, 5 us; the shortest prompt over two GPU links
    assert s["kv_transfer_seconds"]["p50"] >= 1024 * LLAMA3_8B_KV / (2 * 45e9) + 5e-6
    assert s["ttft_s"]["p50"] > s["kv_transfer_seconds"]["p50"]


@pytest.mark.slow
@pytest.mark.parametrize(("body", "key"), [
    ("    prefill: {gpus: 3, tensor: 2}\n    decode: {gpus: 1}", "serving.disaggregated.prefill.gpus"),
    ("    prefill: {gpus: 1}\n    decode: {gpus: 1}\n    link: infiniband", "serving.disaggregated.link"),
    ("    prefill: {gpus: 8, tensor: 4}\n    decode: {gpus: 8, tensor: 8}\n    link: nvlink",
     "serving.disaggregated.link"),
    ("    prefill: {gpus: 1, tensor: 3}\n    decode: {gpus: 1}", "serving.disaggregated.prefill.tensor"),
    ("    prefill: {gpus: 1}\n    decode: {gpus: 1}\n    transfer: later", "serving.disaggregated.transfer"),
])
def test_user_mistakes_exit_2_naming_the_key(tmp_path: Path, body: str, key: str):
    code, doc = memsim(tmp_path, body)
    assert code == 2, doc
    assert doc["key"] == key and doc["file"] == str(tmp_path / "w.yaml")


def test_timeline_has_one_process_per_instance():
    system = make_system()
    trace = disaggregate(serving_trace(n=10, prompt=256, output=8, layers=4), prefill=2, decode=1)
    events = simulate(system, trace, timeline=True).timeline
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("name") == "process_name"}
    assert names == {1: "prefill 0", 2: "prefill 1", 3: "decode 0"}
    assert {e["pid"] for e in events if e.get("ph") == "X"} == {1, 2, 3}


def test_transfer_keys_only_in_a_disaggregated_document():
    system = make_system()
    trace = serving_trace(n=1, layers=4, params=1e9)
    trace.requests = Requests([0.5], [100], [4])
    colocated = simulate(system, trace).to_dict()["serving"]
    assert not {"kv_transfer_bytes", "kv_transfer_seconds", "pools"} & set(colocated)
    split = simulate(system, disaggregate(trace)).to_dict()["serving"]
    assert split["kv_transfer_bytes"] > 0 and set(split["pools"]) == {"prefill", "decode"}


def test_an_slo_search_with_disaggregated_pools_exits_2(tmp_path: Path):
    from memsim.errors import SpecError
    from memsim.workloads import build_trace, load_workload

    path = tmp_path / "w.yaml"
    path.write_text(WORKLOAD.format(body="    prefill: {gpus: 1}\n    decode: {gpus: 1}")
                    + "  slo: {ttft_p99: 2s, tbt_p99: 100ms}\n")
    with pytest.raises(SpecError) as err:
        build_trace(load_workload(path))
    assert err.value.key == "serving.disaggregated" and err.value.file == str(path)
