"""What a planner needs to know about a (System, Trace) pair, read once from the compact Trace.

Identical layers share one template, so the profile is per *layer* (bytes and seconds of one
layer) plus the non-layer rest (embeddings, head, loss). The MIP's size then does not grow with
depth. Times come from the same roofline the simulator uses (``Compute.op_time`` with the
``achieved_flops`` overrides), so the MIP's estimate and the simulated figure differ only by
what the MIP does not model (latency, copy-engine FIFO order, interference).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memsim.contracts.names import template
from memsim.hardware.attention_impl import attention_bytes
from memsim.hardware.collectives import trace_comm_path
from memsim.hardware.gemm import matmul_shape
from memsim.hardware.spec import Compute, System
from memsim.workloads.trace import LAYER, PERSISTENT, Op, Trace

CLASSES = ("weight", "grad", "optimizer", "kv", "activation", "workspace")


@dataclass
class Profile:
    """Per-layer and whole-step bytes and seconds of one trace on one (rank's view of a) system."""

    kind: str
    layers: int
    compute_tier: str
    total: dict[str, int]  # every tensor of the class, templates × layers
    layer: dict[str, int]  # one layer's template bytes by class
    saved: int  # per layer: activations read by the backward, besides the input checkpoint
    ckpt: int  # per layer: the input checkpoint (`L{layer}.input`) recompute keeps
    transient: int  # per layer: activations/workspace that die inside the layer's forward
    other_transient: int  # largest non-layer activation/workspace (logits, loss)
    other_total: int = 0  # all non-layer activations/workspace
    other_shared: int = 0  # of those, scratch GPU batches share (`Trace.scratch`)
    time: dict[str, float] = field(default_factory=dict)  # seconds by key, see `_times`
    decode_iters: int = 0
    prefill_iters: int = 1  # prompt chunks (chunked prefill runs the prefill block once per chunk)
    tokens_per_step: int = 0
    batch: int = 1

    @property
    def layer_state(self) -> int:
        """Weights, grads and optimizer states of one layer (what streams through the GPU)."""
        return self.layer["weight"] + self.layer["grad"] + self.layer["optimizer"]


def op_unit(system: System, op: Op, cpu_attention: bool = False) -> Compute:
    gpu, cpu = system.gpu, system.cpu
    if op.device == "cpu" or gpu is None:
        return cpu or gpu  # type: ignore[return-value]
    if cpu_attention and cpu is not None and op.kind == "attention" and op.phase == "decode":
        return cpu
    return gpu


def op_seconds(system: System, op: Op, unit: Compute | None = None, split: int = 1,
               weight_bytes: int = 0, trace: Trace | None = None) -> float:
    """One op's time on ``unit`` (the simulator's roofline). ``split`` GPU batches run it in parts
    over 1/split of the data, each re-reading the op's ``weight_bytes`` in full (FlexGen's zig-zag).
    With ``trace``, a decode attention on the CPU streams its cache in fp32 as the simulator's does
    (memsim.hardware.attention_impl)."""
    unit = unit or op_unit(system, op)
    if op.kind == "comm":
        return comm_seconds(system, op)
    nbytes = op.bytes_read + op.bytes_written
    if trace is not None and unit.kind == "cpu" and op.kind == "attention" and op.phase == "decode":
        nbytes = attention_bytes(op, trace, on_cpu=True, gqa_expand=False)
    if split <= 1:
        return unit.op_time(op.flops, nbytes, op.dtype, op.kind, op.phase, op.rows, matmul_shape(op))
    w = min(weight_bytes, nbytes)
    mnk = matmul_shape(op)
    return split * unit.op_time(op.flops / split, w + (nbytes - w) / split, op.dtype, op.kind, op.phase,
                                op.rows // split, mnk and (mnk[0] // split, *mnk[1:]))


def persistent_input_bytes(trace: Trace, op: Op) -> int:
    """Bytes of the weights and optimizer states an op reads (not split across GPU batches)."""
    return sum(t.bytes for t in (trace.tensor(n) for n in op.inputs) if t.cls in PERSISTENT)


def comm_seconds(system: System, op: Op, data_parallel: int = 2) -> float:
    """A comm op's seconds over the fabric the simulator prices it on (trace_comm_path)."""
    path = trace_comm_path(system, data_parallel)
    return 0.0 if path is None else op.bytes_read / (2 * path.rate) + path.latency  # sent + received


def build_profile(system: System, trace: Trace) -> Profile:
    layers = int(trace.meta.get("layers") or max((b.repeat for b in trace.blocks if b.templated), default=1))
    total = dict.fromkeys(CLASSES, 0)
    layer = dict.fromkeys(CLASSES, 0)
    for name, t in trace.tensors.items():
        per_layer = LAYER in name
        total[t.cls] += t.bytes * (layers if per_layer else 1)
        if per_layer:
            layer[t.cls] += t.bytes
    saved, ckpt, transient, other = _activation_split(trace)
    non_layer = {n: t.bytes for n, t in trace.tensors.items()
                 if t.cls in ("activation", "workspace") and LAYER not in n}
    scratch = trace.scratch()  # once: a traced graph has thousands of non-layer tensors
    prof = Profile(
        trace.kind,
        layers,
        system.fast_tier,
        total,
        layer,
        saved,
        ckpt,
        transient,
        other,
        other_total=sum(non_layer.values()),
        other_shared=sum(b for n, b in non_layer.items() if n in scratch),
        tokens_per_step=int(trace.meta.get("tokens_per_step") or 0),
        batch=int(trace.meta.get("batch_size") or trace.meta.get("micro_batch") or 1),
    )
    _times(system, trace, prof)
    return prof


def _activation_split(trace: Trace) -> tuple[int, int, int, int]:
    """Per layer: (saved for backward, input checkpoint, transient) and the largest non-layer one."""
    read_in_backward: set[str] = set()
    for block in trace.blocks:
        for op in block.ops:
            if op.phase == "backward":
                read_in_backward.update(op.inputs)
    saved = ckpt = transient = other = 0
    for name, t in trace.tensors.items():
        if t.cls not in ("activation", "workspace"):
            continue
        if LAYER not in name:
            other = max(other, t.bytes)
        elif name == template("input"):
            ckpt += t.bytes
        elif t.cls == "activation" and name in read_in_backward:
            saved += t.bytes
        else:
            transient += t.bytes
    return saved, ckpt, transient, other


def _times(system: System, trace: Trace, prof: Profile) -> None:
    """Seconds per phase: ``<phase>_layer`` (one layer, one iteration) and ``<phase>_other``
    (non-layer ops, all iterations); ``optimizer_cpu_*`` for the same step run on the CPU;
    ``decode_attn_cpu_layer`` for FlexGen's CPU attention."""
    t: dict[str, float] = {}
    cpu = system.cpu
    for block in trace.blocks:
        per_layer = block.templated
        if per_layer and block.ops and block.ops[0].phase == "decode":
            prof.decode_iters = max(prof.decode_iters, block.iterations)
        if per_layer and block.ops and block.ops[0].phase == "prefill":  # chunked prefill
            prof.prefill_iters = max(prof.prefill_iters, block.iterations)
        for op in block.ops:
            sec = op_seconds(system, op)
            reps = 1 if per_layer else block.iterations
            key = f"{'comm_' if op.kind == 'comm' else ''}{op.phase}_{'layer' if per_layer else 'other'}"
            t[key] = t.get(key, 0.0) + sec * reps
            if op.phase == "optimizer" and cpu is not None:
                k = f"optimizer_cpu_{'layer' if per_layer else 'other'}"
                t[k] = (
                    t.get(k, 0.0)
                    + cpu.op_time(op.flops, op.bytes_read + op.bytes_written, op.dtype, op.kind,
                                  op.phase, op.rows) * reps
                )
            if per_layer and op.phase == "decode" and op.kind == "attention":
                t["decode_attn_gpu_layer"] = t.get("decode_attn_gpu_layer", 0.0) + sec
                if cpu is not None:
                    t["decode_attn_cpu_layer"] = t.get("decode_attn_cpu_layer", 0.0) + cpu.op_time(
                        op.flops, attention_bytes(op, trace, on_cpu=True, gqa_expand=False),
                        op.dtype, op.kind, op.phase, op.rows)
    prof.time = t


def phase_split_times(system: System, trace: Trace, split: int, cpu_attention: bool) -> dict[str, float]:
    """Per-layer prefill/decode GPU and CPU seconds when the batch runs as ``split`` GPU batches."""
    out = {"prefill_gpu": 0.0, "decode_gpu": 0.0, "decode_cpu": 0.0}
    for block in trace.blocks:
        if not block.templated:
            continue
        for op in block.ops:
            if op.phase not in ("prefill", "decode"):
                continue
            unit = op_unit(system, op, cpu_attention)
            sec = op_seconds(system, op, unit, split, persistent_input_bytes(trace, op), trace)
            side = "cpu" if unit.kind == "cpu" and system.gpu is not None else "gpu"
            key = f"{op.phase}_{side}"
            out[key] = out.get(key, 0.0) + sec
    return out


def tie_scale(prof: Profile) -> float:
    """Seconds of all compute in one step: tie-break terms are weighted against it (×1e-5) so they
    only choose among plans the solver sees as equally fast."""
    t = prof.time
    per_layer = (t.get("forward_layer", 0) + t.get("backward_layer", 0) + t.get("optimizer_layer", 0)
                 + prof.prefill_iters * t.get("prefill_layer", 0)
                 + max(prof.decode_iters, 1) * t.get("decode_layer", 0))
    other = sum(v for k, v in t.items() if k.endswith("_other") and "cpu" not in k)
    return max(1e-9, prof.layers * per_layer + other)
