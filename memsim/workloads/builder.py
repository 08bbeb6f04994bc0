"""A small helper the trace builders share: declare tensors, emit ops, check every name exists."""

from __future__ import annotations

from memsim.contracts.names import template
from memsim.workloads.trace import LAYER, Block, Op, Tensor, TensorClass, Trace

L = template("")  # the per-layer name prefix, L{layer}.


class TraceBuilder:
    """Collects tensors and blocks; ``trace()`` refuses an op that names an undeclared tensor."""

    def __init__(self, name: str, kind: str, layers: int):
        self.name, self.kind, self.layers = name, kind, layers
        self.tensors: dict[str, Tensor] = {}
        self.blocks: list[Block] = []

    def tensor(self, name: str, nbytes: int | float, cls: TensorClass, dtype: str) -> str:
        """Declare a tensor (a template when ``name`` holds ``{layer}``); returns its name."""
        nbytes = int(nbytes)
        if nbytes < 0:
            raise ValueError(f"tensor {name} has negative size {nbytes}")
        self.tensors[name] = Tensor(name, nbytes, cls, dtype)
        return name

    def block(self, name: str, ops: list[Op], *, templated: bool = False, backward: bool = False,
              iterations: int = 1) -> None:
        if not ops or iterations < 1:
            return
        if templated:
            first, step = (self.layers - 1, -1) if backward else (0, 1)
            self.blocks.append(Block(name, ops, repeat=self.layers, first_layer=first, step=step,
                                     iterations=iterations))
        else:
            self.blocks.append(Block(name, ops, iterations=iterations))

    def trace(self, meta: dict, requests=None) -> Trace:
        for block in self.blocks:
            for op in block.ops:
                for name in (*op.inputs, *op.outputs):
                    if name not in self.tensors:
                        raise AssertionError(f"op {op.name} names undeclared tensor {name}")
                    if (LAYER in name) and not block.templated:
                        raise AssertionError(f"template {name} used in non-templated block {block.name}")
        return Trace(self.name, self.kind, self.tensors, self.blocks, meta, requests)

    def sums(self) -> dict[str, int]:
        """Bytes by class, templates counted once per layer (Trace.bytes_by_class, before the Trace)."""
        out: dict[str, int] = {}
        for name, t in self.tensors.items():
            out[t.cls] = out.get(t.cls, 0) + t.bytes * (self.layers if LAYER in name else 1)
        return out

    def workspace_peak(self, trace: Trace | None = None) -> int:
        """The most workspace bytes alive at once: swept over the trace's lifetimes when a trace is
        given (exact), else bounded by one layer's templates plus every plain buffer."""
        names = {n for n, t in self.tensors.items() if t.cls == "workspace"}
        if not names:
            return 0
        if trace is None:
            return sum(self.tensors[n].bytes for n in names)
        delta: dict[int, int] = {}
        for name, (start, end) in trace.lifetimes().items():
            t = trace.tensor(name)
            if t.cls == "workspace":
                delta[start] = delta.get(start, 0) + t.bytes
                delta[end + 1] = delta.get(end + 1, 0) - t.bytes
        peak = live = 0
        for index in sorted(delta):
            live += delta[index]
            peak = max(peak, live)
        return peak

    def per_device_bytes(self, trace: Trace | None = None) -> dict[str, int]:
        """The ``per_device_bytes`` of trace.meta: class sums (the Trace's bytes_by_class), and
        workspace as its peak alive at once (transient buffers are never all alive together)."""
        s = self.sums()
        out = {"weights": s.get("weight", 0), "gradients": s.get("grad", 0),
               "optimizer": s.get("optimizer", 0),
               "activations": s.get("activation", 0), "kv_cache": s.get("kv", 0),
               "workspace": self.workspace_peak(trace)}
        out["total"] = sum(out.values())
        return out


def op(name: str, kind: str, phase: str, flops: float = 0.0, read: int | float = 0, written: int | float = 0,
       inputs: tuple[str, ...] = (), outputs: tuple[str, ...] = (), *, dtype: str = "bf16",
       shape: tuple[int, ...] | None = None, device: str = "gpu") -> Op:
    """An Op with integer byte counts."""
    return Op(name=name, kind=kind, phase=phase, flops=float(flops), bytes_read=int(read),
              bytes_written=int(written), inputs=tuple(inputs), outputs=tuple(outputs), device=device,
              dtype=dtype, shape=tuple(int(x) for x in shape) if shape is not None else None)
