"""calibrate --quick gives a System that loads, with positive finite figures; disk I/O helpers
bypass the cache and clean up after themselves, even on SIGTERM."""

from __future__ import annotations

import math
import os
import signal
import statistics

import pytest
import yaml
from typer.testing import CliRunner

pytest.importorskip("torch")

from memsim.cli import app
from memsim.errors import SpecError
from memsim.hardware import load_system
from memsim.validation.backend import make_backend
from memsim.validation.diskio import DirectFile, Scratch, aligned_buffer, probe_mode


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "me.yaml"
    result = CliRunner().invoke(app, ["calibrate", "--quick", "-o", str(out), "--scratch",
                                      str(out.parent), "--json"])
    assert result.exit_code == 0, result.output
    return out, yaml.safe_load(result.stdout)


@pytest.mark.slow
def test_quick_calibration_loads_as_a_system(machine):
    path, doc = machine
    assert doc["path"] == str(path)
    system = load_system(path)
    cpu = system.cpu
    figures = [*cpu.peak_flops.values(), *cpu.achieved_flops.values(), cpu.mem_bw, cpu.launch_overhead,
               system.tiers["disk"].read_bw, system.tiers["disk"].write_bw, system.tiers["disk"].latency]
    assert all(v > 0 and math.isfinite(v) for v in figures)
    assert 0 < cpu.matmul_efficiency <= 1 and 0 <= cpu.copy_slowdown <= 1
    assert {"matmul", "matmul/forward", "matmul/backward", "attention/backward"} <= set(cpu.achieved_flops)
    # the GEMMs again by their rows (tokens): one point per measured token count, read back
    from memsim.validation.calibrate import gemm_shapes
    rows = [float(m) for m in gemm_shapes("cpu", True)[0]]
    for key in ("matmul/forward", "matmul/backward"):
        curve = cpu.achieved_flops_by_rows[key]
        assert [x for x, _ in curve.points] == rows and all(y > 0 for _, y in curve.points)
        assert cpu.rate("matmul", key.split("/")[1], "fp32", int(rows[0])) == curve.points[0][1]
    # attention by its sequence length, one point per measured length
    from memsim.validation.calibrate import ATTENTION_QUICK
    for key in ("attention/forward", "attention/backward"):
        curve = cpu.achieved_flops_by_rows[key]
        assert [x for x, _ in curve.points] == sorted(float(s[2]) for s in ATTENTION_QUICK)
    with open("/proc/meminfo") as f:
        total = int(next(line for line in f if line.startswith("MemTotal")).split()[1]) * 1024
    assert system.tiers["dram"].capacity == total
    cal = system.calibration
    # the probe's level, sampled beside the disk samples: what a validation's rounds compare to
    probe = cal["probe"]
    assert len(probe["gemm_samples_flops_per_s"]) == len(cal["disk_tensor_io_samples_Bps"])
    assert probe["gemm_flops_per_s"] > 0 and probe["read_Bps"] == cal["disk_tensor_io_Bps"]["read"]
    assert probe["write_Bps"] == cal["disk_tensor_io_Bps"]["write"] and probe["tensors"] >= 1
    assert probe["gemm_shape"] == [64, 256, 256] and probe["gemm_dtype"] == "fp32"  # quick's shape
    assert cal["quick"] and cal["disk_mode"] in ("O_DIRECT", "fadvise")
    assert cal["host_buffers"] in ("2 MiB huge pages", "4 KiB pages")
    assert cal["torch"] and cal["cpu_model"] and cal["compute_threads"] >= 1
    assert cal["cache_flush_bytes"] == 16 << 20  # kernels timed cold (quick: a small flush)
    assert sorted(p[0] for p in system.tiers["disk"].read_size_curve.points) == \
        [4096, 65536, 262144, 1 << 20, 8 << 20]
    # the disk's level is whole tensors moved as a replay moves them, under compute; the request
    # sweep only shapes the curve, which meets that level at the 1 MiB request
    disk, under = system.tiers["disk"], cal["disk_rate_under_compute"]
    assert disk.read_bw == pytest.approx(cal["disk_tensor_io_Bps"]["read"] * under["read"])
    assert disk.write_bw == pytest.approx(cal["disk_tensor_io_Bps"]["write"] * under["write"])
    assert disk.read_size_curve.at(1 << 20) == pytest.approx(disk.read_bw)
    # reads and writes at once were measured, not assumed: each stream at its own rate, and the
    # two together capped at what a reader and a writer moved together
    tio = cal["disk_tensor_io_Bps"]
    assert disk.is_duplex
    assert disk.concurrency_curve.at(2) == pytest.approx(
        tio["mixed_read"] * under["read"] + tio["mixed_write"] * under["write"])
    assert disk.concurrency_curve.at(1) == pytest.approx(max(disk.read_bw, disk.write_bw))
    assert not any(path.parent.glob("memsim-*")), "scratch directory must be removed"


