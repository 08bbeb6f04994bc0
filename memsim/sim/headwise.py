"""Head-wise KV streaming (HeadInfer, Luo et al. 2025, arXiv 2502.12574): a program transform.

With ``plan.kv_head_groups = g`` each layer's KV cache is g tensors (``L{l}.kv~h{j}``, a group of
KV heads each) and each attention op runs as g ops, one per group, each its own segment and its
own prefetch slot. ``prefetch_depth`` then counts head groups: while group j's attention runs,
group j + 1's KV is fetched, so a KV cache homed off the GPU occupies a few head groups there
instead of whole layers (HeadInfer's two head buffers at one group per KV head). FLOPs and bytes
are split evenly: the heads of a layer are alike. Ops that write the KV (QKV) write every group.
"""

from __future__ import annotations

import copy

from memsim.contracts.plan import Plan
from memsim.errors import SpecError
from memsim.sim.program import POp
from memsim.workloads.trace import Tensor, Trace

SEP = "~h"


def split_heads(raw: list[POp], trace: Trace, plan: Plan) -> tuple[list[POp], Trace]:
    """(ops, trace) with every layer's KV and attention split into ``plan.kv_head_groups``."""
    g = int(plan.kv_head_groups or 1)
    heads = trace.meta.get("kv_heads")
    if trace.kind != "inference" or g == 1:
        return raw, trace
    if heads and heads % g:
        raise SpecError(f"{g} head groups do not divide the model's {heads} KV heads",
                        file="plan", key="kv_head_groups")
    if (plan.num_gpu_batches or 1) > 1:
        raise SpecError("kv_head_groups cannot be combined with num_gpu_batches", file="plan",
                        key="kv_head_groups")
    kv = {n for n, t in trace.tensors.items() if t.cls == "kv"}
    out = copy.copy(trace)
    out.tensors = dict(trace.tensors)
    for name in kv:
        t = trace.tensors[name]
        for j in range(g):
            out.tensors[f"{name}{SEP}{j}"] = Tensor(f"{name}{SEP}{j}", t.bytes // g, "kv", t.dtype)
    is_kv: dict[str, bool] = {}

    def kv_name(n: str) -> bool:
        hit = is_kv.get(n)
        if hit is None:
            hit = is_kv[n] = trace.tensor(n).cls == "kv" if not n.startswith(("hidden", "act",
                                                                              "logits")) else False
        return hit

    ops: list[POp] = []
    for op in raw:
        touched = [n for n in (*op.inputs, *op.outputs) if kv_name(n)]
        if not touched:
            ops.append(op)
            continue
        if op.kind == "attention":
            for j in range(g):
                ins = tuple(f"{n}{SEP}{j}" if kv_name(n) else n for n in op.inputs)
                outs = tuple(f"{n}{SEP}{j}" if kv_name(n) else n for n in op.outputs)
                ops.append(POp(op.index, f"{op.name}{SEP}{j}", op.kind, op.phase, op.dtype,
                               op.flops / g, op.nbytes / g, op.unit, op.mem, ins, outs, op.layer,
                               op.iteration, (f"{op.group[0]}{SEP}{j}", *op.group[1:]),
                               op.recompute, op.written / g, op.rows))
            continue
        op.inputs = _every(op.inputs, kv_name, g)
        op.outputs = _every(op.outputs, kv_name, g)
        ops.append(op)
    return ops, out


def _every(names: tuple[str, ...], kv_name, g: int) -> tuple[str, ...]:
    out: list[str] = []
    for n in names:
        out.extend([f"{n}{SEP}{j}" for j in range(g)] if kv_name(n) else [n])
    return tuple(out)
