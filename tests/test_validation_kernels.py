"""Replayed kernels compute on operands of their own per op, as a real step's layers do on their
own weights, up to a byte budget per signature; past it operand sets are shared in turn."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from memsim.validation.backend import make_backend
from memsim.validation.kernels import Kernels
from memsim.workloads.trace import Op

M, K, N = 8, 64, 32
GEMM = Op("L.up", "matmul", "forward", flops=2 * M * K * N, dtype="fp32", shape=(M, K, N))
ONE_SET = 4 * (M * K + K * N + M * N)  # a, b, out in fp32


def test_each_op_gets_operands_of_its_own_up_to_the_budget_then_they_are_shared_in_turn():
    kernels = Kernels(make_backend("cpu"), distinct_bytes=2 * ONE_SET)
    fns = [kernels.get(GEMM, f"L{i}.up") for i in range(5)]
    assert kernels.workspace_bytes == 2 * ONE_SET  # two sets fit the budget
    assert fns[0] is not fns[1] and fns[2] is fns[0] and fns[3] is fns[1] and fns[4] is fns[0]
    assert kernels.get(GEMM, "L1.up") is fns[1]  # an op keeps its set (recompute re-reads it)
    for fn in fns:
        fn()


def test_no_budget_shares_one_set_per_signature():
    kernels = Kernels(make_backend("cpu"))
    assert kernels.get(GEMM, "L0.up") is kernels.get(GEMM, "L1.up")
    assert kernels.workspace_bytes == ONE_SET
