"""inference.kv_growth: concat holds the previous decode step's cache until the step ends (HF
transformers' tuple cache, KIVI's code on it); preallocated (the default) writes in place."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from memsim.hardware import load_system
from memsim.sim import simulate
from memsim.workloads import load_trace, load_workload, workload_architecture
from memsim.workloads.kvquant import concat_held_bytes
from memsim.workloads.spec import KVQuant


def _path(tmp_path: Path, **inf) -> Path:
    base = {"batch_size": 4, "prompt_len": 161, "gen_len": 338, "kv_bits": 16, "dtype": "fp16"}
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({"name": "grow", "model": "llama-2-7b", "inference": {**base, **inf}}))
    return path


def test_a_16_bit_step_holds_the_whole_previous_cache(tmp_path):
    arch = workload_architecture(load_workload(_path(tmp_path)))
    # the last step grows 498 tokens to 499: 498 tokens of K and V, 2 bytes, 32 layers
    assert concat_held_bytes(arch, 161, 338, 16, None) == pytest.approx(32 * 4096 * 2 * 2 * 498)


def test_kivi_passes_its_quantised_keys_through_except_at_a_block(tmp_path):
    arch = workload_architecture(load_workload(_path(tmp_path)))
    q = KVQuant(group_size=32, residual=128)
    d, layers = arch.kv_dim, arch.layers
    # prompt 127, two steps: 127 -> 128 fills the first key block (127 fp16 keys and values held,
    # nothing quantised yet); 128 -> 129 holds 0 fp16 keys, 128 fp16 values
    assert concat_held_bytes(arch, 127, 2, 2, q) == pytest.approx(layers * d * 254 * 16 / 8)
    # at 499 tokens the last step holds 114 fp16 keys, 128 fp16 values and 370 quantised values
    # (3 bits each with the scales); the step that fills the 384-key block also re-creates 256
    # quantised keys: that one holds more
    last = (114 + 128) * 16 + 370 * 3
    block = (127 + 128) * 16 + 255 * 3 + 256 * 3
    assert concat_held_bytes(arch, 161, 338, 2, q) == pytest.approx(layers * d * max(last, block) / 8)


def test_concat_raises_the_simulated_peak_by_the_held_cache(tmp_path):
    system = load_system("a100-80gb-sxm", ["hardware.overheads=false"])
    inplace = load_trace(_path(tmp_path))
    concat = load_trace(_path(tmp_path, kv_growth="concat"))
    held = 4 * concat_held_bytes(workload_architecture(load_workload(_path(tmp_path))), 161, 338, 16, None)
    assert concat.meta["per_device_bytes"]["total"] - inplace.meta["per_device_bytes"]["total"] == \
        pytest.approx(held, rel=1e-6)
    peaks = [simulate(system, t, None).peak_bytes["hbm"] for t in (concat, inplace)]
    assert peaks[0] - peaks[1] == pytest.approx(held, rel=0.02)
    assert concat.flops == inplace.flops


def test_an_unknown_growth_names_the_key(tmp_path):
    from memsim.errors import SpecError

    with pytest.raises(SpecError) as err:
        load_workload(_path(tmp_path, kv_growth="append"))
    assert "kv_growth" in str(err.value.key)
