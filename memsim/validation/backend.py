"""The device a calibration or replay runs on: CPU (DRAM + disk) or CUDA (HBM + pinned DRAM + disk).

One small object hides the two differences that matter for timing: how a span of work is timed
(``perf_counter_ns`` on the CPU; CUDA events on a GPU, since kernels are asynchronous) and where
tensors of the compute tier are allocated. torch is imported here, lazily, never by the planners.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memsim.errors import SpecError

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp64": "float64",
                "tf32": "float32", "fp8": "bfloat16", "int8": "bfloat16", "int4": "bfloat16"}


def torch_mod():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is an optional extra
        raise SpecError("validation needs torch: pip install 'memsim[torch]'") from None
    return torch


def torch_dtype(name: str):
    """The torch dtype a trace dtype replays as (fp8/int8/int4 have no general kernels: bf16)."""
    return getattr(torch_mod(), TORCH_DTYPES.get(name, "float32"))


@dataclass
class Backend:
    """Where compute runs and how it is timed."""

    device: str  # "cpu" | "cuda"
    torch: Any

    @property
    def is_cuda(self) -> bool:
        return self.device == "cuda"

    def sync(self) -> None:
        if self.is_cuda:
            self.torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any]) -> float:
        """Seconds ``fn`` takes on the device: CUDA events around it, or the wall clock."""
        if self.is_cuda:
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - t0) / 1e9

    def median_time(self, fn: Callable[[], Any], repeats: int, warmup: int = 1,
                    before: Callable[[], Any] | None = None) -> float:
        """The median of ``repeats`` timings after ``warmup`` untimed runs (robust to a noisy
        neighbour on a shared machine); ``before`` runs, untimed, ahead of each timed run."""
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(max(1, repeats)):
            if before is not None:
                before()
                self.sync()
            times.append(self.time(fn))
        times.sort()
        return times[len(times) // 2]

    def empty(self, numel: int, dtype) -> Any:
        return self.torch.empty(numel, dtype=dtype, device=self.device)


def make_backend(device: str) -> Backend:
    """A Backend for ``cpu`` or ``cuda``; asking for CUDA without a GPU is bad input (exit 2)."""
    if device not in ("cpu", "cuda"):
        raise SpecError(f"expected cpu or cuda, got {device!r}", key="--device")
    torch = torch_mod()
    if device == "cuda" and not torch.cuda.is_available():
        raise SpecError("cuda asked for, but torch sees no CUDA GPU on this machine "
                        f"(torch {torch.__version__}); use --device cpu", key="--device")
    return Backend(device, torch)
