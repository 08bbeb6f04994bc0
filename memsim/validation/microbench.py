"""Microbenchmarks: each returns the median of repeated runs of one real operation on this machine.

Kept separate from ``calibrate`` (which turns the figures into a System) so that each measurement
is short enough to read and can be called alone from a notebook.
"""

from __future__ import annotations

import os
import statistics
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memsim.validation.backend import Backend, torch_dtype
from memsim.validation.diskio import DirectFile, Mode, aligned_buffer
from memsim.validation.tiers import REQUEST


@dataclass
class Gemm:
    m: int
    k: int
    n: int
    dtype: str
    seconds: float

    @property
    def flops_per_s(self) -> float:
        return 2 * self.m * self.k * self.n / self.seconds


class GemmOperands:
    """Operands for linear-layer GEMMs of many shapes in one dtype: views into one set of buffers,
    so every shape stays ready to be timed again (calibration times them in interleaved rounds)
    without holding a set of tensors per shape or allocating between rounds."""

    def __init__(self, backend: Backend, shapes: list[tuple[int, int, int]], dtype: str):
        torch = backend.torch
        self.torch, self.dtype = torch, dtype
        gen = torch.Generator(device="cpu").manual_seed(0)
        dt = torch_dtype(dtype)
        mk, kn, mn = (max(a * b for a, b in pairs) for pairs in (
            [(m, k) for m, k, _ in shapes], [(k, n) for _, k, n in shapes], [(m, n) for m, _, n in shapes]))
        self.x, self.w, self.dy = (torch.randn(size, generator=gen).to(backend.device, dt)
                                   for size in (mk, kn, mn))
        self.out, self.dx, self.dw = (torch.empty(size, dtype=dt, device=backend.device)
                                      for size in (mn, mk, kn))

    def forward(self, m: int, k: int, n: int) -> Callable[[], Any]:
        """Y = X·W: one GEMM of 2·m·k·n FLOPs."""
        x, w, y = self.x[:m * k].view(m, k), self.w[:k * n].view(k, n), self.out[:m * n].view(m, n)
        return lambda: self.torch.matmul(x, w, out=y)

    def backward(self, m: int, k: int, n: int) -> Callable[[], Any]:
        """A linear layer's backward, dX = dY·Wᵀ and dW = Xᵀ·dY: two GEMMs (4·m·k·n FLOPs) whose
        operand layouts run at other rates than the forward's X·W."""
        torch = self.torch
        x, w, dy = self.x[:m * k].view(m, k), self.w[:k * n].view(k, n), self.dy[:m * n].view(m, n)
        dx, dw = self.dx[:m * k].view(m, k), self.dw[:k * n].view(k, n)

        def run():
            torch.matmul(dy, w.t(), out=dx)
            torch.matmul(x.t(), dy, out=dw)
        return run