@pytest.mark.slow
def test_progress_bar_counts_every_step_and_gemm_rounds_give_every_shape(tmp_path):
    from memsim.validation.calibrate import GEMM_ROUNDS, STEPS, calibrate, gemm_shapes

    steps: list[str] = []
    system = calibrate("cpu", quick=True, scratch=tmp_path, progress=steps.append)
    assert len(steps) == STEPS[("cpu", True)]  # the bar ends full, not short or over
    rows, kn = gemm_shapes("cpu", quick=True)
    gemm_steps = [s for s in steps if s.startswith("GEMM")]
    assert len(gemm_steps) == GEMM_ROUNDS * (2 * len(rows) * len(kn) + len(kn))
    cal = system.calibration
    assert {(g["m"], g["k"], g["n"]) for g in cal["gemm_backward"]} == \
        {(m, k, n) for m in rows for k, n in kn}
    assert all(g["flops_per_s"] > 0 for g in cal["gemm"] + cal["gemm_backward"])
    # the disk level is the median of whole-tensor samples taken after each GEMM round and in
    # the disk phase, each direction on its own
    samples = cal["disk_tensor_io_samples_Bps"]
    assert len(samples) == GEMM_ROUNDS + 2
    for i, direction in enumerate(("read", "write")):
        assert cal["disk_tensor_io_Bps"][direction] == statistics.median(s[i] for s in samples)


def test_unwritable_output_is_bad_input(tmp_path):
    result = CliRunner().invoke(app, ["calibrate", "--quick", "-o", str(tmp_path / "no" / "x.yaml")])
    assert result.exit_code == 2 and "-o" in result.output
    result = CliRunner().invoke(app, ["calibrate", "--quick", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "directory" in result.output


def test_cuda_without_a_gpu_is_bad_input(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SpecError, match="no CUDA GPU"):
        make_backend("cuda")
    result = CliRunner().invoke(app, ["calibrate", "--device", "cuda", "-o", str(tmp_path / "x.yaml")])
    assert result.exit_code == 2 and "cuda" in result.output


def test_direct_io_buffers_get_huge_pages_where_the_kernel_gives_them():
    """A direct transfer's rate depends on its buffer's physical page order; a 2 MiB huge page
    is one contiguous segment, so every buffer of calibration and replay draws alike."""
    from memsim.validation.diskio import huge_pages

    if not huge_pages():
        pytest.skip("transparent huge pages are off on this kernel")
    buf = aligned_buffer(8 << 20)
    buf[:] = bytes(len(buf))  # fault every page in
    import ctypes

    start = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    huge, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if "-" in line.split()[0] and not line[0].isupper():
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                inside = lo <= start < hi
            elif inside and line.startswith("AnonHugePages:"):
                huge = int(line.split()[1]) << 10
    assert huge >= 2 << 20, "a private mapping advised MADV_HUGEPAGE gets huge pages"
    buf.close()


def test_direct_io_round_trip(tmp_path):
    mode = probe_mode(tmp_path)
    data = aligned_buffer(3 * 4096)
    data.write(bytes(range(256)) * 48)
    back = aligned_buffer(3 * 4096)
    with DirectFile(tmp_path / "f.bin", mode) as f:
        f.write_from(data, 0, 3 * 4096, request=4096)
        f.read_into(back, 0, 3 * 4096, request=8192)
    assert bytes(back) == bytes(data)


def test_disk_tier_reuses_a_dead_tensors_file_as_swap_space(tmp_path):
    """Writes after the first step overwrite allocated blocks (as into an offload engine's swap
    files): a dead tensor's file goes to the next tensor of its size, never to one of another
    size; the ledger counts live tensors only, and closing removes every file."""
    from memsim.validation.tiers import ComputeTier, DiskTier, fill_random

    host = ComputeTier("dram", make_backend("cpu"))
    disk = DiskTier("disk", tmp_path, probe_mode(tmp_path), host.backend)
    src = host.alloc("src", 3 * 4096)
    fill_random(src, 3 * 4096, 1)
    disk.write("a", src, 3 * 4096)
    first = disk.files["a"].path
    disk.delete("a")
    assert disk.ledger.now == 0 and first.exists()
    disk.write("b", src, 2 * 4096)  # another size: a file of its own
    disk.write("c", src, 3 * 4096)
    assert disk.files["c"].path == first and disk.files["b"].path != first
    back = host.alloc("back", 3 * 4096)
    disk.read("c", back, 3 * 4096)
    assert bytes(back[:3 * 4096]) == bytes(src[:3 * 4096])
    assert disk.ledger.now == 5 * 4096 and disk.ledger.peak == 5 * 4096
    disk.close()
    host.close()
    assert not list(tmp_path.glob("disk.*"))


def test_scratch_is_removed_on_error_and_on_sigterm(tmp_path):
    with pytest.raises(RuntimeError), Scratch(tmp_path) as folder:
        (folder / "x").write_bytes(b"1")
        raise RuntimeError
    assert not folder.exists()
    with pytest.raises(KeyboardInterrupt), Scratch(tmp_path) as folder:
        (folder / "y").write_bytes(b"1")
        os.kill(os.getpid(), signal.SIGTERM)
    assert not folder.exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
