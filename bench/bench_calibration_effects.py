"""The two measurement effects calibration corrects for, measured here (prints; never asserts).

    python bench/bench_calibration_effects.py

1. Cold kernels: each calibration GEMM shape timed back to back (hot) and with the caches
   flushed before every timed run (cold, ``mb.CacheFlush``, as calibrate times them); the
   cold / hot time ratio at each token count. docs/validation.md quotes these.
2. The overlap's first round: ``mb.gemm_under_copy`` without and with its warm-up round, a few
   times each, on the step GEMM calibrate uses; the GEMM's slowdown beside a disk stream.

Runs on the CPU with calibrate's thread split (cores - 1 compute threads), about a minute.
"""

from __future__ import annotations

import statistics

from memsim.validation import microbench as mb
from memsim.validation.backend import make_backend
from memsim.validation.calibrate import GEMM_KN, GEMM_ROWS, OVERLAP_GEMM, set_compute_threads
from memsim.validation.diskio import probe_mode, scratch

REPEATS, SAMPLES = 7, 4


def cold_kernels(backend) -> None:
    flush = mb.CacheFlush(backend)
    print(f"1. GEMM cold / hot time (fp32, {flush.nbytes >> 20} MiB read before each cold run)")
    print(f"   {'rows':>5} " + " ".join(f"{k}x{n:<10}" for k, n in GEMM_KN["cpu"]) + "median")
    for m in GEMM_ROWS["cpu"]:
        ops = mb.GemmOperands(backend, [(m, k, n) for k, n in GEMM_KN["cpu"]], "fp32")
        ratios = []
        for k, n in GEMM_KN["cpu"]:
            fn = ops.forward(m, k, n)
            hot = backend.median_time(fn, REPEATS)
            cold = backend.median_time(fn, REPEATS, before=flush)
            ratios.append(cold / hot)
        print(f"   {m:>5} " + " ".join(f"{r:<15.3f}" for r in ratios) + f"{statistics.median(ratios):.3f}")


def first_round(backend) -> None:
    shape = OVERLAP_GEMM["cpu"]
    print(f"2. GEMM {'x'.join(map(str, shape))} slowdown beside a disk stream, {SAMPLES} samples each")
    with scratch() as folder:
        mode = probe_mode(folder)
        path = mb.write_file(folder, mode, 256 << 20)
        for direction in ("read", "write"):
            for warm_up in (False, True):
                ratios = []
                for _ in range(SAMPLES):
                    alone, loaded, _, _ = mb.gemm_under_copy(backend, path, mode, shape, "fp32",
                                                             REPEATS, direction, warm_up)
                    ratios.append(loaded / alone)
                label = "after a warm-up round" if warm_up else "first round"
                print(f"   {direction:5} {label:22} " + " ".join(f"{r:.3f}" for r in ratios)
                      + f"   median {statistics.median(ratios):.3f}")


def main() -> None:
    backend = make_backend("cpu")
    threads = set_compute_threads(backend)
    print(f"compute threads: {threads}")
    cold_kernels(backend)
    first_round(backend)


if __name__ == "__main__":
    main()
