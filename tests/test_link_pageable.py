"""A copy from pageable host memory runs at the link's pageable rate, never above the pinned one."""
import pytest

from memsim.hardware.spec import Link


def test_pageable_rate_is_lower_and_defaults_to_pinned():
    link = Link(name="pcie", kind="pcie", ends=("hbm", "dram"), bandwidth=25e9,
                bandwidth_reverse=26e9, pageable_bandwidth=10e9, efficiency=0.9)
    assert link.rate("dram") == pytest.approx(26e9 * 0.9)
    assert link.rate("dram", pinned=False) == pytest.approx(10e9 * 0.9)
    assert link.rate("hbm", pinned=False) == pytest.approx(10e9 * 0.9)
    plain = Link(name="p", kind="pcie", ends=("hbm", "dram"), pcie_gen=4, lanes=16)
    assert plain.rate("dram", pinned=False) == plain.rate("dram")


def test_pageable_rate_never_exceeds_pinned():
    link = Link(name="pcie", kind="pcie", ends=("hbm", "dram"), bandwidth=8e9, pageable_bandwidth=20e9)
    assert link.rate("dram", pinned=False) == pytest.approx(8e9)