class CacheFlush:
    """Evicts the caches between timed kernel runs by reading ``nbytes``, as a training step's
    other ops evict one layer's weights before their next use. Why: timed back to back a GEMM
    finds its operands in cache; in a replayed step it does not, and over 128 tokens it then ran
    6-25% slower (1.22x median over the tiny-llama and calibration shapes on a 2-vCPU VM;
    1.02-1.12x at 256 tokens, ~1.0 at 1024), the rates the replay's GEMMs ran at.

    Why 256 MiB, read: reading it gave the cold rates (101-107 GFLOP/s at 128 tokens; 720 MiB:
    101); copying 2 x 128 MiB (memcpy's streaming stores) left one calibration nearly hot (128).
    And not more: on a 2-vCPU virtio VM, touching 720 MiB more of guest memory slows the virtual
    disk's direct writes for the rest of the process (2.1 to 1.2-1.6 GB/s; 256 MiB: no change),
    which a calibration would take as its write level."""

    def __init__(self, backend: Backend, nbytes: int = 256 << 20):
        self.nbytes = nbytes
        self.buf = backend.torch.ones(nbytes // 4, device=backend.device)

    def __call__(self) -> None:
        self.buf.sum()  # reads only: every line passes through the cache


def interleaved(backend: Backend, fns: dict[Any, Callable[[], Any]], rounds: int, repeats: int,
                progress: Callable[[Any, int], None] | None = None,
                between: Callable[[], None] | None = None,
                before: Callable[[], Any] | None = None) -> dict[Any, float]:
    """Seconds per call of each function: the median over ``rounds`` rounds, each of which times
    every function in turn (the median of ``repeats`` runs after one untimed).

    Why rounds: timed back to back, shapes measured in the same few seconds share whatever the
    shared host was doing then. One calibration drew GEMM rates 5-8% below the next ones for every
    shape at once, and every compute-bound case of its validation run came out 8-15% slow. Spread
    over rounds, a slow few seconds costs each figure one sample of ``rounds``. ``between`` runs
    after each round (calibration samples the disk there, to spread its samples too)."""
    samples: dict[Any, list[float]] = {key: [] for key in fns}
    for r in range(rounds):
        for key, fn in fns.items():
            if progress is not None:
                progress(key, r)
            samples[key].append(backend.median_time(fn, repeats, before=before))
        if between is not None:
            between()
    return {key: statistics.median(v) for key, v in samples.items()}


def attention(backend: Backend, b: int, h: int, q: int, kv: int, d: int, dtype: str,
              repeats: int, backward: bool = False, before: Callable[[], Any] | None = None) -> float:
    """Achieved FLOP/s of scaled_dot_product_attention (causal when q == kv), forward or backward."""
    torch = backend.torch
    gen = torch.Generator(device="cpu").manual_seed(1)
    qt = torch.randn(b, h, q, d, generator=gen).to(backend.device, torch_dtype(dtype))
    kt = torch.randn(b, h, kv, d, generator=gen).to(backend.device, torch_dtype(dtype))
    vt = torch.randn(b, h, kv, d, generator=gen).to(backend.device, torch_dtype(dtype))
    fn = torch.nn.functional.scaled_dot_product_attention
    causal = q == kv
    # FLOPs as traces count them (memsim.workloads.kernels): the full q×kv rectangle, causal or
    # not, so the rate is the one the simulator divides a trace op's FLOPs by
    flops = 4 * b * h * q * kv * d
    if not backward:
        return flops / backend.median_time(lambda: fn(qt, kt, vt, is_causal=causal), repeats,
                                           before=before)
    grad = torch.randn(b, h, q, d, generator=gen).to(backend.device, torch_dtype(dtype))
    qt.requires_grad_(), kt.requires_grad_(), vt.requires_grad_()

    def run():  # the backward kernel recomputes the scores (FlashAttention): 2.5x the forward
        with torch.enable_grad():
            torch.autograd.grad(fn(qt, kt, vt, is_causal=causal), (qt, kt, vt), grad)

    return 2.5 * flops / backend.median_time(run, repeats, before=before)  # trace: 2.5x forward


def memory_kernels(backend: Backend, nbytes: int, repeats: int) -> dict[str, float]:
    """Bytes/s (read + written) of streaming kernels over ``nbytes`` fp32 tensors."""
    torch = backend.torch
    n = nbytes // 4
    a = torch.ones(n, device=backend.device)
    b = torch.ones(n, device=backend.device)
    out = torch.empty(n, device=backend.device)
    kernels = {  # name: (fn, bytes moved per call)
        "copy": (lambda: out.copy_(a), 2 * nbytes),
        "add": (lambda: torch.add(a, b, out=out), 3 * nbytes),
        "scale": (lambda: torch.mul(a, 1.0001, out=out), 2 * nbytes),
        "gelu": (lambda: torch.nn.functional.gelu(a), 2 * nbytes),
    }
    return {name: moved / backend.median_time(fn, repeats) for name, (fn, moved) in kernels.items()}


def launch_overhead(backend: Backend, repeats: int) -> float:
    """Seconds of a kernel with nothing to do: the fixed cost every op pays."""
    torch = backend.torch
    a = torch.ones(8, device=backend.device)
    inner = 200

    def many():
        for _ in range(inner):
            torch.add(a, a, out=a)

    return backend.median_time(many, repeats) / inner


def write_file(folder: Path, mode: Mode, nbytes: int, name: str = "bench.bin") -> Path:
    """A file of ``nbytes`` random-ish bytes on disk, its pages not in the cache."""
    path = folder / name
    buf = aligned_buffer(min(nbytes, 64 << 20))
    buf.write(os.urandom(1 << 16) * (len(buf) // (1 << 16)))
    with DirectFile(path, mode) as f:
        for off in range(0, nbytes, len(buf)):
            f.write_from(buf, off, min(len(buf), nbytes - off), request=len(buf))
        f.sync()
    buf.close()
    return path


def disk_read(path: Path, mode: Mode, request: int, volume: int, repeats: int) -> float:
    """Bytes/s reading ``volume`` bytes in ``request``-byte requests, page cache bypassed."""
    buf = aligned_buffer(request)
    times = []
    with DirectFile(path, mode, create=False) as f:
        for r in range(repeats):
            t0 = _now()
            base = (r * volume) % max(1, (os.path.getsize(path) - volume) or 1)
            base -= base % 4096
            for off in range(0, volume, request):
                f.read_into(buf, base + off, request, request)
            times.append(_now() - t0)
    buf.close()
    return volume / sorted(times)[len(times) // 2]


def disk_write(folder: Path, mode: Mode, request: int, volume: int, repeats: int) -> float:
    """Bytes/s writing a fresh file of ``volume`` bytes in ``request``-byte requests, then fsync."""
    buf = aligned_buffer(request)
    times = []
    for r in range(repeats):
        path = folder / f"write-{r}.bin"
        t0 = _now()
        with DirectFile(path, mode) as f:
            for off in range(0, volume, request):
                f.write_from(buf, off, request, request)
            f.sync()
        times.append(_now() - t0)
        path.unlink()
    buf.close()
    return volume / sorted(times)[len(times) // 2]


class TensorIO:
    """Rates of whole tensors moved the way a replay moves them: ``count`` tensors of ``nbytes``
    written from a host buffer, then read back into staging buffers, through the replay's own
    ``DiskTier`` (1 MiB direct requests, one file per tensor); then a reader and a writer at once.
    Each ``sample()`` records (read, write, mixed read, mixed write) B/s; ``rates()`` is the
    median of the samples.

    Opening runs one untimed round: it maps the buffers and allocates the files, so the timed
    writes overwrite allocated blocks, as an offload engine's writes into its swap files do (a
    write that allocates runs about a third slower on ext4).

    Why not just the request sweep (``disk_read``): the sweep's buffers are small and short-lived,
    and on 4 KiB pages the rate of direct reads depends on the buffer they land in (``_round``),
    so the sweep's level is one buffer's draw. And why samples that the
    caller spreads out (calibration takes one after each GEMM round, then more): so that a slow
    few seconds of the shared host, or one unlucky set of buffers, is one sample, not the
    level."""

    def __init__(self, folder: Path, mode: Mode, nbytes: int, count: int, mixed_s: float = 0.5):
        from memsim.validation.backend import make_backend
        from memsim.validation.tiers import ComputeTier, DiskTier, fill_random

        self.nbytes, self.count, self.mixed_s = nbytes, count, mixed_s
        self.host = ComputeTier("dram", make_backend("cpu"))
        self.disk = DiskTier("disk", folder, mode, self.host.backend)
        self.src = self.host.alloc("src", nbytes)
        fill_random(self.src, nbytes, 3)
        for i in range(count):  # the files the mixed phase's writer overwrites
            self.disk.write(f"u{i}", self.src, nbytes)
        self.samples: list[tuple[float, float, float, float]] = []
        try:
            self._round()
        except BaseException:
            self.close()
            raise

    def _round(self) -> tuple[float, float, float, float]:
        """Write every tensor from a staging buffer of its own, mapped and touched for this round
        (untimed), then read each back into it. Fresh buffers each round, mapped as the replay's
        staging pool maps them (``aligned_buffer``): where the kernel gives no huge pages, how fast
        a direct read lands in a buffer, or a direct write leaves one, depends on the order of its
        physical pages (docs/validation.md: 1.33-1.40 GB/s reads into a buffer whose pages run
        backwards, 1.8-2.1 into one whose run forwards), and rounds of their own spread the draws."""
        from memsim.validation.tiers import fill_random

        stages = [aligned_buffer(self.nbytes) for _ in range(self.count)]
        for i, buf in enumerate(stages):
            fill_random(buf, self.nbytes, i)
        t0 = _now()
        for i in range(self.count):  # written from this round's buffers too: a write's rate
            self.disk.write(f"t{i}", stages[i], self.nbytes)  # depends on its source's pages
        t1 = _now()
        for i in range(self.count):
            self.disk.read(f"t{i}", stages[i], self.nbytes)
        t2 = _now()
        mixed = self._mixed(stages) if self.mixed_s > 0 else (0.0, 0.0)  # 0: alone only
        for buf in stages:
            buf.close()
        moved = self.count * self.nbytes
        return moved / (t2 - t1), moved / (t1 - t0), *mixed

    def _mixed(self, stages: list) -> tuple[float, float]:
        """(read B/s, write B/s) of a reader (this thread, into ``stages``) and a writer (a
        thread, over the ``u`` files) streaming whole tensors at once for ``mixed_s``, each
        rate over its own stream's time."""
        stop, written, span = threading.Event(), [0], [0.0]
        failed: list[BaseException] = []

        def writer():
            t0, i = _now(), 0
            try:
                while not stop.is_set():
                    self.disk.write(f"u{i % self.count}", stages[(i + 1) % self.count], self.nbytes)
                    written[0] += self.nbytes
                    i += 1
            except BaseException as exc:  # surfaced on the calling thread below
                failed.append(exc)
            span[0] = _now() - t0

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        read, i, t0 = 0, 0, _now()
        try:
            while _now() - t0 < self.mixed_s:
                self.disk.read(f"t{i % self.count}", stages[i % self.count], self.nbytes)
                read += self.nbytes
                i += 1
            elapsed = _now() - t0
        finally:
            stop.set()
            thread.join()
        if failed:
            raise failed[0]
        return read / elapsed, written[0] / max(span[0], 1e-9)

    def sample(self) -> None:
        self.samples.append(self._round())

    def rates(self) -> dict[str, float]:
        """B/s by stream, the median of the samples for each on its own: ``read`` and ``write``
        alone, ``mixed_read`` and ``mixed_write`` at once."""
        keys = ("read", "write", "mixed_read", "mixed_write")
        return {k: statistics.median(s[i] for s in self.samples) for i, k in enumerate(keys)}

    def close(self) -> None:
        self.disk.close()
        self.host.close()

    def __enter__(self) -> TensorIO:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def disk_latency(path: Path, mode: Mode, repeats: int) -> float:
    """Seconds of one 4 KiB direct read at scattered offsets (the tier's access latency)."""
    size = os.path.getsize(path)
    buf = aligned_buffer(4096)
    times = []
    with DirectFile(path, mode, create=False) as f:
        for r in range(repeats):
            off = (r * 7919 * 4096 + 12345 * 4096) % max(4096, size - 4096)
            t0 = _now()
            f.read_into(buf, off - off % 4096, 4096, 4096)
            times.append(_now() - t0)
    buf.close()
    return sorted(times)[len(times) // 2]


class Overlap:
    """What overlapping a disk copy with a step's GEMM costs each side, sampled a round at a time
    (``sample()``, which the caller spreads over a calibration as it does ``TensorIO``'s: one
    window can draw a GEMM slowdown anywhere in 0.7-25% on a 2-vCPU VM, the replays' 0-7%);
    ``figures()`` is, per direction, the median alone times and the median of the rounds' own
    ratios, so a neighbour's burst that hits one round's both sides costs one ratio."""

    def __init__(self, backend: Backend, folder: Path, mode: Mode, shape: tuple[int, int, int],
                 dtype: str, repeats: int, file_bytes: int):
        self.backend, self.mode, self.shape, self.dtype, self.repeats = backend, mode, shape, dtype, repeats
        self.path = write_file(folder, mode, file_bytes, "overlap.bin")
        self.samples: dict[str, list[tuple[float, float, float, float]]] = {"read": [], "write": []}

    def sample(self) -> None:
        for direction, out in self.samples.items():
            out.append(gemm_under_copy(self.backend, self.path, self.mode, self.shape, self.dtype,
                                       self.repeats, direction))

    def figures(self) -> dict:
        med = statistics.median
        doc: dict = {"gemm": f"{'x'.join(map(str, self.shape))} {self.dtype}",
                     "samples": len(self.samples["read"])}
        for direction, s in self.samples.items():
            alone, copy_alone = med(x[0] for x in s), med(x[2] for x in s)
            doc[direction] = {"gemm_alone_s": alone,
                              "gemm_with_copy_s": alone * med(x[1] / x[0] for x in s),
                              "copy_alone_Bps": copy_alone,
                              "copy_with_compute_Bps": copy_alone * med(x[3] / x[2] for x in s)}
        return doc


def gemm_under_copy(backend: Backend, path: Path, mode: Mode, shape: tuple[int, int, int],
                    dtype: str, repeats: int, direction: str = "read",
                    warm_up: bool = True) -> tuple[float, float, float, float]:
    """(GEMM s alone, GEMM s while a thread streams disk reads or writes, copy B/s alone, copy B/s
    while the GEMM runs), one round of each: what overlapping a copy with compute costs each side
    on this machine. Both copy rates come from the same loop over the same time, so their ratio
    is a like-for-like measure of the interference, whatever the disk's absolute speed that
    minute; so do both GEMM times (timed in the same round, not once up front: that put the
    slowdown at 0.9-15.6% from one calibration to the next on a 2-vCPU VM)."""
    torch = backend.torch
    m, k, n = shape
    a = torch.ones(m, k, dtype=torch_dtype(dtype), device=backend.device)
    b = torch.ones(k, n, dtype=torch_dtype(dtype), device=backend.device)
    out = torch.empty(m, n, dtype=torch_dtype(dtype), device=backend.device)
    fn = lambda: torch.matmul(a, b, out=out)  # noqa: E731
    alone = backend.median_time(fn, repeats)
    if backend.is_cuda:
        return (alone, *_gemm_under_pinned_copy(backend, fn, repeats))
    volume = min(os.path.getsize(path), 256 << 20)
    span = max(alone * repeats, 0.25)

    def gemms(into: list[float]) -> Callable[[], None]:
        def run() -> None:  # as many GEMMs as fill the span: the copy loop runs as long as alone
            t0 = _now()
            while _now() - t0 < span or len(into) < repeats:
                into.append(backend.time(fn))
        return run

    def one_round() -> tuple[float, float, float, float]:
        """GEMMs alone, the copy alone, then both."""
        alone_times: list[float] = []
        times: list[float] = []
        gemms(alone_times)()
        copy_alone = _copy_rate(path, mode, volume, direction, lambda: _sleep(span), buf)
        copy_loaded = _copy_rate(path, mode, volume, direction, gemms(times), buf)
        return statistics.median(alone_times), statistics.median(times), copy_alone, copy_loaded

    buf = _touched(REQUEST)  # one buffer for both sides: a like-for-like ratio
    # the first round is a warm-up: beside the copy its GEMMs run up to 17% slower than after one
    # on a 2-vCPU VM (1.00-1.04; bench/bench_calibration_effects.py), and sampling first rounds
    # puts copy_slowdown at 10-19% where the replays show ~1%
    if warm_up:
        one_round()
    timed = one_round()
    buf.close()
    return timed


def _copy_rate(path: Path, mode: Mode, volume: int, direction: str, during, buf) -> float:
    """B/s a thread streams (1 MiB direct reads of ``path`` into ``buf``, or writes from it over a
    preallocated scratch file beside it, kept for the next round) while ``during()`` runs on this
    thread. Rounds meant to be compared
    share one ``buf``: which buffer a direct read lands in changes its rate on a VM."""
    stop, moved, elapsed = threading.Event(), [0], [0.0]
    target = path if direction == "read" else path.with_suffix(".w")
    if direction != "read" and (not target.exists() or target.stat().st_size < volume):
        write_file(path.parent, mode, volume, target.name)  # writes overwrite, as into swap files

    def stream():
        with DirectFile(target, mode, create=direction != "read") as f:
            t0 = _now()
            while not stop.is_set():
                off = moved[0] % (volume - REQUEST + 1) // 4096 * 4096
                if direction == "read":
                    f.read_into(buf, off, REQUEST, REQUEST)
                else:
                    f.write_from(buf, off, REQUEST, REQUEST)
                moved[0] += REQUEST
            elapsed[0] = _now() - t0

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    try:
        during()
    finally:
        stop.set()
        thread.join()
    return moved[0] / max(elapsed[0], 1e-9)


def _touched(nbytes: int):
    """An aligned buffer with its pages faulted in (a first-touch fault is not disk time)."""
    buf = aligned_buffer(nbytes)
    buf.write(bytes(len(buf)))
    return buf


def _sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


def _gemm_under_pinned_copy(backend: Backend, fn, repeats: int) -> tuple[float, float, float]:
    """CUDA: (GEMM s while host→device copies stream on a side stream, copy B/s alone, copy B/s
    under the GEMM): the copy engines share HBM bandwidth with the SMs."""
    torch = backend.torch
    nbytes = 64 << 20
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    side = torch.cuda.Stream()
    copy_alone = nbytes / backend.median_time(lambda: dev.copy_(host, non_blocking=True), repeats)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        start.record(side)
        for _ in range(4 * repeats):
            dev.copy_(host, non_blocking=True)
        end.record(side)
    loaded = backend.median_time(fn, repeats, warmup=0)
    end.synchronize()
    copy_loaded = 4 * repeats * nbytes / (start.elapsed_time(end) / 1e3)
    return loaded, copy_alone, copy_loaded


def pinned_copy(backend: Backend, nbytes: int, repeats: int) -> tuple[float, float]:
    """CUDA only: (host→device, device→host) bytes/s of pinned copies on a side stream."""
    torch = backend.torch
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    stream = torch.cuda.Stream()

    def on_stream(fn):
        def run():
            with torch.cuda.stream(stream):
                fn()
            torch.cuda.current_stream().wait_stream(stream)
        return run

    h2d = backend.median_time(on_stream(lambda: dev.copy_(host, non_blocking=True)), repeats)
    d2h = backend.median_time(on_stream(lambda: host.copy_(dev, non_blocking=True)), repeats)
    return nbytes / h2d, nbytes / d2h


def pageable_copy(backend: Backend, nbytes: int, repeats: int) -> tuple[float, float]:
    """CUDA only: (host→device, device→host) bytes/s of copies from pageable host memory.

    The driver stages these through its own pinned buffer and the copy is synchronous with the
    host, so they are timed on the default stream, as ``tensor.to(device)`` runs them.
    """
    torch = backend.torch
    host = torch.empty(nbytes, dtype=torch.uint8)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    h2d = backend.median_time(lambda: dev.copy_(host), repeats)
    d2h = backend.median_time(lambda: host.copy_(dev), repeats)
    return nbytes / h2d, nbytes / d2h


def _now() -> float:
    import time

    return time.perf_counter_ns() / 1e9
