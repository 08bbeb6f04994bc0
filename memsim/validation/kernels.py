"""Real torch kernels for trace ops, with the op's shape and dtype.

* ``matmul`` (m, k, n): ``torch.matmul`` of (m×k)·(k×n) into a preallocated output;
* ``attention`` (batch, heads, q_len, kv_len, head_dim): ``scaled_dot_product_attention``,
  causal when q_len == kv_len (prefill and training), not causal for decode;
* anything else (numel,): a streaming ``add`` over tensors sized so the kernel moves the op's
  ``bytes_read + bytes_written`` (what the roofline's memory side charges); without bytes, numel;
* no shape: a square matmul with the op's FLOPs, or a streaming kernel with its bytes.

Operands are allocated once per distinct (kind, shape, dtype) before the timed step, so the step
measures kernels, not the allocator. Their bytes are workspace, reported apart from the plan's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memsim.validation.backend import Backend, torch_dtype
from memsim.workloads.trace import Op


class Kernels:
    """Builds (and caches the operands of) one runnable kernel per distinct op signature."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.torch = backend.torch
        self.cache: dict[tuple, Callable[[], Any]] = {}
        self.workspace_bytes = 0

    def get(self, op: Op) -> Callable[[], Any] | None:
        key = (op.kind, op.shape, op.dtype, op.flops, op.bytes_read + op.bytes_written)
        if key not in self.cache:
            self.cache[key] = self._build(op)
        return self.cache[key]

    def _build(self, op: Op) -> Callable[[], Any] | None:
        dtype = torch_dtype(op.dtype)
        shape = tuple(op.shape) if op.shape else None
        if op.kind == "matmul" and shape and len(shape) == 3:
            return self._matmul(*shape, dtype)
        if op.kind == "attention" and shape and len(shape) == 5:
            return self._attention(*shape, dtype)
        nbytes = op.bytes_read + op.bytes_written
        if shape is None and op.flops > 0 and (op.kind in ("matmul", "attention") or not nbytes):
            side = max(1, round((op.flops / 2) ** (1 / 3)))
            return self._matmul(side, side, side, dtype)
        itemsize = self.torch.empty((), dtype=dtype).element_size()
        numel = nbytes // (3 * itemsize) if nbytes else (shape[0] if shape else 0)
        if numel <= 0:
            return None
        return self._stream(numel, dtype)

    def _alloc(self, *shape: int, dtype) -> Any:
        t = self.torch.empty(*shape, dtype=dtype, device=self.backend.device)
        self.workspace_bytes += t.numel() * t.element_size()
        return t.normal_() if t.is_floating_point() else t.zero_()

    def _matmul(self, m: int, k: int, n: int, dtype) -> Callable[[], Any]:
        a, b, out = self._alloc(m, k, dtype=dtype), self._alloc(k, n, dtype=dtype), \
            self._alloc(m, n, dtype=dtype)
        return lambda: self.torch.matmul(a, b, out=out)

    def _attention(self, b: int, h: int, q: int, kv: int, d: int, dtype) -> Callable[[], Any]:
        qt = self._alloc(b, h, q, d, dtype=dtype)
        kt, vt = self._alloc(b, h, kv, d, dtype=dtype), self._alloc(b, h, kv, d, dtype=dtype)
        sdpa = self.torch.nn.functional.scaled_dot_product_attention
        return lambda: sdpa(qt, kt, vt, is_causal=q == kv)

    def _stream(self, numel: int, dtype) -> Callable[[], Any]:
        a, b, out = (self._alloc(numel, dtype=dtype) for _ in range(3))
        return lambda: self.torch.add(a, b, out=out)
