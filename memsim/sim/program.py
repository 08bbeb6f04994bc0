"""Trace + Plan → the program the engine runs: concrete ops on units, segments, tensor homes.

What the Plan's semantics (``memsim/contracts/plan.py``) become, decided here once, before any
simulated time passes:

* every op gets a unit (GPU, CPU, comm) and that unit's memory tier: ``device="cpu"`` ops, the
  optimizer step under ``optimizer_device: cpu`` and decode attention under ``cpu_attention`` run
  on the CPU; on a CPU-only system every op runs on the CPU;
* ``recompute`` layers get a copy of their forward ops inserted right before their backward; the
  tensors it produces are new instances (``name@r``), so the forward's saved activations die after
  the forward (only the layer input, the checkpoint, survives);
* FlexGen's block schedule (``num_gpu_batches`` = n > 1, inference) runs each segment n times over
  1/n of the batch: non-weight tensors become n instances (``name#j``) of 1/n the bytes (a scratch
  buffer no layer carries to the next, one shared ``name#shared``), each sub-op re-reads the
  layer's weights from HBM, and weights are fetched once per layer per block;
* a *segment* is the unit of prefetching: consecutive ops of one (block, iteration, layer, GPU
  batch); the fetches of layer j + ``prefetch_depth``'s segments are issued when a segment of
  layer j starts;
* each tensor gets a *home*: bytes per tier (placement fractions for weights, grads, optimizer
  states, KV; ``activation_tier`` for offloaded activations; the producing unit's memory for the
  rest), its birth and death op, and for each op which inputs' last writer it is.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from memsim.contracts.names import (
    base_name,
    batch_instance,
    is_batch_instance,
    is_recomputed,
    layer_name,
    layer_of,
    micro_batch_instance,
    recompute_instance,
    split_layer,
    template,
)
from memsim.contracts.plan import Plan
from memsim.errors import SpecError
from memsim.hardware.attention_impl import attention_bytes, fresh_scale, host_kv_homes
from memsim.hardware.gemm import matmul_shape
from memsim.hardware.spec import System
from memsim.workloads.trace import LAYER, PERSISTENT, Tensor, Trace


@dataclass(slots=True)
class POp:
    """One op of the program, with everything the engine needs precomputed."""

    index: int
    name: str
    kind: str
    phase: str
    dtype: str
    flops: float
    nbytes: float
    unit: str  # gpu | cpu | comm
    mem: str  # the tier the unit computes from
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    layer: int | None
    iteration: int
    group: tuple  # (block, iteration, layer, sub-batch): consecutive equal groups form a segment
    recompute: bool = False
    written: float = 0.0  # bytes the op writes (its outputs' new data)
    rows: int = 0  # a matmul's left-operand rows (its tokens: what its FLOP/s depends on); 0: unknown
    shape: tuple[int, ...] | None = None  # a matmul's (m, k, n), for its rate by shape
    seg: int = 0
    writers: tuple[int | None, ...] = ()  # last writer (op index) of each input before this op
    in_frac: tuple[float, ...] = ()  # fraction of each input's bytes the op needs (KV context)
    out_frac: tuple[float, ...] = ()  # fraction of each output's bytes the op writes
    no_fetch: frozenset[str] = frozenset()  # inputs overwritten whole (optimizer's weight)
    writeback: tuple[str, ...] = ()  # outputs to copy to their homes after this op
    dies: tuple[str, ...] = ()  # tensors whose last use this is


@dataclass(slots=True)
class TInfo:
    name: str
    cls: str
    bytes: int
    home: dict[str, int]  # tier → bytes, ordered by tier name
    birth: int | None  # first writer; None: exists from the start
    death: int | None  # last op it is alive in; None: alive to the end
    chunk: int = 0  # bytes of one contiguous read from its home (scattered neurons); 0: large reads
    # tier → bytes the home holds where that differs from ``home`` (what copies move): a host KV
    # buffer in another dtype (Plan.host_kv_bits); None: ``home``
    footprint: dict[str, int] | None = None

    @property
    def held(self) -> dict[str, int]:
        """Tier → bytes the tensor's home occupies there."""
        return self.footprint or self.home


@dataclass(slots=True)
class Segment:
    index: int
    ops: list[int]
    layer: int | None


@dataclass
class Program:
    ops: list[POp]
    tensors: dict[str, TInfo]
    segments: list[Segment]
    units: dict[str, str]  # unit → memory tier
    fast: str
    notes: list[str] = field(default_factory=list)
    staging: str = "pipelined"  # Plan.staging: how multi-hop copies move (memsim.sim.staging)
    weight_copies: int = 1  # Plan.weight_copies: copies a layer's weight fetch is issued as
    context_ops: list[POp] | None = None  # decode ops touching KV (``refit_context``'s), once found


