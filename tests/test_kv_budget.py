"""inference.kv_budget (StreamingLLM, SnapKV) and inference.kv_prefetch (InfiniGen, SpeCache):
which KV is kept and which is fetched, executed by the simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from memsim.errors import SpecError
from memsim.hardware import load_system
from memsim.planners import Plan
from memsim.sim import simulate
from memsim.sim.program import build_program
from memsim.workloads import load_trace
from memsim.workloads.kv_budget import mean_kept

B, P, G = 4, 16384, 64
TOKEN_LAYER = 2 * 8 * 128 * 2  # Llama-3-8B: K and V, 8 KV heads × 128, bf16: bytes per token per layer
LAYERS = 32
DRAM = Plan(placement={"kv": {"dram": 1.0}})


def _path(tmp_path: Path, **inf) -> Path:
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({"name": "llama-long", "model": "llama-3-8b", "inference": {
        "batch_size": B, "prompt_len": P, "gen_len": G, "dtype": "bf16", **inf}}))
    return path


@pytest.fixture(scope="module")
def system():
    return load_system("rtx4090-workstation", ["hardware.overheads=false"])


def test_streaming_budget_sizes_the_cache_exactly(tmp_path):
    trace = load_trace(_path(tmp_path, kv_budget={"sink": 4, "window": 1020}))
    assert trace.tensors["L{layer}.kv"].bytes == B * 1024 * TOKEN_LAYER
    assert trace.meta["per_device_bytes"]["kv_cache"] == LAYERS * B * 1024 * TOKEN_LAYER
    # the prompt is prefilled whole: one layer's full-prompt KV is a transient buffer
    assert trace.tensors["kv_prompt"].bytes == B * P * TOKEN_LAYER
    # sinks + window only: no scoring FLOPs; SnapKV's budget scores with its observation queries
    ops = {o.name.split(".")[-1]: o for b in trace.blocks for o in b.ops}
    assert ops["kv_compress"].flops == 0
    snap = load_trace(_path(tmp_path, kv_budget={"sink": 4, "window": 28, "budget": 1024}))
    sops = {o.name.split(".")[-1]: o for b in snap.blocks for o in b.ops}
    assert sops["kv_compress"].flops == 2.0 * B * 32 * 128 * 32 * P


def test_mean_kept_context():
    # steps t = 1..3 over prompt 10: contexts 12, 13, 14; capped at 13: 12, 13, 13
    assert mean_kept(10, 4, 13) == pytest.approx((12 + 13 + 13) / 3)
    assert mean_kept(10, 4, 100, top_k=12) == 12


def test_budget_bounds_the_simulated_hbm(tmp_path, system):
    dense = simulate(system, load_trace(_path(tmp_path, batch_size=1)), None)
    kept = simulate(system, load_trace(_path(tmp_path, batch_size=1,
                                             kv_budget={"sink": 4, "window": 1020})), None)
    assert dense.feasible and kept.feasible
    # the dense cache holds 16448 tokens, the budget 1024; the prefill's one-layer buffer stays
    saved = (P + G - 1024) * TOKEN_LAYER * LAYERS
    assert dense.peak_bytes["hbm"] - kept.peak_bytes["hbm"] == pytest.approx(
        saved - P * TOKEN_LAYER, rel=0.05)
    assert kept.step_time_s < dense.step_time_s  # decode attends over 1024 tokens, not 16K


def test_prefetch_fetches_top_k_tokens_per_step(tmp_path, system):
    top_k = 512
    trace = load_trace(_path(tmp_path, kv_prefetch={"top_k": top_k, "selector_bits": 4}))
    prog = build_program(trace, system, DRAM)
    kv = {n: t for n, t in prog.tensors.items() if n.endswith(".kv")}
    sel = {n: t for n, t in prog.tensors.items() if n.endswith(".kv_selector")}
    # the cache is homed in DRAM whole; the 4-bit key copy lives on the GPU
    assert all(set(t.home) == {"dram"} for t in kv.values())
    assert all(set(t.home) == {"hbm"} for t in sel.values())
    assert sum(t.bytes for t in sel.values()) == LAYERS * B * (P + G) * 8 * 128 * 4 // 8
    fetched: dict[int, float] = {}
    for o in prog.ops:
        if o.phase == "decode" and o.name.endswith(".attention"):
            t = next(n for n in o.inputs if n.endswith(".kv"))
            fetched[o.iteration] = fetched.get(o.iteration, 0.0) + \
                o.in_frac[o.inputs.index(t)] * kv[t].bytes
    assert len(fetched) == G - 1
    for step in fetched.values():  # exactly top_k tokens' KV per sequence and layer
        assert step == pytest.approx(top_k * TOKEN_LAYER * LAYERS * B)


def test_prefetch_beats_streaming_the_whole_cache(tmp_path, system):
    full = simulate(system, load_trace(_path(tmp_path)), DRAM)
    times = {}
    for k in (256, 2048):
        r = simulate(system, load_trace(_path(tmp_path, kv_prefetch={"top_k": k})), DRAM)
        assert r.feasible
        times[k] = r.step_time_s
        assert r.peak_bytes["dram"] == LAYERS * B * (P + G) * TOKEN_LAYER  # the whole cache
    assert full.feasible
    assert times[256] <= times[2048] < full.step_time_s
    assert full.breakdown["exposed_transfer"] > 0.2 * full.step_time_s


def test_budget_and_prefetch_compose(tmp_path, system):
    trace = load_trace(_path(tmp_path, kv_budget={"sink": 4, "window": 1020, "budget": 4096},
                             kv_prefetch={"top_k": 256}))
    assert trace.tensors["L{layer}.kv"].bytes == B * 4096 * TOKEN_LAYER
    prog = build_program(trace, system, DRAM)
    att = next(o for o in prog.ops if o.phase == "decode" and o.name.endswith(".attention"))
    t = next(n for n in att.inputs if n.endswith(".kv"))
    assert att.in_frac[att.inputs.index(t)] == pytest.approx(256 / 4096)


def test_user_mistakes_name_the_key(tmp_path):
    with pytest.raises(SpecError) as err:
        load_trace(_path(tmp_path, kv_budget={"sink": 4, "window": 1024, "budget": 100}))
    assert "kv_budget" in (err.value.key or "")
    with pytest.raises(SpecError) as err:
        load_trace(_path(tmp_path, kv_bits=4, kv_quant={}, kv_budget={"window": 64}))
    assert err.value.key == "inference.kv_budget"


def test_cli_reports_budget_error_exit_2(tmp_path):
    path = _path(tmp_path, kv_prefetch={"top_k": 0})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-m", "memsim", "simulate", "-w", str(path), "-H",
                          "rtx4090-workstation", "--json"], capture_output=True, text=True, env=env)
    assert out.returncode == 2
    doc = json.loads(out.stdout)
    assert "kv_prefetch.top_k" in (doc["key"] or "")


def test_per_layer_budgets_size_each_layer(tmp_path, system):
    # CAKE-style: early layers keep more, late layers less (here 2048 for the first half, 512 after)
    caps = [2048] * 16 + [512] * 16
    trace = load_trace(_path(tmp_path, kv_budget={"sink": 4, "window": 124, "budget": caps}))
    assert trace.meta["per_device_bytes"]["kv_cache"] == B * TOKEN_LAYER * sum(caps)
    prog = build_program(trace, system, DRAM)
    assert prog.tensors["L0.kv"].bytes == B * 2048 * TOKEN_LAYER
    assert prog.tensors["L31.kv"].bytes == B * 512 * TOKEN_LAYER
    # every decode step reads each layer's whole (full) budget: 16 layers × 2048 + 16 × 512 tokens
    read: dict[int, float] = {}
    for o in prog.ops:
        if o.phase == "decode" and o.name.endswith(".attention"):
            t = next(n for n in o.inputs if n.endswith(".kv"))
            read[o.iteration] = read.get(o.iteration, 0.0) + o.in_frac[o.inputs.index(t)] * \
                prog.tensors[t].bytes
    assert all(v == pytest.approx(B * TOKEN_LAYER * sum(caps)) for v in read.values())
    r = simulate(system, trace, DRAM)
    assert r.feasible and r.peak_bytes["dram"] == B * TOKEN_LAYER * sum(caps)
    with pytest.raises(SpecError) as err:
        load_trace(_path(tmp_path, kv_budget={"window": 64, "budget": [128] * 31}))
    assert err.value.key == "inference.kv_budget.budget"


def test_emitted_configs_say_the_knobs_are_not_expressible(tmp_path, system):
    from memsim.emit import emit

    trace = load_trace(_path(tmp_path, batch_size=1, kv_prefetch={"top_k": 256}))
    out = emit("flexgen", system, trace, DRAM)
    assert any("kv_prefetch" in n for n in out.notes)


def test_snapkv_keeps_the_generated_tokens_beside_the_budget(tmp_path, system):
    trace = load_trace(_path(tmp_path, kv_budget={"sink": 0, "window": 32, "budget": 2048,
                                                  "keep_generated": True}))
    assert trace.tensors["L{layer}.kv"].bytes == B * (2048 + G) * TOKEN_LAYER
    prog = build_program(trace, system, DRAM)
    att = [o for o in prog.ops if o.phase == "decode" and o.name == "L0.attention"]
    t = next(n for n in att[0].inputs if n.endswith(".kv"))
    # step t reads the 2048 kept prompt tokens plus the t + 1 since
    for o in att:
        assert o.in_frac[o.inputs.index(t)] == pytest.approx((2048 + o.iteration + 1) / (2048 + G))
    # contexts 102, 103, 104 hold the 10 kept prompt tokens plus 2, 3, 4 generated
    assert mean_kept(100, 4, 10, keep_generated=True) == pytest.approx((12 + 13 + 14) / 3)


@pytest.mark.slow
def test_snapkv_case_fits_380k_and_finds_the_longest_prompts():
    from memsim.studies.reproduce import run_case

    r = run_case("snapkv")
    assert [f.memsim for f in r.figures] == [1.0]
    longest = [int(line.split(": ")[1].split(" ")[0].replace(",", "")) for line in r.setup
               if line.startswith("longest")]
    # with the budget past the published 380K; without, the 512 KiB/token cache binds well below
    assert longest[0] >= 380_000 > longest[1]
