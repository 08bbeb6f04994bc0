"""GEMM efficiency by shape: tile and wave quantization of a tiled GEMM over a GPU's SMs.

cuBLAS splits the m×n output of a GEMM into tiles (256×128, 128×256 and 128×128 for large
GEMMs) and runs one tile per SM at a time; the tiles are issued in waves of ``sm_count``
(NVIDIA, "Matrix Multiplication Background User's Guide", DU-09799-001, §2.3 typical tile
dimensions in cuBLAS, §3.1 tile quantization, §3.2 wave quantization). A GEMM whose tile count is
just above a multiple of the SM count runs a nearly empty last wave, and a dimension that is not
a multiple of the tile computes padding: both lower its FLOP/s below a large, well-quantized
GEMM's. ``matmul_efficiency`` is the fraction a large GEMM reaches (every wave full); this module
gives the fraction of that each shape keeps, for the tile cuBLAS would pick (the fullest waves).
"""

from __future__ import annotations

import math

#: tensor-core MMA row granularity: a GEMM over fewer rows than a tile pads them to this
ROW_GRANULE = 16
#: shortest inner-dimension slice a split-K GEMM gives one SM (estimate: a few 64-deep k-steps)
SPLIT_K_MIN = 256


def wave_utilisation(m: int, n: int, sm_count: int, tiles: list[tuple[int, int]],
                     k: int = 0) -> float:
    """Fraction of the SMs' tile slots doing useful work for an m×n output, with the best tile.

    Each tile ``(tm, tn)`` covers ⌈m/tm⌉·⌈n/tn⌉ tiles in ⌈tiles/sm_count⌉ waves; the useful
    fraction is m·n over waves·sm_count·tm·tn. Rows fewer than a tile pad only to
    ``ROW_GRANULE`` (the small-m kernels), so a decode GEMM is not charged a 128-row tile. An
    output of fewer tiles than SMs with a long inner dimension ``k`` is split along k (split-K,
    CUTLASS's and cuBLAS's answer to a small output, e.g. a weight gradient over many tokens):
    up to ⌊sm_count/tiles⌋ slices of at least ``SPLIT_K_MIN`` each.
    """
    if m <= 0 or n <= 0 or not tiles:
        return 1.0
    best = 0.0
    for tm, tn in tiles:
        tm = min(tm, ROW_GRANULE * math.ceil(m / ROW_GRANULE))
        count = math.ceil(m / tm) * math.ceil(n / tn)
        split = max(1, min(sm_count // count, k // SPLIT_K_MIN)) if count < sm_count else 1
        waves = math.ceil(count * split / sm_count)
        best = max(best, m * n * split / (waves * sm_count * tm * tn))
    return min(1.0, best)


def gemm_utilisation(shape: tuple[int, ...], phase: str, sm_count: int,
                     tiles: list[tuple[int, int]]) -> float:
    """Utilisation of a matmul of forward shape (m, k, n) in ``phase``.

    The forward GEMM writes m×n. Its backward is two GEMMs of equal FLOPs: the input gradient
    (m×k output) and the weight gradient (k×n output); the pair's time is the sum, so their
    utilisations combine harmonically.
    """
    m, k, n = shape
    if phase != "backward":
        return wave_utilisation(m, n, sm_count, tiles, k)
    dgrad = wave_utilisation(m, k, sm_count, tiles, n)
    wgrad = wave_utilisation(k, n, sm_count, tiles, m)
    return 2.0 / (1.0 / dgrad + 1.0 / wgrad)


def matmul_shape(op) -> tuple[int, ...] | None:
    """A trace op's (m, k, n) when it is a matmul that gives one (the key of its rate by shape)."""
    shape = op.shape
    return tuple(shape) if op.kind == "matmul" and shape and len(shape) == 3 else None