def units_of(system: System) -> dict[str, str]:
    """Compute units the engine runs: gpu (if any), cpu (if any), comm (the GPU's network side)."""
    out = {}
    if system.gpu is not None:
        out["gpu"] = system.gpu.memory
    if system.cpu is not None:
        out["cpu"] = system.cpu.memory
    out["comm"] = system.fast_tier
    return out


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a program is built or simulated.

    Why: a run allocates hundreds of thousands of long-lived objects (ops, tuples, events) and
    almost no reference cycles (a hundred objects per run); the collector would rescan all of
    them again and again (a third of the time of a long decode run). Reference counting still
    frees everything at once. On the way out, what was allocated meanwhile joins the oldest
    generation (``freeze`` + ``unfreeze``) instead of being scanned at once by the first
    collection after ``enable``; the next full collection sees it as usual. The collector's
    previous state is restored, so nesting is harmless."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            if gc.get_freeze_count() == 0:  # (leave alone a caller's own frozen objects)
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def build_program(trace: Trace, system: System, plan: Plan) -> Program:
    with paused_gc():
        return _build_program(trace, system, plan)


def _build_program(trace: Trace, system: System, plan: Plan) -> Program:
    fast = system.fast_tier
    units = units_of(system)
    notes: list[str] = []
    raw = _expand(trace, plan, units, notes, fresh_scale(system.cpu))
    if "sparsity" in trace.meta:
        from memsim.sim.neurons import ffn_segments

        raw = ffn_segments(raw)
    if plan.kv_head_groups and plan.kv_head_groups > 1:
        from memsim.sim.headwise import split_heads

        raw, trace = split_heads(raw, trace, plan)
    n = plan.num_gpu_batches or 1
    if n > 1 and trace.kind == "inference":
        raw = _split_batches(raw, trace, n, notes)
    if trace.kind in ("training", "module") and _any_recompute(plan):
        raw = _insert_recompute(raw, trace, plan)
    if trace.kind in ("training", "module"):
        _micro_batch_instances(raw, trace)
    ops = raw
    scan = _scan(ops, whole=trace.kind != "inference")
    tensors = _tensors(scan, trace, system, plan, fast, n if trace.kind == "inference" else 1)
    _annotate(ops, scan, tensors, trace, routed=plan.expert_fetch == "routed")
    if "sparsity" in trace.meta:
        from memsim.sim.neurons import home_neurons

        home_neurons(ops, tensors, trace, plan)
    if "kv_select" in trace.meta:
        from memsim.sim.kv_select import home

        home(tensors, trace.meta["kv_select"], fast)
    return Program(ops, tensors, scan.segments, units, fast, notes, plan.staging,
                   plan.weight_copies or 1)


def refit_context(prog: Program, trace: Trace, plan: Plan) -> Program | None:
    """``prog`` (built for a window of decode iterations) for the same window at another place
    in the context (``trace.meta["decode_from"]``, memsim/sim/fold.py): what differs is only the
    share of each tensor an op moves (``_fractions``), so only that is worked out again, in
    place. None where more could differ (build the program again)."""
    if (trace.kind != "inference" or "sparsity" in trace.meta
            or (plan.kv_head_groups and plan.kv_head_groups > 1)):
        return None
    with paused_gc():
        if prog.context_ops is None:  # only decode ops reading or writing KV see the context
            kv = {t for t, info in prog.tensors.items() if info.cls == "kv"}
            prog.context_ops = [op for op in prog.ops if op.phase == "decode" and not (
                kv.isdisjoint(op.inputs) and kv.isdisjoint(op.outputs))]
        _fractions(prog.ops, prog.tensors, trace, routed=plan.expert_fetch == "routed",
                   only=prog.context_ops)
    return prog


# -- expansion ------------------------------------------------------------------------------------


