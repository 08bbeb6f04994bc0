"""A traced training graph cut into stages, so the Plan's per-layer policies apply to it.

The Plan says what happens to a *layer's* saved activations (keep, offload, recompute) and the
simulator carries it out per layer (``memsim/sim/program.py``). A traced module (``memsim trace
--train``) is a flat op graph with no layers. ``stage`` cuts its forward into consecutive stages
and names them as layers, without changing a byte or an op:

* a *unit* is a run of forward ops under one module: the op's scope truncated after its first
  numeric part (``Decoder.blocks.3.mlp.up`` → ``Decoder.blocks.3``; ``Sequential.2``), or its
  first two parts when it has none (``Decoder.embed``). A decoder's units are its blocks, an
  ``nn.Sequential``'s its children; the loss reduction, and units without a matmul or attention
  (activations, norms), join the unit before them (a Linear and its GELU are one stage);
* more than ``max_stages`` units are merged into that many runs of about equal op count;
* each backward op belongs to the stage whose module it differentiates (its scope's unit, when
  that unit is one stage), else to the latest stage whose activations it reads, else to the
  stage of the op before it; stages never go up again in backward (the order the simulator
  recomputes and prefetches in);
* stage ``k``'s forward and backward ops become blocks of layer ``k`` (``L{layer}.`` op names),
  and every tensor its forward ops produce is renamed ``L{k}.<name>``: the simulator's recompute
  of layer ``k`` re-runs exactly those ops from the tensors the stage reads from outside (its
  checkpoints, which stay alive until then), and ``offload`` moves exactly its saved tensors.

Weights, inputs, gradients and backward temporaries keep their names. ``meta["layers"]`` is the
number of stages, ``meta["stages"]`` their units. Staging is deterministic and idempotent, so a
saved trace stages to the same graph every time it is loaded (``load_trace``), and a plan made on
it fits it (its fingerprint covers the staged names).
"""

from __future__ import annotations

import copy
import dataclasses

from memsim.contracts.names import layer_name, template
from memsim.workloads.trace import Block, Op, Tensor, Trace

MAX_STAGES = 96  # more stages than a 80-layer decoder has blocks (+ embedding, head), bounded


def unit_of(op_name: str) -> str:
    """The module unit of a traced op name ``scope:aten:index``."""
    scope = op_name.rsplit(":", 2)[0]
    parts = scope.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:2])


def stageable(trace: Trace) -> bool:
    """A traced training graph not staged yet: forward and backward blocks, no layers."""
    return (trace.kind == "module" and "stages" not in trace.meta
            and [b.name for b in trace.blocks] == ["forward", "backward"]
            and not any(b.templated for b in trace.blocks))


def stage(trace: Trace, max_stages: int = MAX_STAGES) -> Trace:
    """The staged copy of a traced training graph (the trace itself when not ``stageable``)."""
    if not stageable(trace):
        return trace
    forward, backward = trace.blocks[0].ops, trace.blocks[1].ops
    if not forward:
        return trace
    units = _units(forward)
    groups = _merge(units, max_stages)
    fwd_stage: list[int] = []
    labels: list[str] = []
    for k, group in enumerate(groups):
        labels.append(group[0][0] if len(group) == 1 else f"{group[0][0]}..{group[-1][0]}")
        for _, count in group:
            fwd_stage += [k] * count
    rename: dict[str, str] = {}
    produced_stage: dict[str, int] = {}
    for op, k in zip(forward, fwd_stage, strict=True):
        for t in op.outputs:
            if t not in rename and t in trace.tensors and trace.tensors[t].cls in ("activation", "workspace"):
                rename[t] = layer_name(k, t)
                produced_stage[t] = k
    unit_stages: dict[str, set[int]] = {}
    for op, k in zip(forward, fwd_stage, strict=True):
        unit_stages.setdefault(unit_of(op.name), set()).add(k)
    bwd_stage = _backward_stages(backward, unit_stages, produced_stage, len(groups) - 1)
    tensors = {}
    for name, t in trace.tensors.items():
        new = rename.get(name, name)
        tensors[new] = Tensor(new, t.bytes, t.cls, t.dtype)
    blocks = []
    for phase, ops, stages, step in (("forward", forward, fwd_stage, 1),
                                     ("backward", backward, bwd_stage, -1)):
        i = 0
        while i < len(ops):
            j = i
            while j < len(ops) and stages[j] == stages[i]:
                j += 1
            blocks.append(Block(f"{phase}{stages[i]}", [_renamed(op, rename) for op in ops[i:j]],
                                repeat=1, first_layer=stages[i], step=step))
            i = j
    meta = copy.deepcopy(trace.meta)
    meta["layers"] = len(groups)
    meta["stages"] = labels
    return Trace(trace.name, trace.kind, tensors, blocks, meta, trace.requests, trace.version)


def unit_count(trace: Trace) -> int:
    """How many units a stageable trace's forward has (``stage`` merges more than
    ``max_stages`` of them): the n of Chen et al.'s √n segments."""
    return len(_units(trace.blocks[0].ops)) if stageable(trace) else int(trace.meta.get("layers", 1))


def _units(forward: list[Op]) -> list[tuple[str, int]]:
    """Runs of consecutive forward ops under one unit: (unit, op count). Loss ops, and a unit
    with no matmul or attention (an activation function, a norm, a pooling), join the run before
    them (the first run: the one after it): recomputing such a unit alone would keep its input
    and free only its output, the next unit's input."""
    runs: list[list] = []
    for op in forward:
        unit = unit_of(op.name)
        if runs and (runs[-1][0] == unit or op.kind == "loss"):
            runs[-1][1] += 1
            runs[-1][2] = runs[-1][2] or op.kind in _HEAVY
        else:
            runs.append([unit, 1, op.kind in _HEAVY])
    merged: list[list] = []
    for unit, count, heavy in runs:
        if merged and (not heavy or not merged[-1][2]):
            merged[-1][1] += count
            merged[-1][0] = merged[-1][0] if merged[-1][2] or not heavy else unit
            merged[-1][2] = merged[-1][2] or heavy
        else:
            merged.append([unit, count, heavy])
    return [(u, c) for u, c, _ in merged]


_HEAVY = ("matmul", "attention")


def _merge(units: list[tuple[str, int]], max_stages: int) -> list[list[tuple[str, int]]]:
    """At most ``max_stages`` groups of consecutive units, of about equal op count."""
    if len(units) <= max_stages:
        return [[u] for u in units]
    total = sum(c for _, c in units)
    groups: list[list[tuple[str, int]]] = [[]]
    done = 0
    for u in units:
        target = total * len(groups) / max_stages
        if groups[-1] and done >= target and len(groups) < max_stages:
            groups.append([])
        groups[-1].append(u)
        done += u[1]
    return groups


def _backward_stages(backward: list[Op], unit_stages: dict[str, set[int]],
                     produced_stage: dict[str, int], last: int) -> list[int]:
    out = []
    current = last
    for op in backward:
        own = unit_stages.get(unit_of(op.name))
        if own is not None and len(own) == 1:
            k = next(iter(own))
        else:
            read = [produced_stage[t] for t in op.inputs if t in produced_stage]
            k = max(read) if read else current
        current = min(current, k)
        out.append(current)
    return out


def _renamed(op: Op, rename: dict[str, str]) -> Op:
    return dataclasses.replace(op, name=template(op.name),
                               inputs=tuple(rename.get(t, t) for t in op.inputs),
                               outputs=tuple(rename.get(t, t) for t in op.outputs))
