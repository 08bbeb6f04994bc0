"""laptop-flash's M1 Max flash curve: LLM in a flash's measured read rates, and between them the
latency-to-first-byte model the paper explains its Fig. 2b by."""

from __future__ import annotations

import pytest

from memsim.hardware import load_system


def test_curve_passes_through_the_papers_measured_rates():
    flash = load_system("laptop-flash").tiers["flash"]
    assert flash.read_bandwidth(8 * 1024) == pytest.approx(1.25e9)   # v3 Table 2: 8 KiB rows
    assert flash.read_bandwidth(16 * 1024) == pytest.approx(2.25e9)  # 16 KiB bundles
    assert flash.read_bandwidth(1 << 30) == pytest.approx(6.10e9)    # contiguous reads
    assert flash.read_bw == pytest.approx(6.10e9)


def test_model_points_follow_latency_plus_transfer_through_the_measured_two():
    flash = load_system("laptop-flash").tiers["flash"]
    t8, t16 = 8192 / 1.25e9, 16384 / 2.25e9          # device time per read at the two sizes
    per_byte = (t16 - t8) / 8192
    first = t8 - 8192 * per_byte
    for size in (4096, 32768, 65536):
        model = size / (first + size * per_byte)
        assert flash.read_bandwidth(size) == pytest.approx(min(model, 6.10e9), rel=0.01)
