"""Chen et al.'s segment checkpointing on a traced ResNet: the factory, the conv backward's shape,
the segment count, and the reproduction kind's figures on a small network."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from memsim.errors import SpecError  # noqa: E402
from memsim.hardware.gemm import matmul_shape  # noqa: E402
from memsim.studies.reproduce_spec import CaseSpec  # noqa: E402
from memsim.studies.reproduce_sublinear import (  # noqa: E402
    checkpoint_module,
    feature_maps_only,
    segment_count,
)
from memsim.workloads import torch_examples as ex  # noqa: E402
from memsim.workloads import torch_trace as tt  # noqa: E402
from memsim.workloads.stages import stage, unit_count  # noqa: E402

EX = "memsim.workloads.torch_examples"


def _small(train: bool = True):
    return tt.trace_factory(f"{EX}:resnet", ["2x3x64x64"], train=train,
                            args=["units=1,2,2,1", "base=8", "classes=10"])


def test_resnet50_layout_has_resnet50s_parameters():
    # 3,4,6,3 bottleneck units of width 64: the convolutions, batch norms and head of ResNet-50
    # (torchvision's resnet50 has 25,557,032 parameters)
    with torch.device("meta"):
        module = ex.resnet("3,4,6,3")
    assert sum(p.numel() for p in module.parameters()) == 25_557_032


def test_resnet_rejects_a_bad_stage_list():
    with pytest.raises(ValueError, match="four positive counts"):
        ex.resnet("3,4,6")


@pytest.mark.slow
def test_conv_backward_is_costed_as_the_forwards_gemm_shape():
    trace = _small()
    ops = [op for b in trace.blocks for op in b.ops]
    def shapes(phase: str, aten: str) -> list:
        return [matmul_shape(op) for op in ops if op.phase == phase and op.name.split(":")[-2] == aten]

    fwd, bwd = shapes("forward", "convolution"), shapes("backward", "convolution_backward")
    assert len(fwd) == len(bwd) > 10 and None not in bwd
    # backward runs in reverse order over the same (m, k, n) as the forward convolutions
    assert sorted(fwd) == sorted(bwd)


def test_units_and_sqrt_segments():
    trace = _small()
    units = unit_count(trace)
    assert units == 6 + 2  # six residual units, the stem and the head
    assert segment_count({}, units, Path("c.yaml")) == 3  # ceil(sqrt(8))
    assert segment_count({"segments": 2}, units, Path("c.yaml")) == 2
    assert stage(trace, max_stages=3).meta["layers"] == 3
    with pytest.raises(SpecError) as err:
        segment_count({"segments": 0}, units, Path("c.yaml"))
    assert err.value.key == "setup.segments"


def test_feature_maps_only_zeroes_parameters_and_gradients_alone():
    trace = stage(_small())
    maps = feature_maps_only(trace)
    for name, t in trace.tensors.items():
        assert maps.tensors[name].bytes == (0 if t.cls in ("weight", "grad") else t.bytes)
    assert maps.flops == trace.flops


@pytest.mark.slow
def test_segments_cut_the_feature_maps_for_one_extra_forward(tmp_path):
    spec = CaseSpec(name="t", title="t", kind="checkpoint_module", source="s", setup={
        "hardware": "h200", "baseline": "resident", "planner": "checkpoint-full", "segments": "sqrt",
        "module": {"factory": f"{EX}:resnet", "inputs": ["8x3x64x64"],
                   "args": {"units": "2,4,4,2", "base": 16}}},
        published={"peak_none_gb": 1.0, "peak_sqrt_gb": 0.2, "extra_time": 0.3})
    result = checkpoint_module(spec, tmp_path / "t.yaml", lambda _: None)
    figs = {f.key: f.memsim for f in result.figures}
    assert figs["peak_sqrt"] < figs["peak_none"]
    assert figs["reduction"] > 1.5
    # one recomputed forward: more than nothing, less than a whole extra step
    assert 0.1 < figs["extra_time"] < 0.6
    assert any("⌈√14⌉" in line for line in result.setup)


def test_a_missing_module_key_names_it(tmp_path):
    spec = CaseSpec(name="t", title="t", kind="checkpoint_module", source="s", setup={
        "hardware": "h200", "baseline": "resident", "planner": "checkpoint-full",
        "module": {"inputs": ["2x3x64x64"]}})
    with pytest.raises(SpecError) as err:
        checkpoint_module(spec, tmp_path / "t.yaml", lambda _: None)
    assert err.value.key == "setup.module.factory"
