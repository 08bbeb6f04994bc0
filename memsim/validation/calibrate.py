"""``memsim calibrate``: measure this machine and describe it as a System.

Every figure is the median of repeated runs of a real operation (``microbench``). The result is a
System whose tiers are the ones present (CPU: ``dram`` + ``disk``; CUDA: ``hbm`` + ``dram`` +
``disk``), with a ``calibration:`` mapping saying how and when each number was measured.

Thread budget (CPU): compute runs on ``cores - 1`` torch threads and copies on their own thread,
the way a GPU keeps its copy engines apart from its SMs. Calibration and replay use the same
split (``compute_threads``), so the measured rates are the rates the replay will see; what a copy
still costs the compute (memory-bandwidth interference) is measured and stored as
``Compute.copy_slowdown``.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path

import yaml

from memsim.errors import SpecError
from memsim.hardware.spec import System
from memsim.validation import microbench as mb
from memsim.validation.backend import Backend, make_backend
from memsim.validation.diskio import Scratch, host_buffers, probe_mode
from memsim.validation.drift import PROBE_TENSOR_BYTES, PROBE_TENSORS, GemmProbe, reference

# GEMMs of transformer linears, tokens × in × out: every (in, out) at every token count (the rows,
# which the achieved rate depends on: a GEMM over 128 tokens runs several % below one over 1024
# on a CPU, and far below on a GPU), forward in the default dtype and as a backward (dX and dW,
# whose operand layouts run at other rates); the other dtype at the largest rows only, for its
# peak. Sized per device: a GPU needs far bigger GEMMs to reach its rate.
GEMM_ROWS = {"cpu": (64, 128, 256, 512, 1024), "cuda": (128, 512, 2048, 8192)}
GEMM_KN = {"cpu": ((1024, 1024), (1024, 4096), (4096, 1024)),
           "cuda": ((4096, 4096), (4096, 14336), (14336, 4096))}
GEMM_ROWS_QUICK, GEMM_KN_QUICK = (64, 256), ((256, 256), (512, 512))
OVERLAP_GEMM = {"cpu": (256, 1024, 4096), "cuda": (2048, 4096, 4096)}  # (m, k, n): copy_slowdown's
GEMM_ROUNDS = 3  # every GEMM shape is timed once per round, rounds interleaved (mb.interleaved)
# (batch, heads, q, kv, head_dim), causal: one per sequence length, so ops run at their own
# length's rate (an attention over 128 tokens ran ~40% below the median of longer ones)
ATTENTION = [(1, 16, q, q, 64) for q in (128, 256, 512, 1024)]
ATTENTION_QUICK = [(1, 4, 128, 128, 64)]
DISK_SIZES = [4 << 10, 64 << 10, 256 << 10, 1 << 20, 8 << 20]  # includes mb.REQUEST

Progress = Callable[[str], None]


def gemm_shapes(device: str, quick: bool) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """The rows and the (in, out) sizes calibration measures GEMMs at."""
    return (GEMM_ROWS_QUICK, GEMM_KN_QUICK) if quick else (GEMM_ROWS[device], GEMM_KN[device])


def _steps(device: str, quick: bool) -> int:
    rows, kn = gemm_shapes(device, quick)
    # GEMMs: forward + backward per shape, the other dtype per (in, out), each once per round;
    # attention, memory, launch, scratch file, disk sizes, tensor I/O, latency, overlap, (pinned)
    gemms = GEMM_ROUNDS * (2 * len(rows) * len(kn) + len(kn))
    return gemms + 3 + 1 + len(DISK_SIZES) + 3 + (device == "cuda")


# progress steps per (device, quick), for the bar
STEPS = {(dev, q): _steps(dev, q) for dev in ("cpu", "cuda") for q in (False, True)}


def compute_threads() -> int:
    """torch threads for compute: every core but one, which the copy thread keeps to itself."""
    return max(1, (os.cpu_count() or 1) - 1)


def set_compute_threads(backend: Backend) -> int:
    n = compute_threads() if not backend.is_cuda else backend.torch.get_num_threads()
    backend.torch.set_num_threads(n)
    return n


def calibrate(device: str = "cpu", quick: bool = False, scratch: str | Path | None = None,
              name: str | None = None, progress: Progress | None = None) -> System:
    """Run the microbenchmarks and return the System they describe (not yet written anywhere)."""
    backend = make_backend(device)
    step = progress or (lambda _msg: None)
    threads = set_compute_threads(backend)
    reps = 3 if quick else 7
    with Scratch(scratch) as folder:
        mode = probe_mode(folder)
        # whole-tensor disk samples, one after each GEMM round and more in the disk phase: the
        # disk's level is the median over the whole calibration, not one moment's (mb.TensorIO)
        # and so are copy/compute overlap rounds (mb.Overlap)
        # a step's GEMM, not a big square one: on a 2-vCPU Intel VM a 1024^3 GEMM runs 0-20%
        # slower beside a disk stream from one round to the next, a 256x1024x4096 one within 2%
        # in most rounds
        shape = (64, 256, 256) if quick else OVERLAP_GEMM["cuda" if backend.is_cuda else "cpu"]
        overlap = mb.Overlap(backend, folder, mode, shape, default_dtype(backend), reps,
                             (32 << 20) if quick else (256 << 20))
        flush = mb.CacheFlush(backend, (16 << 20) if quick else (256 << 20))  # each timed run cold
        # the probe a validation takes beside every round (memsim.validation.drift), sampled
        # here at the moments the disk is: its median is the level a round's probe is compared to
        probe = GemmProbe(backend, shape, default_dtype(backend), flush)

        def between() -> None:
            tio.sample()
            probe.sample()
            overlap.sample()
        with mb.TensorIO(folder, mode, (4 << 20) if quick else PROBE_TENSOR_BYTES,
                         4 if quick else PROBE_TENSORS, 0.05 if quick else 0.5) as tio:
            figures = _compute_figures(backend, quick, reps, step, flush, between=between)
            figures.update(_disk_figures(backend, folder, mode, quick, reps, step, tio, overlap,
                                         probe))
            figures["probe"] = reference(probe, tio)
        if backend.is_cuda:
            figures.update(_pinned_figures(backend, quick, reps, step))
        capacity_disk = shutil.disk_usage(folder).free
    doc = _system_doc(backend, figures, mode, threads, capacity_disk, quick, name, scratch)
    return System.model_validate(doc)


def _compute_figures(backend: Backend, quick: bool, reps: int, step: Progress,
                     flush: mb.CacheFlush, between: Callable[[], None] | None = None) -> dict:
    rows, kn = gemm_shapes("cuda" if backend.is_cuda else "cpu", quick)
    default = default_dtype(backend)
    other = "fp32" if default == "bf16" else "bf16"
    shapes = [(m, k, n) for m in rows for k, n in kn]
    peak_shapes = [(rows[-1], k, n) for k, n in kn]
    ops = {default: mb.GemmOperands(backend, shapes, default),
           other: mb.GemmOperands(backend, peak_shapes, other)}
    fns = {}
    for shape in shapes:
        fns[("forward", default, *shape)] = ops[default].forward(*shape)
        fns[("backward", default, *shape)] = ops[default].backward(*shape)
    for shape in peak_shapes:
        fns[("forward", other, *shape)] = ops[other].forward(*shape)

    def progress(key, r: int) -> None:
        phase, dtype, m, k, n = key
        step(f"GEMM {phase} {m}x{k}x{n} {dtype} (round {r + 1}/{GEMM_ROUNDS})")

    seconds = mb.interleaved(backend, fns, GEMM_ROUNDS, max(1, reps // 2), progress, between, flush)
    gemms = [mb.Gemm(m, k, n, dtype, s) for (phase, dtype, m, k, n), s in seconds.items()
             if phase == "forward"]
    backward = [mb.Gemm(m, k, n, dtype, s / 2)  # two GEMMs per call: seconds per GEMM
                for (phase, dtype, m, k, n), s in seconds.items() if phase == "backward"]
    step("attention forward and backward (scaled_dot_product_attention)")
    shapes_attn = ATTENTION_QUICK if quick else ATTENTION
    attn = {phase: {s[2]: mb.attention(backend, *s, default, reps, phase == "backward", flush)
                    for s in shapes_attn} for phase in ("forward", "backward")}
    flush_bytes = flush.nbytes
    step("memory-bound kernels")
    mem = mb.memory_kernels(backend, (16 << 20) if quick else (256 << 20), reps)
    step("launch overhead")
    launch = mb.launch_overhead(backend, reps)
    return {"gemm": gemms, "gemm_backward": backward, "attention": attn, "memory": mem,
            "launch": launch, "cache_flush_bytes": flush_bytes}


def default_dtype(backend: Backend) -> str:
    """The dtype achieved_flops are measured in: bf16 on a GPU, fp32 on a CPU (the suites' dtype)."""
    return "bf16" if backend.is_cuda else "fp32"


def _disk_figures(backend: Backend, folder: Path, mode: str, quick: bool, reps: int,
                  step: Progress, tio: mb.TensorIO, overlap: mb.Overlap,
                  probe: GemmProbe) -> dict:
    size = (32 << 20) if quick else (512 << 20)
    step(f"write a {size >> 20} MiB scratch file ({mode})")
    path = mb.write_file(folder, mode, size)
    read, write = {}, {}
    for request in DISK_SIZES:
        volume = min(size, max(request * (16 if quick else 64), 4 * request))
        step(f"disk read/write, {request >> 10} KiB requests")
        read[request] = mb.disk_read(path, mode, request, volume, reps)
        write[request] = mb.disk_write(folder, mode, request, min(volume, 64 << 20), reps)
    step("whole tensors written and read back, alone and at once, as a replay moves them")
    for _ in range(max(2, reps // 2)):
        tio.sample()
        probe.sample()
    step("disk latency")
    latency = mb.disk_latency(path, mode, 5 * reps)
    step("copy/compute overlap")
    for _ in range(2):
        overlap.sample()
    return {"disk_read": read, "disk_write": write, "disk_latency": latency,
            "overlap": overlap.figures(),
            "tensor_io": tio.rates(), "tensor_io_samples": [list(s) for s in tio.samples]}


def _pinned_figures(backend: Backend, quick: bool, reps: int, step: Progress) -> dict:
    step("pinned host <-> device copies")
    sizes = [1 << 20, 64 << 20] if quick else [1 << 20, 16 << 20, 256 << 20]
    return {"pinned": {s: mb.pinned_copy(backend, s, reps) for s in sizes},
            "pageable": {s: mb.pageable_copy(backend, s, reps) for s in sizes}}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total() -> int:
    """DRAM bytes from /proc/meminfo (MemTotal)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _compute_unit(backend: Backend, figures: dict, kind: str, memory: str, model: str) -> dict:
    gemms: list[mb.Gemm] = figures["gemm"]
    peak = {d: max(g.flops_per_s for g in gemms if g.dtype == d) for d in ("fp32", "bf16")}
    eff = statistics.median(g.flops_per_s / peak[g.dtype] for g in gemms)
    default = default_dtype(backend)
    forward = statistics.median(g.flops_per_s for g in gemms if g.dtype == default)
    backward = statistics.median(g.flops_per_s for g in figures["gemm_backward"])
    by_rows = {"matmul/forward": _by_rows([g for g in gemms if g.dtype == default]),
               "matmul/backward": _by_rows(figures["gemm_backward"])}
    mem = figures["memory"]
    streaming = {k: v for k, v in mem.items() if k != "gelu"}  # gelu is compute-bound on CPUs
    mem_bw = max(streaming.values())
    overlap = [figures["overlap"][d] for d in ("read", "write")]
    slowdown = statistics.mean(max(0.0, o["gemm_with_copy_s"] / o["gemm_alone_s"] - 1) for o in overlap)
    attn = {phase: statistics.median(by_q.values()) for phase, by_q in figures["attention"].items()}
    by_rows.update({f"attention/{phase}": [[float(q), rate] for q, rate in sorted(by_q.items())]
                    for phase, by_q in figures["attention"].items()})
    return {
        "kind": kind, "model": model, "memory": memory,
        "peak_flops": peak,  # the best GEMM measured per dtype: a measured ceiling, not a datasheet
        "mem_bw": mem_bw,
        "matmul_efficiency": round(min(1.0, eff), 4),
        # replays run memory-bound ops as a streaming add: its rate is the achievable fraction
        "memory_efficiency": round(min(1.0, mem["add"] / mem_bw), 4),
        "launch_overhead": figures["launch"],
        "copy_slowdown": round(min(1.0, slowdown), 4),
        "achieved_flops": {"matmul": statistics.median([forward, backward]),
                           "matmul/forward": forward, "matmul/backward": backward,
                           "attention": attn["forward"], "attention/forward": attn["forward"],
                           "attention/backward": attn["backward"]},
        # the same GEMMs by their rows (the median over (in, out) at each), and attention by
        # its sequence length: ops whose trace gives a shape run at their own token count's
        # rate, the rest at the medians above
        "achieved_flops_by_rows": by_rows,
        "source": f"memsim calibrate ({backend.device})",
    }


def _by_rows(gemms: list[mb.Gemm]) -> list[list[float]]:
    """[[rows, median FLOP/s over the (in, out) sizes measured at those rows], ...], rows rising."""
    rows = sorted({g.m for g in gemms})
    return [[float(m), statistics.median(g.flops_per_s for g in gemms if g.m == m)] for m in rows]


def _system_doc(backend: Backend, figures: dict, mode: str, threads: int, disk_free: int,
                quick: bool, name: str | None, scratch: str | Path | None) -> dict:
    # read_bw and write_bw are each direction alone. Both at once is its own measurement, a
    # reader and a writer streaming whole tensors together: their sum is the device's aggregate
    # at two streams (concurrency_curve; the simulator caps each of n streams at curve(n) / n),
    # and the tier is duplex (each stream also at its own direction's rate). No split of the
    # alone rates predicts a virtio VM's disk: with the half-duplex model the cases that read and
    # write at once ran 8-10% faster than predicted (a single stream of synchronous 1 MiB
    # requests does not keep a virtual disk busy), with the measured sum 2-5%. The disk as the replay
    # sees it: copies run while the compute thread runs (that is what a prefetch is for), and on
    # a 2-vCPU machine that can slow them (the simulator has no compute-slows-copies term), so
    # each direction's rates are scaled by that direction's measured with-compute / alone ratio;
    # the unscaled rates stay in calibration.disk_*_Bps.
    # The level of each direction is whole tensors moved as a replay moves them (``tensor_io``);
    # the request-size sweep gives the read-size curve its shape, scaled to that level at the
    # 1 MiB request both use.
    under = {d: 1.0 if backend.is_cuda else _under_compute(figures["overlap"], d)
             for d in ("read", "write")}
    tio = figures["tensor_io"]
    level = tio["read"] / figures["disk_read"][mb.REQUEST]
    read = {k: v * level * under["read"] for k, v in figures["disk_read"].items()}
    write_bw = tio["write"] * under["write"]  # (the write sweep shapes no curve: recorded only)
    torch = backend.torch
    host = platform.node() or "this-machine"
    tiers = {
        "dram": {"kind": "dram", "capacity": _mem_total(), "read_bw": figures["memory"]["copy"],
                 "write_bw": figures["memory"]["copy"], "latency": 1e-7,
                 "source": "MemTotal from /proc/meminfo; bandwidth of a measured streaming copy"},
        "disk": {"kind": "ssd", "capacity": disk_free, "read_bw": read[mb.REQUEST],
                 "write_bw": write_bw, "latency": figures["disk_latency"],
                 "read_size_curve": [[s, bw] for s, bw in sorted(read.items())],
                 "duplex": True,
                 "concurrency_curve": [[1, max(read[mb.REQUEST], write_bw)],
                                       [2, tio["mixed_read"] * under["read"] +
                                        tio["mixed_write"] * under["write"]]],
                 "source": f"free bytes of the scratch file system; {mode} reads alone, writes "
                           "alone, and both at once (the aggregate at two streams)"},
    }
    links = [{"name": "disk-io", "kind": "nvme", "ends": ["dram", "disk"],
              "bandwidth": write_bw, "bandwidth_reverse": read[mb.REQUEST],
              "source": "the disk's measured write (dram→disk) and read (disk→dram) throughput"}]
    compute = {"cpu": _compute_unit(backend, figures, "cpu", "dram", _cpu_model())}
    if backend.is_cuda:
        props = torch.cuda.get_device_properties(0)
        big = max(figures["pinned"])
        h2d, d2h = figures["pinned"][big]
        tiers["hbm"] = {"kind": "hbm", "capacity": props.total_memory, "read_bw": compute["cpu"]["mem_bw"],
                        "write_bw": compute["cpu"]["mem_bw"], "source": "torch.cuda device properties"}
        p_h2d, p_d2h = figures["pageable"][big]
        links.append({"name": "pcie-gpu", "kind": "pcie", "ends": ["hbm", "dram"], "bandwidth": d2h,
                      "bandwidth_reverse": h2d, "pageable_bandwidth": min(p_h2d, p_d2h),
                      "source": "pinned copies on a side stream; pageable copies on the default stream"})
        gpu = _compute_unit(backend, figures, "gpu", "hbm", props.name)
        tiers["hbm"]["read_bw"] = tiers["hbm"]["write_bw"] = gpu["mem_bw"]
        compute = {"gpu": gpu}
    calibration = {
        "measured_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": host, "device": backend.device, "cpu_model": _cpu_model(), "cores": os.cpu_count(),
        "compute_threads": threads, "torch": torch.__version__, "python": platform.python_version(),
        "quick": quick, "statistic": "median of repeated runs", "disk_mode": mode,
        "disk_request_bytes": mb.REQUEST, "scratch": str(scratch) if scratch else "system temp dir",
        # the pages direct transfers land in: a replay on other pages reads at another rate
        "host_buffers": host_buffers(),
        "kernels_timed": "cold: caches flushed (mb.CacheFlush) before each timed GEMM and attention",
        "cache_flush_bytes": figures["cache_flush_bytes"],
        "gemm": [{"m": g.m, "k": g.k, "n": g.n, "dtype": g.dtype, "flops_per_s": g.flops_per_s}
                 for g in figures["gemm"]],
        "gemm_backward": [{"m": g.m, "k": g.k, "n": g.n, "dtype": g.dtype, "flops_per_s": g.flops_per_s}
                          for g in figures["gemm_backward"]],
        "attention_flops_per_s": {phase: {str(q): r for q, r in by_q.items()}
                                  for phase, by_q in figures["attention"].items()},
        "memory_kernels_Bps": figures["memory"],
        "disk_read_Bps": {str(k): v for k, v in figures["disk_read"].items()},
        "disk_write_Bps": {str(k): v for k, v in figures["disk_write"].items()},
        "disk_tensor_io_Bps": figures["tensor_io"],
        # each sample's (read, write, mixed read, mixed write) B/s in the order taken, spread
        # over the calibration
        "disk_tensor_io_samples_Bps": figures["tensor_io_samples"],
        "disk_rate_under_compute": under,
        # the level a validation's per-round probe is compared to (memsim.validation.drift)
        "probe": figures["probe"],
        "overlap": figures["overlap"],
    }
    if "pinned" in figures:
        calibration["pinned_copy_Bps"] = {str(k): {"h2d": v[0], "d2h": v[1]}
                                          for k, v in figures["pinned"].items()}
        calibration["pageable_copy_Bps"] = {str(k): {"h2d": v[0], "d2h": v[1]}
                                            for k, v in figures["pageable"].items()}
    return {"name": name or f"{host}-{backend.device}",
            "description": f"measured by memsim calibrate on {host} ({_cpu_model()})",
            "tiers": tiers, "links": links, "compute": compute, "calibration": calibration}


def _under_compute(overlap: dict, direction: str) -> float:
    """Fraction of its alone rate a disk copy keeps while the compute thread runs (≤ 1; on a GPU
    machine the copy engines are apart from the SMs and disk I/O is host-side: 1)."""
    o = overlap.get(direction)
    if not o or "copy_alone_Bps" not in o or o["copy_alone_Bps"] <= 0:
        return 1.0
    return round(min(1.0, o["copy_with_compute_Bps"] / o["copy_alone_Bps"]), 4)


def write_system(system: System, path: str | Path) -> Path:
    """Write the System as YAML; an unwritable path is bad input (exit 2), not a traceback."""
    path = Path(path)
    doc = system.model_dump(mode="json", exclude_none=True)
    header = ("# Measured by `memsim calibrate`: every figure is the median of repeated runs on this\n"
              "# machine; `calibration:` says how and when. Bandwidths in bytes/s, times in seconds.\n")
    try:
        path.write_text(header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    except OSError as exc:
        raise SpecError(f"cannot write: {exc.strerror}", file=str(path), key="-o") from None
    return path


def check_writable(path: str | Path, key: str = "-o") -> None:
    """Fail before minutes of measuring if an output path cannot be written."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise SpecError("is a directory; expected a file name such as my-machine.yaml",
                        file=str(path), key=key)
    blocked = path.exists() and not os.access(path, os.W_OK)
    if not folder.is_dir() or not os.access(folder, os.W_OK) or blocked:
        raise SpecError(f"cannot write here (folder {str(folder)!r} missing or not writable)",
                        file=str(path), key=key)
