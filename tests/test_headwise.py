"""plan.kv_head_groups (HeadInfer): KV streamed one head group at a time, executed by the engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from memsim.errors import SpecError
from memsim.hardware import load_system
from memsim.planners import Plan
from memsim.sim import simulate
from memsim.workloads import load_trace


def _trace(tmp_path: Path):
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({"name": "llama-long", "model": "llama-3-8b", "inference": {
        "batch_size": 1, "prompt_len": 16384, "gen_len": 4, "dtype": "bf16", "prefill_chunk": 4096}}))
    return load_trace(path)


def test_headwise_streaming_holds_head_groups_not_layers(tmp_path):
    trace = _trace(tmp_path)
    system = load_system("rtx4090-workstation", ["hardware.overheads=false"])
    kv_layer = trace.tensors["L{layer}.kv"].bytes
    # what the GPU holds besides KV: the all-on-GPU peak minus the whole KV cache
    weights = (simulate(system, trace, None).peak_bytes["hbm"]
               - trace.meta["per_device_bytes"]["kv_cache"])
    peaks, times = {}, {}
    for g in (None, 8):
        r = simulate(system, trace, Plan(placement={"kv": {"dram": 1.0}}, kv_head_groups=g))
        assert r.feasible
        peaks[g], times[g] = r.peak_bytes["hbm"], r.step_time_s
        # the whole KV cache stays homed in DRAM either way
        assert r.peak_bytes["dram"] >= trace.meta["per_device_bytes"]["kv_cache"]
    # layer-wise: at least two layers' KV on the GPU (in use + prefetched); head-wise: a few
    # head groups' (an eighth of a layer each), well under one layer
    assert peaks[None] - weights >= 2 * kv_layer * 0.9
    assert peaks[8] < peaks[None] - 1.5 * kv_layer
    assert peaks[8] - weights < kv_layer
    # the same bytes move and the same FLOPs run: the step time barely changes
    assert times[8] == pytest.approx(times[None], rel=0.25)


def test_head_groups_must_divide_the_kv_heads(tmp_path):
    trace = _trace(tmp_path)
    system = load_system("rtx4090-workstation")
    with pytest.raises(SpecError) as err:
        simulate(system, trace, Plan(placement={"kv": {"dram": 1.0}}, kv_head_groups=3))
    assert err.value.key == "kv_head_groups"
    with pytest.raises(SpecError):
        Plan.from_dict({"kv_head_groups": 0})
