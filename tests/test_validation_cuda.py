"""The CUDA path: device tensors, pinned host buffers, copies on their own streams, CUDA events.
Runs where torch sees a GPU; skipped (visibly) everywhere else."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_cuda_calibration(tmp_path):
    from memsim.hardware import load_system
    from memsim.validation.calibrate import calibrate, write_system

    system = calibrate("cuda", quick=True, scratch=tmp_path)
    write_system(system, tmp_path / "gpu.yaml")
    loaded = load_system(tmp_path / "gpu.yaml")
    assert loaded.gpu is not None and loaded.fast_tier == "hbm"
    assert {"hbm", "dram", "disk"} <= set(loaded.tiers)
    link = next(link for link in loaded.links if link.name == "pcie-gpu")
    assert link.rate("hbm") > 0 and link.rate("dram") > 0 and math.isfinite(link.rate("dram"))
    assert loaded.calibration["pinned_copy_Bps"]


def test_cuda_replay_streams_weights_from_pinned_host(tmp_path):
    import json

    import yaml

    from memsim.contracts.plan import Plan
    from memsim.validation.calibrate import calibrate
    from memsim.validation.replay import replay
    from memsim.workloads import build_trace, load_workload

    micro = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
             "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 4,
             "num_hidden_layers": 2, "vocab_size": 256, "max_position_embeddings": 256}
    (tmp_path / "micro.json").write_text(json.dumps(micro))
    (tmp_path / "w.yaml").write_text(yaml.safe_dump({
        "name": "micro-train", "model": "micro.json",
        "training": {"micro_batch": 1, "seq_len": 32, "precision": "bf16", "optimizer": "adamw"}}))
    trace = build_trace(load_workload(tmp_path / "w.yaml"))
    system = calibrate("cuda", quick=True, scratch=tmp_path)
    plan = Plan(placement={"weight": {"dram": 0.5, "hbm": 0.5}}, activations="offload",
                activation_tier="disk")
    m = replay(system, trace, plan, device="cuda", repeats=1, scratch=tmp_path)
    assert m.step_s > 0 and math.isfinite(m.step_s)
    assert m.copy_bytes.get("dram->hbm", 0) > 0 and m.copy_bytes.get("hbm->disk", 0) > 0


def test_cuda_replay_fetches_a_dram_kv_cache_as_the_simulator_does(tmp_path):
    """Decode with the KV cache homed in pinned DRAM: per direction the replay makes the
    simulator's copies in its order (the context each decode segment did not append is fetched)."""
    import json

    import yaml

    from memsim.contracts.plan import Plan
    from memsim.sim.engine import StepEngine
    from memsim.sim.program import build_program
    from memsim.validation.calibrate import calibrate
    from memsim.validation.replay import replay
    from memsim.workloads import build_trace, load_workload

    micro = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
             "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 4,
             "num_hidden_layers": 2, "vocab_size": 256, "max_position_embeddings": 256}
    (tmp_path / "micro.json").write_text(json.dumps(micro))
    (tmp_path / "w.yaml").write_text(yaml.safe_dump({
        "name": "micro-infer", "model": "micro.json",
        "inference": {"batch_size": 4, "prompt_len": 32, "gen_len": 4, "dtype": "bf16"}}))
    trace = build_trace(load_workload(tmp_path / "w.yaml"))
    system = calibrate("cuda", quick=True, scratch=tmp_path)
    for plan in (Plan(placement={"kv": {"dram": 1.0}}),
                 Plan(placement={"kv": {"dram": 1.0}}, gpu_batch_size=2, num_gpu_batches=2)):
        engine = StepEngine(system, build_program(trace, system, plan), plan.prefetch_depth,
                            False, trace.meta)
        engine.run()
        simulated: dict[str, list[int]] = {}
        for src, dst, nbytes, _start, _end in engine.clock.copier.log:
            simulated.setdefault(f"{src}->{dst}", []).append(nbytes)
        m = replay(system, trace, plan, device="cuda", repeats=1, scratch=tmp_path)
        assert {k: [b for _, b in v] for k, v in m.copy_log.items()} == simulated
        assert len(simulated["dram->hbm"]) == 3 * 2 * (plan.num_gpu_batches or 1)