def _expand(trace: Trace, plan: Plan, units: dict, notes: list, fresh: float = 1.0) -> list[POp]:
    """Every op instance in order (as ``Trace.expand``), with its unit; names are filled once per
    (template op, layer) and shared by every iteration, so long decode runs stay cheap. ``fresh``:
    the CPU's cost of a byte written into fresh memory (memsim.hardware.attention_impl)."""
    has_gpu, has_cpu = "gpu" in units, "cpu" in units
    out = []
    for block in trace.blocks:
        layers = list(block.layers()) if block.templated else [None]
        static = []
        for op in block.ops:
            unit = "gpu" if op.device == "gpu" else "cpu"
            if op.kind == "comm":
                unit = "comm"
            elif _on_cpu(op, plan):
                unit = "cpu"
            if unit == "gpu" and not has_gpu:
                unit = "cpu"
            if unit == "cpu" and not has_cpu:
                unit = "gpu"
                if "no CPU compute unit: CPU ops run on the GPU" not in notes:
                    notes.append("no CPU compute unit: CPU ops run on the GPU")
            static.append((op, unit, units[unit], attention_bytes(
                op, trace, on_cpu=unit == "cpu" and _on_cpu(op, plan), gqa_expand=plan.gqa_expand,
                fresh=fresh),
                           _outputs(op, trace), float(op.bytes_written)))
        append = out.append
        if block.iterations == 1:  # each (op, layer) runs once: no rows to share, make the ops
            # every name of the block in one string, filled per layer by one replace and one
            # split (str.replace per name was a third of this function); spans slice it back
            flat: list[str] = []
            spans = []
            for op, _unit, _mem, _nbytes, outs, _written in static:
                a = len(flat)
                flat.append(op.name)
                flat.extend(op.inputs)
                b = len(flat)
                flat.extend(outs)
                spans.append((a + 1, b, len(flat)))
            joined = _SEP.join(flat)
            whole = _SEP not in "".join(flat)  # (never false for real names)
            for layer in layers:
                group = (block.name, 0, layer, 0)
                if layer is None:
                    for op, unit, mem, nbytes, outs, written in static:
                        append(POp(0, op.name, op.kind, op.phase, op.dtype, op.flops, nbytes, unit,
                                   mem, op.inputs, outs, layer, 0, group, False, written, op.rows,
                                   matmul_shape(op)))
                    continue
                sl = str(layer)
                names = (joined.replace(LAYER, sl).split(_SEP) if whole
                         else [n.replace(LAYER, sl) for n in flat])
                for (op, unit, mem, nbytes, _outs, written), (a, b, c) in zip(static, spans,
                                                                              strict=True):
                    append(POp(0, names[a - 1], op.kind, op.phase, op.dtype, op.flops, nbytes,
                               unit, mem, tuple(names[a:b]), tuple(names[b:c]), layer, 0, group,
                               False, written, op.rows, matmul_shape(op)))
            continue
        rows = {}
        for layer in layers:
            if layer is None:
                rows[layer] = [(op.name, op.kind, op.phase, op.dtype, op.flops, nbytes, unit, mem,
                                op.inputs, outs, layer, written, op.rows, matmul_shape(op))
                               for op, unit, mem, nbytes, outs, written in static]
                continue
            sl = str(layer)  # str.replace returns the name itself when it holds no {layer}
            rows[layer] = [(op.name.replace(LAYER, sl), op.kind, op.phase, op.dtype, op.flops,
                            nbytes, unit, mem, tuple([n.replace(LAYER, sl) for n in op.inputs]),
                            tuple([n.replace(LAYER, sl) for n in outs]), layer, written, op.rows,
                            matmul_shape(op))
                           for op, unit, mem, nbytes, outs, written in static]
        for it in range(block.iterations):
            for layer in layers:
                group = (block.name, it, layer, 0)
                for (name, kind, phase, dtype, flops, nbytes, unit, mem, inputs, outputs, lay,
                     written, m, mnk) in rows[layer]:
                    append(POp(0, name, kind, phase, dtype, flops, nbytes, unit, mem, inputs,
                               outputs, lay, it, group, False, written, m, mnk))
    return out


_SEP = "\x1f"  # joins a block's names for filling them in one pass (no name holds it)


def _outputs(op, trace: Trace) -> tuple[str, ...]:
    """An optimizer step updates the optimizer states it reads, whether or not the trace lists
    them as outputs: they must go back to their home when homed off the stepping device."""
    if op.kind != "optimizer" and op.phase != "optimizer":
        return op.outputs
    states = tuple(t for t in op.inputs if t not in op.outputs and _cls(trace, t) == "optimizer")
    return op.outputs + states


def _on_cpu(op, plan: Plan) -> bool:
    """The plan moves the optimizer step (ZeRO-Offload) or decode attention (FlexGen) to the CPU."""
    if op.kind == "optimizer" or op.phase == "optimizer":
        return plan.optimizer_device == "cpu"
    return plan.cpu_attention and op.kind == "attention" and op.phase == "decode"


