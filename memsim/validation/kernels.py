"""Real torch kernels for trace ops, with the op's shape and dtype.

* ``matmul`` (m, k, n): ``torch.matmul`` of (m×k)·(k×n) into a preallocated output;
* ``attention`` (batch, heads, q_len, kv_len, head_dim): ``scaled_dot_product_attention``,
  causal when q_len == kv_len (prefill and training), not causal for decode;
* anything else (numel,): a streaming ``add`` over tensors sized so the kernel moves the op's
  ``bytes_read + bytes_written`` (what the roofline's memory side charges); without bytes, numel;
* no shape: a square matmul with the op's FLOPs, or a streaming kernel with its bytes.

Operands are allocated before the timed step, so the step measures kernels, not the allocator;
their bytes are workspace, reported apart from the plan's. Each op of a signature (kind, shape,
dtype) gets its own operands, up to ``distinct_bytes`` of them per signature, then they are
shared round robin. Why: a real step's layers compute on weights of their own, each evicted by
the rest of the step before its next use, and calibration times every kernel cold to match
(``microbench.CacheFlush``); operands shared by all six layers of a small model stay in a 32 MiB
L3 and run faster than either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memsim.validation.backend import Backend, torch_dtype
from memsim.workloads.trace import Op


class Kernels:
    """Builds (and holds the operands of) the runnable kernels of a step's ops: one per op
    (``instance``) up to ``distinct_bytes`` of operands per signature, then shared in turn."""

    def __init__(self, backend: Backend, distinct_bytes: int = 0):
        self.backend = backend
        self.torch = backend.torch
        self.distinct_bytes = distinct_bytes
        self.cache: dict[tuple, list[Callable[[], Any] | None]] = {}
        self.copies: dict[tuple, int] = {}  # how many operand sets a signature may have
        self.slots: dict[tuple, int] = {}  # (signature, instance) -> its operand set
        self.instances: dict[tuple, int] = {}  # instances seen per signature
        self.workspace_bytes = 0

    def get(self, op: Op, instance: str = "") -> Callable[[], Any] | None:
        key = (op.kind, op.shape, op.dtype, op.flops, op.bytes_read + op.bytes_written)
        built = self.cache.get(key)
        if built is None:
            before = self.workspace_bytes
            built = self.cache[key] = [self._build(op)]
            size = self.workspace_bytes - before
            self.copies[key] = max(1, -(-self.distinct_bytes // size)) if size else 1
        slot = self.slots.get((key, instance))
        if slot is None:
            seen = self.instances.get(key, 0)
            slot = self.slots[(key, instance)] = seen % self.copies[key]
            self.instances[key] = seen + 1
        while len(built) <= slot:
            built.append(self._build(op))
        return built[slot]

    def _build(self, op: Op) -> Callable[[], Any] | None:
        dtype = torch_dtype(op.dtype)
        shape = tuple(op.shape) if op.shape else None
        if op.kind == "matmul" and shape and len(shape) == 3:
            m, k, n = shape
            gemms = max(1, round(op.flops / (2 * m * k * n))) if op.flops else 1
            if gemms == 2:  # a linear's backward: dX = dY·Wᵀ and dW = Xᵀ·dY
                return self._linear_backward(m, k, n, dtype)
            return self._matmul(m, k, n, dtype, gemms)
        if op.kind == "attention" and shape and len(shape) == 5:
            if op.phase == "backward":
                return self._attention_backward(*shape, dtype)
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

    def _matmul(self, m: int, k: int, n: int, dtype, times: int = 1) -> Callable[[], Any]:
        a, b, out = self._alloc(m, k, dtype=dtype), self._alloc(k, n, dtype=dtype), \
            self._alloc(m, n, dtype=dtype)
        mm = self.torch.matmul
        if times == 1:
            return lambda: mm(a, b, out=out)

        def run():
            for _ in range(times):
                mm(a, b, out=out)

        return run

    def _linear_backward(self, m: int, k: int, n: int, dtype) -> Callable[[], Any]:
        x, w, dy = self._alloc(m, k, dtype=dtype), self._alloc(k, n, dtype=dtype), \
            self._alloc(m, n, dtype=dtype)
        dx, dw = self._alloc(m, k, dtype=dtype), self._alloc(k, n, dtype=dtype)
        mm = self.torch.matmul

        def run():
            mm(dy, w.t(), out=dx)
            mm(x.t(), dy, out=dw)

        return run

    def _attention_backward(self, b: int, h: int, q: int, kv: int, d: int, dtype) -> Callable[[], Any]:
        """The real backward kernel of scaled_dot_product_attention (via autograd), which like
        FlashAttention's recomputes the scores."""
        torch = self.torch
        qt = self._alloc(b, h, q, d, dtype=dtype).requires_grad_()
        kt = self._alloc(b, h, kv, d, dtype=dtype).requires_grad_()
        vt = self._alloc(b, h, kv, d, dtype=dtype).requires_grad_()
        grad = self._alloc(b, h, q, d, dtype=dtype)
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def run():
            with torch.enable_grad():
                out = sdpa(qt, kt, vt, is_causal=q == kv)
                torch.autograd.grad(out, (qt, kt, vt), grad)

        return run

    def _attention(self, b: int, h: int, q: int, kv: int, d: int, dtype) -> Callable[[], Any]:
        qt = self._alloc(b, h, q, d, dtype=dtype)
        kt, vt = self._alloc(b, h, kv, d, dtype=dtype), self._alloc(b, h, kv, d, dtype=dtype)
        sdpa = self.torch.nn.functional.scaled_dot_product_attention
        return lambda: sdpa(qt, kt, vt, is_causal=q == kv)

    def _stream(self, numel: int, dtype) -> Callable[[], Any]:
        a, b, out = (self._alloc(numel, dtype=dtype) for _ in range(3))
        return lambda: self.torch.add(a, b, out=out)
