"""The Trace: what a workload does, as ops and tensors, independent of where bytes live.

One of memsim's two narrow waists (the other is the Plan). Every workload kind and the torch
tracer produce one; planners and the simulator consume only this.

Compactness: transformer layers repeat, so a Trace is a list of ``Block``\\ s, each a template of
ops run ``repeat`` times (once per layer, ascending for forward, descending for backward) and the
whole block ``iterations`` times (decode steps). Names inside a template carry ``{layer}``, which
expansion replaces with the layer index. An 80-layer serving trace is a few dozen op templates.

Lifetimes follow from the op order after expansion, by tensor class:

* ``weight`` and ``optimizer``: alive for the whole step (their home tier holds them).
* ``grad``: from the op that produces it to the end of the step (the optimizer consumes it).
* ``kv``: from the op that produces it to the end of the trace (decode keeps reading it).
* ``activation`` and ``workspace``: from the producing op to the last op that reads it.
  A tensor with no producer is an input, alive from the start.

Serving traces also carry ``requests`` (arrival time, prompt and output length per request) and
``meta["token_costs"]``, the per-token costs a batching scheduler needs (see ``TokenCosts``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from memsim.contracts.names import LAYER, split_layer, template

TRACE_VERSION = 1
TensorClass = Literal["weight", "grad", "optimizer", "activation", "kv", "workspace"]
TENSOR_CLASSES: tuple[str, ...] = ("weight", "grad", "optimizer", "activation", "kv", "workspace")
Phase = Literal["forward", "backward", "optimizer", "prefill", "decode"]
PERSISTENT = ("weight", "optimizer")


@dataclass(slots=True)
class Tensor:
    """A tensor (or a template, when its name holds ``{layer}``)."""

    name: str
    bytes: int
    cls: TensorClass
    dtype: str = "bf16"


@dataclass(slots=True)
class Op:
    """One operation: its cost (FLOPs, bytes through memory) and the tensors it reads and writes."""

    name: str
    kind: str  # matmul | attention | elementwise | norm | embedding | loss | optimizer | comm | other
    phase: Phase
    flops: float = 0.0
    bytes_read: int = 0
    bytes_written: int = 0
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    device: Literal["gpu", "cpu"] = "gpu"  # where it runs unless the plan moves it
    dtype: str = "bf16"
    # The kernel's shape, so validation can replay a real kernel: matmul (m, k, n) — batched
    # matmuls fold the batch into m; attention (batch, heads, q_len, kv_len, head_dim);
    # anything else (numel,). Optional: without it a replay sizes a kernel from flops and bytes.
    shape: tuple[int, ...] | None = None

    @property
    def rows(self) -> int:
        """The tokens an op's achieved FLOP/s depends on (a GEMM over few rows runs below a big
        one's rate): a matmul's left-operand rows; a square (prefill, training) attention's
        sequence length, as calibration measures it; 0 when unknown or anything else."""
        shape = self.shape
        if not shape:
            return 0
        if self.kind == "matmul" and len(shape) == 3:
            return shape[0]
        if self.kind == "attention" and len(shape) == 5 and shape[2] == shape[3]:
            return shape[2]
        return 0


@dataclass(slots=True)
class Block:
    """A template of ops run once per layer in ``layers()``, the whole run ``iterations`` times."""

    name: str
    ops: list[Op]
    repeat: int = 1
    first_layer: int = 0
    step: int = 1  # +1: layers ascend (forward); -1: descend (backward)
    iterations: int = 1

    def layers(self) -> range:
        stop = self.first_layer + self.step * self.repeat
        return range(self.first_layer, stop, self.step)

    @property
    def templated(self) -> bool:
        return any(LAYER in name for op in self.ops for name in (op.name, *op.inputs, *op.outputs))


@dataclass(slots=True)
class ExpandedOp:
    """One op instance after expansion: the template, its layer and iteration, concrete names."""

    index: int
    op: Op
    block: str
    layer: int | None
    iteration: int
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(slots=True)
class TokenCosts:
    """Per-token costs of one forward pass, for serving simulation and planning.

    Iteration time of a batch with ``n`` new tokens attending over ``c`` context tokens in total is
    built from these by the simulator's roofline; bytes here are for the whole model on one device.
    """

    weight_bytes: int  # all weights read once per iteration
    flops_per_token: float  # dense FLOPs per new token (≈ 2 × active parameters)
    attn_flops_per_token_ctx: float  # attention FLOPs per (new token × context token)
    kv_bytes_per_token: int  # KV bytes one token adds across all layers
    activation_bytes_per_token: int  # transient activation bytes per new token (peak layer)
    layers: int
    # MoE: bytes of the routed experts among ``weight_bytes``; an iteration of n tokens reads
    # E·(1-(1-k/E)^n) of the E experts (memsim.workloads.moe.weight_bytes_read)
    routed_expert_bytes: int = 0
    experts: int = 0
    experts_per_token: int = 0
    # tensor / pipeline parallelism (memsim.workloads.parallel_serving): the bytes and FLOPs above
    # are then one GPU's share; each layer all-reduces tp_comm_bytes_per_token per new token twice
    tp: int = 1
    pp: int = 1
    tp_comm_bytes_per_token: int = 0


@dataclass
class Requests:
    """A serving workload's requests, sorted by arrival (columns, so 10k requests stay small)."""

    arrival_s: list[float]
    prompt_len: list[int]
    output_len: list[int]
    hash_ids: list[list[int]] | None = None  # prefix-chained prompt block hashes (Mooncake traces)
    # hashes of the whole blocks a request's answer completes after its prompt's whole blocks
    # (generated sessions: the next turn starts with them), cached when the request finishes
    answer_hash_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.arrival_s)