def _split_batches(raw: list[POp], trace: Trace, n: int, notes: list) -> list[POp]:
    """FlexGen's zig-zag: each group runs once per GPU batch on 1/n of the non-weight data."""
    batch = trace.meta.get("batch_size")
    if batch and batch % n:
        notes.append(f"batch {batch} is not a multiple of num_gpu_batches {n}: GPU batches rounded")
    out: list[POp] = []
    append = out.append
    cache: dict[tuple, tuple] = {}  # (inputs, outputs) → (weight bytes, names per GPU batch)
    scratch = trace.scratch()
    i = 0
    while i < len(raw):
        j = i
        group = raw[i].group
        while j < len(raw) and raw[j].group == group:
            j += 1
        for b in range(n):
            sub_group = (*group[:3], b)
            for r in raw[i:j]:
                key = (r.inputs, r.outputs)
                hit = cache.get(key)
                if hit is None:
                    hit = cache[key] = (
                        sum(trace.tensor(t).bytes for t in r.inputs
                            if trace.tensor(t).cls in PERSISTENT),
                        [tuple(_sub(t, trace, bb, scratch) for t in r.inputs) for bb in range(n)],
                        [tuple(_sub(t, trace, bb, scratch) for t in r.outputs) for bb in range(n)])
                wbytes = min(hit[0], r.nbytes)
                append(POp(r.index, r.name, r.kind, r.phase, r.dtype, r.flops / n,
                           wbytes + (r.nbytes - wbytes) / n, r.unit, r.mem, hit[1][b], hit[2][b],
                           r.layer, r.iteration, sub_group, r.recompute, r.written / n,
                           r.rows // n, None if r.shape is None else
                           (r.shape[0] // n, *r.shape[1:])))  # each GPU batch: 1/n of the tokens
        i = j
    return out


def _sub(name: str, trace: Trace, b: int, scratch: frozenset[str] = frozenset()) -> str:
    """The GPU batch ``b`` instance of ``name``; ``scratch`` holds ``Trace.scratch()``'s names."""
    t = trace.tensor(name)
    if t.name in scratch:  # one 1/n buffer that every GPU batch reuses in turn
        return batch_instance(name, "shared")
    return name if t.cls in PERSISTENT else batch_instance(name, b)


def _any_recompute(plan: Plan) -> bool:
    return plan.activations == "recompute" or "recompute" in plan.layer_policy.values()


def _insert_recompute(raw: list[POp], trace: Trace, plan: Plan) -> list[POp]:
    """Before a recompute layer's first backward op, run its forward ops again.

    The recomputed forward starts from the layer's checkpoint ``L{i}.input`` (it replaces any
    non-layer activation the forward read, e.g. the residual stream) and does not re-produce it.
    Its other layer tensors become new instances ``name@r`` that the backward then reads; the
    non-layer activations it writes are local to it (``name@r{i}``) and die at once.
    With gradient accumulation each micro-batch (a forward after a backward starts one) recomputes
    its own forward only; ``_micro_batch_instances`` then keeps the micro-batches' copies apart.
    """
    forward: dict[int, list[POp]] = {}  # this pass's forward ops per layer, as they were
    rename: dict[str, str] = {}
    names = rename.keys()  # (a live view: isdisjoint runs in C)
    done: set[int] = set()
    memo: dict[str, bool] = {}  # _recompute_layer's activation-like names, for every layer
    stamps: dict[tuple, tuple | None] = {}  # a block's recompute worked out once (``_stamp``)
    # (the stamps hold when no concrete tensor of the trace has a per-layer name)
    stampable = all(layer_of(name) is None for name in trace.tensors)
    out: list[POp] = []
    in_backward = False
    for r in raw:
        layer = r.layer
        if r.phase == "forward":
            if in_backward:  # the next micro-batch: its own forward, recompute and renames
                in_backward = False
                forward, rename, done = {}, {}, set()
                names = rename.keys()
            if layer is not None:
                forward.setdefault(layer, []).append(r)
        elif r.phase == "backward":
            in_backward = True
        if (r.phase == "backward" and layer is not None and layer not in done
                and plan.policy(layer) == "recompute" and layer in forward):
            done.add(layer)
            fwd = forward[layer]
            ops = _stamped_layer(fwd, layer, trace, rename, stamps) if stampable else None
            out.extend(ops if ops is not None
                       else _recompute_layer(fwd, layer, trace, rename, memo))
        if rename and not (names.isdisjoint(r.inputs) and names.isdisjoint(r.outputs)):
            get = rename.get
            inputs = tuple(map(get, r.inputs, r.inputs))  # (get(t, t) for each t, in C)
            outputs = tuple(map(get, r.outputs, r.outputs))
            if r.phase == "forward" and r.layer is not None:  # (``forward`` holds it as it was)
                r = _renamed(r, r.name, inputs, outputs, r.recompute, r.group)
            else:  # this call's own op, referenced nowhere else: rename it in place
                r.inputs, r.outputs = inputs, outputs
        out.append(r)
    return out


def _micro_batch_instances(raw: list[POp], trace: Trace) -> None:
    """Give micro-batch k ≥ 1 its own instances (``name@mb{k}``) of the activations and
    workspace it writes, in place.

    Why: micro-batches reuse the trace's activation names, and a tensor lives from its first
    writer to its last use, so without this micro-batch 0's saved activations (and their
    recomputed copies) would stay allocated until the last micro-batch, and the peak would grow
    with the accumulation. PyTorch frees a micro-batch's activations in its backward and adds
    gradients in place (grads keep one name: they accumulate across micro-batches). A
    micro-batch starts at a forward op (not a recompute) that follows a backward op; a name it
    reads before writing is state carried over from the previous one, and keeps its instance."""
    passes: list[tuple[int, int]] = []
    start, in_backward = 0, False
    for i, r in enumerate(raw):
        if r.phase == "forward" and in_backward and not r.recompute:
            passes.append((start, i))
            start, in_backward = i, False
        elif r.phase == "backward":
            in_backward = True
    passes.append((start, len(raw)))
    transient: dict[str, bool] = {}  # name → activation or workspace (memoised per name)

    def is_transient(name: str) -> bool:
        hit = transient.get(name)
        if hit is None:
            hit = transient[name] = _cls(trace, name) in _RECOMPUTED
        return hit

    for k, (a, b) in enumerate(passes[1:], start=1):
        suffix = micro_batch_instance("", k)
        rename: dict[str, str] = {}
        for r in raw[a:b]:
            if rename:
                r.inputs = tuple(rename.get(t, t) for t in r.inputs)
            for t in r.outputs:
                if t not in rename and is_transient(t):
                    rename[t] = t + suffix
            if rename:
                r.outputs = tuple(rename.get(t, t) for t in r.outputs)


def _recompute_layer(forward: list[POp], layer: int, trace: Trace, rename: dict,
                     memo: dict[str, bool]) -> list[POp]:
    prefix = layer_name(layer, "")
    ckpt = prefix + "input"
    has_ckpt = _exists(trace, ckpt)
    local: dict[str, str] = {}
    out = []
    groups: dict[tuple, tuple] = {}  # the forward's group → the recompute's (one per layer)
    suffix = recompute_instance("", layer)
    for f in forward:
        inputs, outputs = _recompute_io(f.inputs, f.outputs, prefix, ckpt, has_ckpt, trace, memo,
                                        local, suffix, rename)
        group = groups.get(f.group)
        if group is None:
            group = groups[f.group] = ("recompute", *f.group[1:])
        out.append(POp(f.index, recompute_instance(f.name), f.kind, f.phase, f.dtype, f.flops, f.nbytes,
                       f.unit, f.mem, inputs, outputs, f.layer, f.iteration,
                       group, True, f.written, f.rows, f.shape))  # (``_renamed`` inlined)
    return out


_RECOMPUTED = ("activation", "workspace")  # the classes a recomputed forward makes again


def _recompute_io(inputs: tuple[str, ...], outputs: tuple[str, ...], prefix: str, ckpt: str,
                  has_ckpt: bool, trace: Trace, memo: dict[str, bool], local: dict[str, str],
                  suffix: str, renamed: dict[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """One forward op's recompute (inputs, outputs), the rules ``_recompute_layer`` and
    ``_stamp`` share: an input the recompute made already is its copy; an activation from
    outside the layer is the layer's checkpoint, when it keeps one; an activation the op makes
    is made again under a new name (``name@r`` for the layer's own, which later reads are
    ``renamed`` to; ``name`` + ``suffix`` for others), and the checkpoint is not remade.

    Whether a name is an activation is memoised in ``memo`` (inline: this runs per name per
    layer): a per-layer name that is not a concrete tensor of the trace has its template's
    class, kept under ``{layer}`` + the rest of the name, the same for every layer."""
    ins = []
    for t in inputs:
        if t in local:
            ins.append(local[t])
            continue
        if has_ckpt and not t.startswith(prefix):
            act = memo.get(t)
            if act is None:
                act = memo[t] = _cls(trace, t) in _RECOMPUTED
            if act:
                ins.append(ckpt)
                continue
        ins.append(t)
    outs = []
    for t in outputs:
        if t == ckpt:
            continue
        mine = t.startswith(prefix)
        key = LAYER + t[len(prefix):] if mine and t not in trace.tensors else t
        act = memo.get(key)
        if act is None:
            act = memo[key] = _cls(trace, t) in _RECOMPUTED
        if act:
            local[t] = recompute_instance(t) if mine else t + suffix
            if mine:
                renamed[t] = local[t]
            outs.append(local[t])
        else:
            outs.append(t)
    return tuple(dict.fromkeys(ins)), tuple(outs)


def _stamped_layer(forward: list[POp], layer: int, trace: Trace, rename: dict,
                   stamps: dict[tuple, tuple | None]) -> list[POp] | None:
    """``_recompute_layer`` for a layer whose forward is one templated block's ops, from that
    block's recompute worked out once with ``{layer}`` in the names (``_stamp``) and filled
    per layer with one replace and one split; None where that would not be the same (the
    caller then runs ``_recompute_layer``): another op mix, or a fill that merges two names."""
    group = forward[0].group
    for f in forward:
        if f.group != group:
            return None
    key = (group[0], len(forward))
    if key not in stamps:
        stamps[key] = _stamp(trace, group[0], len(forward))
    stamp = stamps[key]
    if stamp is None:
        return None
    joined, distinct, spans, renames = stamp
    names = joined.replace(LAYER, str(layer)).split(_SEP)
    if len(set(names)) != distinct:  # two template names fill to one: compare as filled
        return None
    rgroup = ("recompute", *group[1:])
    out = []
    for f, (a, b, c) in zip(forward, spans, strict=True):
        out.append(POp(f.index, names[a - 1], f.kind, f.phase, f.dtype, f.flops, f.nbytes, f.unit,
                       f.mem, tuple(names[a:b]), tuple(names[b:c]), f.layer, f.iteration,
                       rgroup, True, f.written, f.rows, f.shape))
    r0, r1 = renames
    rename.update(zip(names[r0:r1:2], names[r0 + 1:r1:2], strict=True))
    return out


def _stamp(trace: Trace, block_name: str, count: int) -> tuple | None:
    """A templated block's recompute (``_recompute_layer``'s rules) on its template names:
    (joined strings, how many distinct, per op (name + 1, inputs end, outputs end), the
    rename pairs' span). None unless the block is the layer's whole forward and every name
    that holds ``{layer}`` starts with ``L{layer}.`` and no other names a layer."""
    blocks = [b for b in trace.blocks if b.name == block_name]
    if len(blocks) != 1:
        return None
    block = blocks[0]
    if (not block.templated or block.iterations != 1 or len(block.ops) != count
            or any(op.phase != "forward" for op in block.ops)):
        return None
    prefix = template("")
    ckpt = prefix + "input"
    seen = [ckpt]
    for op in block.ops:
        seen += [op.name, *op.inputs, *_outputs(op, trace)]
    for n in seen:
        if (not n.startswith(prefix) if LAYER in n else layer_of(n) is not None) or _SEP in n:
            return None
    try:
        has_ckpt = _exists(trace, ckpt)
        local: dict[str, str] = {}
        flat: list[str] = [ckpt]
        spans = []
        pairs: dict[str, str] = {}
        for op in block.ops:
            inputs, outputs = _recompute_io(op.inputs, _outputs(op, trace), prefix, ckpt, has_ckpt,
                                            trace, {}, local, recompute_instance("", LAYER), pairs)
            flat.append(recompute_instance(op.name))
            a = len(flat)
            flat.extend(inputs)
            b = len(flat)
            flat.extend(outputs)
            spans.append((a, b, len(flat)))
    except KeyError:  # an unknown tensor: _recompute_layer raises it as it always did
        return None
    r0 = len(flat)
    for t, renamed in pairs.items():
        flat += [t, renamed]
    return _SEP.join(flat), len(set(flat)), spans, (r0, len(flat))


def _renamed(r: POp, name: str, inputs: tuple, outputs: tuple, recompute: bool,
             group: tuple) -> POp:
    """``dataclasses.replace`` of an op before annotation, without its per-call overhead."""
    return POp(r.index, name, r.kind, r.phase, r.dtype, r.flops, r.nbytes, r.unit, r.mem, inputs,
               outputs, r.layer, r.iteration, group, recompute, r.written, r.rows, r.shape)


def _exists(trace: Trace, name: str) -> bool:
    try:
        trace.tensor(name)
    except KeyError:
        return False
    return True


def _cls(trace: Trace, name: str) -> str:
    return trace.tensor(base_name(name)).cls




# -- segments and tensors -------------------------------------------------------------------------


@dataclass(slots=True)
class _Scan:
    """What one pass over the final op list finds: segments and every name's uses."""

    segments: list[Segment]
    last: dict[str, int]  # the last op reading or writing each name
    first_read: dict[str, int]
    producer: dict[str, POp]  # each name's first writer
    read_backward: set[str]  # read by a backward op (a saved activation, if forward-born)
    seg_writes: list[tuple[int, dict[str, int]]]  # per segment: name → its last writer there
    stepping: list[POp]  # optimizer ops


_ONES = {k: (1.0,) * k for k in range(16)}  # the fractions of accesses that all move whole


def _scan(ops: list[POp], whole: bool) -> _Scan:
    """Number the ops (their final order), cut them into segments (runs of equal group), set
    each op's input writers (and its access fractions, all 1, when ``whole``) and collect each
    name's uses for ``_tensors`` and ``_annotate``: one pass where there were four, as Python
    work per op is what building a long program costs."""
    segs: list[Segment] = []
    prev = None
    seg_ops: list[int] = []
    k = -1
    last: dict[str, int] = {}
    first_read: dict[str, int] = {}
    producer: dict[str, POp] = {}
    read_backward: set[str] = set()
    last_writer: dict[str, int] = {}
    get = last_writer.get
    seg_writes: list[tuple[int, dict[str, int]]] = []
    writes: dict[str, int] = {}
    written_seg = -1
    stepping: list[POp] = []
    ones = _ONES
    for i, op in enumerate(ops):
        op.index = i
        group = op.group
        if group is not prev and group != prev:
            prev = group
            k += 1
            seg_ops = []
            segs.append(Segment(k, seg_ops, op.layer))
        op.seg = k
        seg_ops.append(i)
        ins = op.inputs
        op.writers = tuple(map(get, ins))
        for t in ins:
            last[t] = i
            if t not in first_read:
                first_read[t] = i
        if op.phase == "backward":
            read_backward.update(ins)
        if op.kind == "optimizer" or op.phase == "optimizer":
            stepping.append(op)
        outs = op.outputs
        if outs:
            if k != written_seg:
                written_seg = k
                writes = {}
                seg_writes.append((k, writes))
            for t in outs:
                last[t] = i
                last_writer[t] = i
                writes[t] = i
                if t not in producer:
                    producer[t] = op
        if whole:
            op.in_frac = ones.get(len(ins)) or (1.0,) * len(ins)
            op.out_frac = ones.get(len(outs)) or (1.0,) * len(outs)
    return _Scan(segs, last, first_read, producer, read_backward, seg_writes, stepping)


def split_bytes(total: int, fractions: dict[str, float]) -> dict[str, int]:
    """Integer bytes per tier that sum exactly to ``total`` (remainder to the largest share)."""
    items = sorted((t, f) for t, f in fractions.items() if f > 0)
    if not items:
        return {}
    parts = {t: int(total * f) for t, f in items}
    biggest = max(items, key=lambda tf: (tf[1], tf[0]))[0]
    parts[biggest] += total - sum(parts.values())
    return {t: b for t, b in parts.items() if b > 0}


_STATE = frozenset((*PERSISTENT, "grad", "kv"))  # classes that live the whole step


def _tensors(scan: _Scan, trace: Trace, system: System, plan: Plan, fast: str,
             n: int) -> dict[str, TInfo]:
    last, first_read, producer = scan.last, scan.first_read, scan.producer
    read_backward = scan.read_backward
    act_tier = _activation_tier(plan, system, fast)
    out: dict[str, TInfo] = {}
    placed: dict[tuple[int, str], dict[str, int]] = {}
    by_name = trace.tensors
    templates: dict[str, Tensor] = {}  # "rest" of a per-layer name → its template's tensor
    placed_act = trace.kind == "inference" and "activation" in plan.placement
    for name in sorted(last):
        base = base_name(name)
        layer, rest = split_layer(base)  # (``Trace.tensor`` inlined)
        tensor = by_name.get(base)
        if tensor is None:  # a per-layer name: its template's
            tensor = templates.get(rest) if layer is not None else None
            if tensor is None:
                tensor = trace.tensor(base)
                if layer is not None:
                    templates[rest] = tensor
        nbytes = tensor.bytes // n if is_batch_instance(name) else tensor.bytes
        cls = tensor.cls
        writer = producer.get(name)
        born = writer.index if writer is not None else None
        if born is not None and first_read.get(name, born + 1) <= born:
            born = None  # read before (or by) its first writer: it exists from the start
        if cls in _STATE:
            death = None
            hit = placed.get((nbytes, cls))  # every layer's copy of a tensor splits the same way
            if hit is None:
                hit = placed[(nbytes, cls)] = dict(sorted(
                    split_bytes(nbytes, plan.home(cls, fast)).items()))
            info = out[name] = TInfo(name, cls, nbytes, dict(hit), born, death)
            if cls == "kv" and plan.host_kv_bits:  # a host buffer in another dtype
                held = host_kv_homes(hit, fast, trace.meta.get("kv_bits"), plan.host_kv_bits)
                info.footprint = held if held != hit else None
            continue
        death = last[name]
        mem = writer.mem if born is not None else fast
        home = {mem: nbytes}
        saved = writer is not None and writer.phase == "forward" and name in read_backward
        if (cls == "activation" and saved and layer is not None and not is_recomputed(name)
                and plan.policy(layer) == "offload" and act_tier is not None):
            home = split_bytes(nbytes, act_tier)
        elif (placed_act and cls == "activation" and born is not None
              and name in first_read):
            home = split_bytes(nbytes, plan.placement["activation"])
        out[name] = TInfo(name, cls, nbytes, home if len(home) == 1 else dict(sorted(home.items())),
                          born, death)
    return out


def _activation_tier(plan: Plan, system: System, fast: str) -> dict[str, float] | None:
    if plan.activation_tier is not None:
        return {plan.activation_tier: 1.0}
    placed = plan.placement.get("activation")
    if placed and any(t != fast for t in placed):
        return placed
    if plan.activations == "offload" or "offload" in plan.layer_policy.values():
        host = [n for n, t in system.tiers.items() if t.kind == "dram" and n != fast]
        if not host:
            raise SpecError("activations: offload needs activation_tier (no DRAM tier to default to)",
                            file="plan", key="activation_tier")
        return {host[0]: 1.0}
    return None


def _annotate(ops: list[POp], scan: _Scan, tensors: dict[str, TInfo], trace: Trace, *,
              routed: bool = True) -> None:
    """The bytes each access moves, write-backs and deaths per op (``_scan`` set the writers).

    Bytes per access: KV in inference moves the context so far (reads) or the new tokens
    (writes), not the cache's final size. Inference activation buffers are reused by every
    layer and phase under one name, so a version's bytes are what its writer wrote, capped at
    the buffer. Everything else moves whole.
    A write-back happens after the last op of a segment that writes a tensor homed off that
    op's tier, when the version it leaves is still needed: persistent state, gradients and KV
    while they live; activations only when a later segment reads that version.
    """
    for op in scan.stepping:
        op.no_fetch = frozenset(t for t in op.inputs
                                if t in op.outputs and tensors[t].cls == "weight")
    if trace.kind == "inference":  # (elsewhere every access moves whole: ``_scan`` said so)
        _fractions(ops, tensors, trace, routed)
    segments = scan.segments
    wb: dict[int, list[str]] = {}
    maybe: list[tuple[int, str]] = []  # activation versions with bytes homed off their writer
    for seg, writes in scan.seg_writes:
        seg_end = segments[seg].ops[-1]
        for t, i in writes.items():
            info = tensors[t]
            act = info.cls in ("activation", "workspace")
            if not act and info.death is not None and info.death <= seg_end:
                continue
            home = info.home  # bytes homed off the writer's tier? (any(tier != mem), unrolled)
            if len(home) > 1 or (home and ops[i].mem not in home):
                if act:
                    maybe.append((i, t))
                else:
                    wb.setdefault(i, []).append(t)
    if maybe:  # such a version is written back only if a later segment reads it
        names = {t for _, t in maybe}
        seg_of = [op.seg for op in ops]
        escaped = {(w, t) for op in ops for t, w in zip(op.inputs, op.writers)  # noqa: B905
                   if w is not None and t in names and seg_of[w] != op.seg}
        for i, t in maybe:
            if (i, t) in escaped:
                wb.setdefault(i, []).append(t)
    dies: dict[int, list[str]] = {}
    for t, info in tensors.items():
        if info.death is not None:
            dies.setdefault(info.death, []).append(t)
    for i, names in wb.items():
        ops[i].writeback = tuple(sorted(names))
    for i, names in dies.items():
        ops[i].dies = tuple(sorted(names))


def _fractions(ops: list[POp], tensors: dict[str, TInfo], trace: Trace, routed: bool = True,
               only: list[POp] | None = None) -> None:
    """Each inference op's ``in_frac`` and ``out_frac`` (see ``_annotate``); ``routed``: a pass
    reads only the routed experts its tokens pick (Plan.expert_fetch); ``only``: these of
    ``ops`` alone (the rest as they are)."""
    meta = trace.meta
    prompt, gen = meta.get("prompt_len"), meta.get("gen_len")
    total_ctx = (prompt + gen) if (prompt and gen) else None
    chunk = meta.get("prefill_chunk") or prompt  # chunked prefill: one chunk per iteration
    kv = {t for t, info in tensors.items() if info.cls == "kv"} if total_ctx else set()
    sized = {t for t, info in tensors.items() if info.cls in ("activation", "workspace")}
    # routed experts (memsim.workloads.moe): a pass reads the experts its tokens route to
    experts_meta = (meta.get("routed_experts") or {}) if routed else {}
    expert_frac = experts_meta.get("read_fraction") or {}
    suffix = "." + experts_meta.get("tensor", "experts")
    experts = {t for t, info in tensors.items() if info.cls == "weight" and t.endswith(suffix)
               } if expert_frac else set()
    written = [op.written for op in ops]
    size = {t: info.bytes for t, info in tensors.items()}
    # per name tuple (shared by every iteration of a template op): the positions that do not
    # move whole, as (position, is KV, size); None when every position moves whole
    kinds_of: dict[tuple, tuple | None] = {}
    kinds_get = kinds_of.get
    ctx_cache: dict[tuple, float] = {}
    # a window of decode iterations starting later in the context (memsim/sim/fold.py)
    decode_prompt = (prompt or 0) + int(meta.get("decode_from") or 0)
    ones = _ONES
    missing = ()

    def kinds(names: tuple[str, ...]) -> tuple | None:
        k = tuple((pos, "expert" if t in experts else t in kv, size[t]) for pos, t in enumerate(names)
                  if t in kv or t in experts or (t in sized and size[t]))
        kinds_of[names] = k = k or None
        return k

    sel = meta.get("kv_select")  # kept and fetched KV (memsim.sim.kv_select)

    def ctx(op: POp, reading: bool) -> float:
        key = ((op.phase, op.iteration, reading) if sel is None else
               (op.phase, op.iteration, reading, ".attention" in op.name, op.layer))
        f = ctx_cache.get(key)
        if f is None:
            first = decode_prompt if op.phase == "decode" else prompt
            if sel is not None:
                from memsim.sim.kv_select import ctx_frac

                f = ctx_cache[key] = ctx_frac(sel, op, first, reading)
            else:
                f = ctx_cache[key] = _ctx_frac(True, op, total_ctx, first, reading, chunk)
        return f

    for op in ops if only is None else only:
        ins, outs = op.inputs, op.outputs
        kin = kinds_get(ins, missing)
        if kin is missing:
            kin = kinds(ins)
        kout = kinds_get(outs, missing)
        if kout is missing:
            kout = kinds(outs)
        if kin is None:
            op.in_frac = ones.get(len(ins)) or (1.0,) * len(ins)
        else:  # (x if x < 1.0 else 1.0 is min(1.0, x))
            fin = [1.0] * len(ins)
            writers = op.writers
            for pos, is_kv, nbytes in kin:
                if is_kv == "expert":
                    fin[pos] = min(1.0, expert_frac.get(op.phase, 1.0))
                elif is_kv:
                    fin[pos] = ctx(op, True)
                else:
                    w = writers[pos]
                    if w is not None:
                        x = written[w] / nbytes
                        fin[pos] = x if x < 1.0 else 1.0
            op.in_frac = tuple(fin)
        if kout is None:
            op.out_frac = ones.get(len(outs)) or (1.0,) * len(outs)
        else:
            fout = [1.0] * len(outs)
            for pos, is_kv, nbytes in kout:
                if is_kv:
                    fout[pos] = ctx(op, False)
                else:
                    x = op.written / nbytes
                    fout[pos] = x if x < 1.0 else 1.0
            op.out_frac = tuple(fout)


def _ctx_frac(is_kv: bool, op: POp, total_ctx: int | None, prompt: int | None,
              reading: bool, chunk: int | None = None) -> float:
    """KV bytes an inference op touches: the context so far, not the cache's final size.
    Prefill chunk i (its block's iteration) reads the (i+1) chunks so far and writes its own."""
    if not is_kv or total_ctx is None:
        return 1.0
    if op.phase == "prefill":
        chunk = chunk or prompt
        return min(1.0, (op.iteration + 1) * chunk / total_ctx) if reading else chunk / total_ctx
    if op.phase == "decode":
        ctx = prompt + op.iteration + 1
        return min(1.0, ctx / total_ctx) if reading else 1.0 / total_ctx
    return 1.0
