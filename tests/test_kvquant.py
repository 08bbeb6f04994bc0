"""inference.kv_quant (KIVI's layout): scales, zero points and fp16 residual in the KV bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from memsim.errors import SpecError
from memsim.hardware import load_system
from memsim.sim import simulate
from memsim.workloads import load_trace, load_workload, workload_architecture
from memsim.workloads.kvquant import seq_layer_bytes
from memsim.workloads.spec import KVQuant


def _path(tmp_path: Path, **inf) -> Path:
    base = {"batch_size": 4, "prompt_len": 161, "gen_len": 338, "kv_bits": 2, "dtype": "fp16",
            "kv_quant": {"group_size": 32, "residual": 128}}
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({"name": "kivi", "model": "llama-2-7b",
                                    "inference": {**base, **inf}}))
    return path


def test_layout_counts_kivis_residual_and_scales(tmp_path):
    arch = workload_architecture(load_workload(_path(tmp_path)))
    d = arch.kv_dim  # 4096 for Llama-2-7B: K (or V) elements per token and layer
    # 499 tokens: keys 384 quantised + 115 fp16; values 371 quantised + 128 fp16; 2 bits plus a
    # 16-bit scale and zero point per 32 elements = 3 bits per quantised element
    want = d * ((384 + 371) * 3 + (115 + 128) * 16) / 8
    assert seq_layer_bytes(arch, 499, 2, KVQuant()) == pytest.approx(want)
    trace = load_trace(_path(tmp_path))
    assert trace.meta["per_device_bytes"]["kv_cache"] == pytest.approx(4 * 32 * want, rel=1e-6)
    plain = load_trace(_path(tmp_path), ["inference.kv_quant=null"])
    assert trace.meta["per_device_bytes"]["kv_cache"] > 2.5 * plain.meta["per_device_bytes"]["kv_cache"]


def test_attention_reads_the_layout_and_pays_dequantisation(tmp_path):
    trace = load_trace(_path(tmp_path))
    plain = load_trace(_path(tmp_path), ["inference.kv_quant=null"])

    def attention(t):
        block = next(b for b in t.blocks if b.name == "decode")
        return next(o for o in block.ops if o.name.endswith("attention"))
    assert attention(trace).bytes_read > 2 * attention(plain).bytes_read
    assert attention(trace).flops > 1.4 * attention(plain).flops  # + 2 FLOPs per cached element
    system = load_system("a100-80gb-sxm", ["hardware.overheads=false"])
    r, rp = simulate(system, trace, None), simulate(system, plain, None)
    assert r.peak_bytes["hbm"] > rp.peak_bytes["hbm"]


def test_kv_quant_needs_a_quantised_cache(tmp_path):
    with pytest.raises(SpecError) as err:
        load_trace(_path(tmp_path, kv_bits=16))
    assert err.value.key == "inference.kv_quant"