@dataclass
class Trace:
    name: str
    kind: Literal["training", "inference", "serving", "module"]
    tensors: dict[str, Tensor]
    blocks: list[Block]
    meta: dict = field(default_factory=dict)
    requests: Requests | None = None
    version: int = TRACE_VERSION

    # -- derived views ------------------------------------------------------------------------

    def tensor(self, name: str) -> Tensor:
        """The tensor behind a concrete name (``L3.wqkv`` → template ``L{layer}.wqkv``)."""
        if name in self.tensors:
            return self.tensors[name]
        return self.tensors[_template_of(name)]

    def expand(self) -> Iterator[ExpandedOp]:
        """Every op instance in execution order, names made concrete."""
        index = 0
        for block in self.blocks:
            for iteration in range(block.iterations):
                for layer in block.layers() if block.templated else [None]:
                    for op in block.ops:
                        yield ExpandedOp(
                            index, op, block.name, layer, iteration,
                            _fill(op.name, layer), tuple(_fill(n, layer) for n in op.inputs),
                            tuple(_fill(n, layer) for n in op.outputs))
                        index += 1

    @property
    def num_ops(self) -> int:
        return sum(len(b.ops) * (b.repeat if b.templated else 1) * b.iterations for b in self.blocks)

    @property
    def num_tensors(self) -> int:
        layers = self.meta.get("layers") or max((b.repeat for b in self.blocks), default=1)
        return sum(layers if LAYER in name else 1 for name in self.tensors)

    @property
    def flops(self) -> float:
        # ``templated`` scans the whole block: evaluate it once per block, not once per op
        return sum(sum(op.flops for op in b.ops) * (b.repeat if b.templated else 1) * b.iterations
                   for b in self.blocks)

    def bytes_by_class(self) -> dict[str, int]:
        """Total bytes of every tensor by class, templates counted once per layer."""
        layers = self.meta.get("layers") or max((b.repeat for b in self.blocks), default=1)
        out = dict.fromkeys(TENSOR_CLASSES, 0)
        for name, t in self.tensors.items():
            out[t.cls] += t.bytes * (layers if LAYER in name else 1)
        return out

    def scratch(self) -> frozenset[str]:
        """Activation/workspace tensors (template names) every read of which follows a write in
        the same pass of its block: buffers each layer (or step) refills before use, like an
        inference ``act``. Anything read before its pass writes it is state carried from pass to
        pass (the residual stream ``hidden``). Planners and the simulator share such a buffer
        among FlexGen's GPU batches at 1/n of the bytes."""
        carried: set[str] = set()
        written_any: set[str] = set()
        for block in self.blocks:
            written: set[str] = set()
            for op in block.ops:
                carried.update(t for t in op.inputs if t not in written)
                written.update(op.outputs)
            written_any |= written
        return frozenset(t for t in written_any - carried
                         if self.tensor(t).cls in ("activation", "workspace"))

    def lifetimes(self) -> dict[str, tuple[int, int]]:
        """Concrete tensor name → (birth op index, death op index), by the rules in the module
        docstring. Death is the index of the last op during which the tensor is alive."""
        born: dict[str, int] = {}
        last: dict[str, int] = {}
        end = -1
        for x in self.expand():
            for name in x.inputs:
                born.setdefault(name, 0)
                last[name] = x.index
            for name in x.outputs:
                born.setdefault(name, x.index)
                last[name] = max(last.get(name, x.index), x.index)
            end = x.index
        out = {}
        for name, start in born.items():
            cls = self.tensor(name).cls
            if cls in PERSISTENT:
                out[name] = (0, end)
            elif cls in ("grad", "kv"):
                out[name] = (start, end)
            else:
                out[name] = (start, last[name])
        return out

    # -- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "version": self.version, "name": self.name, "kind": self.kind, "meta": self.meta,
            "tensors": [asdict(t) for t in self.tensors.values()],
            "blocks": [{**{k: v for k, v in asdict(b).items() if k != "ops"},
                        "ops": [_op_dict(op) for op in b.ops]} for b in self.blocks],
            "requests": asdict(self.requests) if self.requests else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Trace:
        if data.get("version") != TRACE_VERSION:
            raise ValueError(f"trace version {data.get('version')!r} is not {TRACE_VERSION}")
        tensors = {t["name"]: Tensor(**t) for t in data["tensors"]}
        blocks = [Block(**{**b, "ops": [_op_from(op) for op in b["ops"]]}) for b in data["blocks"]]
        requests = Requests(**data["requests"]) if data.get("requests") else None
        return cls(data["name"], data["kind"], tensors, blocks, data.get("meta", {}), requests)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _fill(name: str, layer: int | None) -> str:
    return name if layer is None or LAYER not in name else name.replace(LAYER, str(layer))


def _template_of(name: str) -> str:
    """``L12.attn.out`` → ``L{layer}.attn.out``: the first run of digits after ``L``."""
    layer, rest = split_layer(name)
    if layer is not None:
        return template(rest)
    raise KeyError(name)


def _op_dict(op: Op) -> dict:
    d = asdict(op)
    d["inputs"], d["outputs"] = list(op.inputs), list(op.outputs)
    d["shape"] = list(op.shape) if op.shape is not None else None
    return d


def _op_from(d: dict) -> Op:
    shape = d.get("shape")
    return Op(**{**d, "inputs": tuple(d.get("inputs", ())), "outputs": tuple(d.get("outputs", ())),
                 "shape": tuple(shape) if shape is not None else None})
