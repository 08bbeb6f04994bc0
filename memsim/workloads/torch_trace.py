"""Any real ``nn.Module`` → ``Trace``, without allocating its memory.

The module is built and run on torch's ``meta`` device: every parameter, input and activation has
a shape, a dtype and a storage size but no data, so a 70B-parameter model traces on a laptop. A
``TorchDispatchMode`` sees every aten op that forward (and, when training, backward of a scalar
reduction of the output) runs and records it:

* FLOPs come from torch's own formulas (``torch.utils.flop_counter.flop_registry``), with the same
  decomposition rule ``FlopCounterMode`` applies, so the total equals what ``FlopCounterMode``
  counts for the same module and inputs.
* Tensors are identified by their storage, so a view (``t``, ``view``, ``transpose``) is the same
  tensor as its base and is never counted twice; an op that only makes views moves no bytes and
  is left out. A tensor's bytes are its storage's bytes.
* Bytes read and written are the sums of the ``nbytes`` of the op's input and output tensors.

Tensor classes (lifetimes then follow from op order, by the rules in ``trace.py``):

* ``weight``: parameters, buffers, and any other tensor the module held before forward began;
* ``kv``: a buffer forward stores values into (``copy_``, ``index_copy_``, ``index_put_``: a KV
  cache, an SSM's conv and recurrent state); in-place counters and running statistics stay weights;
* ``grad``: the storages the parameters' ``.grad`` point to after backward;
* ``activation``: the inputs and what forward produces and something reads after the next op
  (saved for backward, residual streams, the module's outputs);
* ``workspace``: temporaries — a forward tensor read by nothing after the op right after its
  producer, and every tensor backward produces other than a parameter gradient.

Attention: on meta, ``scaled_dot_product_attention`` runs its math path (two ``bmm`` and a
softmax), recorded as such; ``attention="flash"`` runs the fused kernel a GPU would instead.

Limits: meta tensors have no values, so data-dependent control flow (``.item()``, boolean
masks, ``nonzero``) cannot be traced; the error names the op that failed.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry
from torch.utils.module_tracker import ModuleTracker

from memsim.errors import SpecError, did_you_mean
from memsim.workloads.trace import Block, Op, Tensor, Trace

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp64": torch.float64, "float64": torch.float64,
    "int64": torch.int64, "long": torch.int64, "int32": torch.int32, "int": torch.int32,
    "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
_SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}

# Queries FlopCounterMode declines (NotImplemented), mirrored so both modes see the same ops.
_METADATA_OPS = {
    torch.ops.aten.sym_is_contiguous.default, torch.ops.aten.is_contiguous.default,
    torch.ops.aten.is_contiguous.memory_format, torch.ops.aten.is_strides_like_format.default,
    torch.ops.aten.is_non_overlapping_and_dense.default, torch.ops.aten.size.default,
    torch.ops.aten.sym_size.default, torch.ops.aten.stride.default,
    torch.ops.aten.sym_stride.default, torch.ops.aten.storage_offset.default,
    torch.ops.aten.sym_storage_offset.default, torch.ops.aten.numel.default,
    torch.ops.aten.sym_numel.default, torch.ops.aten.dim.default, torch.ops.prim.layout.default,
}
_MATMUL = ("mm", "addmm", "bmm", "baddbmm", "linear", "matmul", "_scaled_mm", "conv", "_conv",
           "convolution", "_convolution", "cudnn_convolution", "_slow_conv2d", "mkldnn_convolution")
_ATTENTION = ("_scaled_dot_product_", "_flash_attention", "_efficient_attention", "flex_attention")
_NORM = ("native_layer_norm", "native_batch_norm", "_native_batch_norm", "native_group_norm",
         "_fused_rms_norm", "batch_norm", "layer_norm", "group_norm", "rms_norm")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``bf16``; other dtypes by torch's own name (``int64``, ``bool``)."""
    return _SHORT.get(dtype, str(dtype).removeprefix("torch."))


# -- user input -------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """One positional input of forward: its shape and dtype (``None``: the module's dtype)."""

    shape: tuple[int, ...]
    dtype: torch.dtype | None = None


def parse_input(text: str) -> InputSpec:
    """``"8x512"`` → shape (8, 512); ``"8x512:int64"`` adds a dtype."""
    spec, _, dtype = text.strip().partition(":")
    if not re.fullmatch(r"[1-9][0-9]*(x[1-9][0-9]*)*", spec):
        raise SpecError(f"expected BxS or BxS:dtype (e.g. 8x512 or 8x512:int64), got {text!r}",
                        key="--input")
    if dtype and dtype not in DTYPES:
        raise SpecError(f"unknown dtype {dtype!r} in {text!r}{did_you_mean(dtype, DTYPES)}; "
                        f"expected one of {', '.join(sorted(DTYPES))}", key="--input")
    return InputSpec(tuple(int(d) for d in spec.split("x")), DTYPES[dtype] if dtype else None)


def parse_dtype(text: str | None) -> torch.dtype | None:
    if text is None:
        return None
    if text not in DTYPES or not DTYPES[text].is_floating_point:
        floats = sorted(k for k, v in DTYPES.items() if v.is_floating_point)
        raise SpecError(f"expected a floating dtype ({', '.join(floats)}), got {text!r}"
                        f"{did_you_mean(text, floats)}", key="--dtype")
    return DTYPES[text]


def load_factory(ref: str) -> Callable[[], Any]:
    """``pkg.mod:fn`` or ``path/to/file.py:fn`` → the callable, with a clear error if missing."""
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise SpecError(f"expected MODULE:FACTORY (e.g. my_pkg.models:make_model), got {ref!r}",
                        key="factory")
    module = _import_target(target)
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise SpecError(f"module {target!r} has no attribute {attr!r}{did_you_mean(attr, names)}",
                        key="factory")
    factory = getattr(module, attr)
    if not callable(factory):
        raise SpecError(f"{ref!r} is a {type(factory).__name__}, not a callable", key="factory")
    return factory


def _import_target(target: str) -> Any:
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise SpecError(f"no such file {target!r}", key="factory")
        spec = importlib.util.spec_from_file_location(f"memsim_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise SpecError(f"importing {target!r} raised {type(exc).__name__}: {exc}",
                            key="factory") from None
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        raise SpecError(f"cannot import module {target!r}: {exc}", key="factory") from None
    except Exception as exc:
        raise SpecError(f"importing {target!r} raised {type(exc).__name__}: {exc}",
                        key="factory") from None


def parse_args(items: Sequence[str]) -> dict[str, Any]:
    """``["model=llama-3-8b", "layers=2"]`` → keyword arguments, values read as YAML scalars."""
    kwargs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SpecError(f"expected KEY=VALUE with KEY a Python identifier, got {item!r}", key="--arg")
        kwargs[key] = yaml.safe_load(value) if value else ""
    return kwargs


def _check_kwargs(factory: Callable[..., Any], name: str, kwargs: dict[str, Any]) -> None:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in kwargs:
        if key not in params:
            raise SpecError(f"factory {name!r} takes no argument {key!r}{did_you_mean(key, list(params))}"
                            f"; it takes: {', '.join(params) or 'none'}", key="--arg")


def build_module(factory: Callable[..., Any], name: str, dtype: torch.dtype | None,
                 kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Call the factory with the meta device as default, so no parameter gets real memory."""
    _check_kwargs(factory, name, kwargs or {})
    try:
        with torch.device("meta"):
            module = factory(**(kwargs or {}))
    except Exception as exc:
        raise SpecError(f"factory {name!r} raised {type(exc).__name__}: {exc}", key="factory") from None
    if not isinstance(module, nn.Module):
        raise SpecError(f"factory {name!r} returned a {type(module).__name__}, not a torch.nn.Module",
                        key="factory")
    if any(t.device.type != "meta" for t in (*module.parameters(), *module.buffers())):
        module = module.to("meta")  # the factory placed tensors itself: drop their data
    return module.to(dtype) if dtype is not None else module


# -- recording --------------------------------------------------------------------------------


@dataclass
class _Storage:
    """One storage seen during tracing; the storage object is held so its id stays unique."""

    storage: Any
    nbytes: int
    dtype: torch.dtype
    origin: str  # weight | input | const | op
    name: str = ""
    producer: int | None = None  # index into the recorder's ops
    phase: str = "forward"


@dataclass
class _RawOp:
    aten: str
    scope: str
    phase: str
    flops: int
    bytes_read: int
    bytes_written: int
    inputs: list[int]
    outputs: list[int]
    dtype: torch.dtype | None
    shape: tuple[int, ...] | None


@dataclass
class _Recording:
    storages: dict[int, _Storage] = field(default_factory=dict)
    ops: list[_RawOp] = field(default_factory=list)
    loss_start: int | None = None
    fused_attention: int = 0  # scaled_dot_product_attention calls run as the fused flash kernel


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class _Recorder(TorchDispatchMode):
    """Records every aten op, counting FLOPs exactly as ``FlopCounterMode`` does."""

    def __init__(self, rec: _Recording, tracker: ModuleTracker, root: str,
                 progress: Callable[[int], None] | None = None):
        super().__init__()
        self.rec, self.tracker, self.root, self.progress = rec, tracker, root, progress
        self.phase = "forward"
        self.loss_start: int | None = None  # first op of the scalar reduction backward starts from
        self.failed: str | None = None  # the op that raised, for the error message

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA_OPS or isinstance(func, torch._ops.HigherOrderOperator):
            return NotImplemented
        if func not in flop_registry and func is not torch.ops.prim.device.default:
            with self:  # same rule as FlopCounterMode: count the decomposition's ops instead
                result = func.decompose(*args, **kwargs)
                if result is not NotImplemented:
                    return result
        try:
            out = func(*args, **kwargs)
        except Exception:
            shapes = ", ".join("x".join(map(str, t.shape)) + f":{dtype_name(t.dtype)}"
                               for t in _tensors((args, kwargs)))
            self.failed = self.failed or f"aten.{packet_name(func)} in {self._scope()} on [{shapes}]"
            raise
        packet = func._overloadpacket
        flops = flop_registry[packet](*args, **kwargs, out_val=out) if packet in flop_registry else 0
        self._record(func, args, kwargs, out, int(flops))
        return out

    def _record(self, func, args, kwargs, out, flops: int) -> None:
        ins = _tensors((args, kwargs))
        outs = _tensors(out)
        known = self.rec.storages
        in_keys = _unique(self._see(t) for t in ins)  # before the view test: a view of a const
        if not flops and not func._schema.is_mutable and all(_key(t) in known for t in outs):
            return  # a view or alias: no bytes move, no new tensor
        index = len(self.rec.ops)
        out_keys = []
        for t in outs:
            k = _key(t)
            if k not in known:
                known[k] = _Storage(t.untyped_storage(), t.untyped_storage().nbytes(), t.dtype, "op",
                                    producer=index, phase=self.phase)
            out_keys.append(k)
        dtype = next((t.dtype for t in (*outs, *ins) if t.dtype.is_floating_point), None)
        self.rec.ops.append(_RawOp(
            str(packet_name(func)), self._scope(), self.phase, flops,
            sum(t.nbytes for t in ins), sum(t.nbytes for t in outs), in_keys, _unique(out_keys),
            dtype, kernel_shape(packet_name(func), ins, outs)))
        if self.progress and index % 256 == 0:
            self.progress(index)

    def _see(self, t: torch.Tensor) -> int:
        k = _key(t)
        if k not in self.rec.storages:  # held by the module but neither parameter nor buffer
            self.rec.storages[k] = _Storage(t.untyped_storage(), t.untyped_storage().nbytes(),
                                            t.dtype, "const")
        return k

    def _scope(self) -> str:
        deepest = max(self.tracker.parents, key=lambda n: (n.count("."), n != "Global", n))
        return self.root if deepest == "Global" else deepest


def packet_name(func) -> str:
    """``aten.addmm.default`` → ``addmm``."""
    return func._overloadpacket.__name__


def _tensors(tree: Any) -> list[torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    for leaf in tree_leaves(tree):
        if isinstance(leaf, torch.Tensor):
            seen.setdefault(id(leaf), leaf)
    return list(seen.values())


def _unique(keys) -> list[int]:
    return list(dict.fromkeys(keys))


def op_kind(aten: str) -> str:
    """Map an aten op name to a Trace op kind."""
    if aten.startswith(_ATTENTION):
        return "attention"
    if aten.startswith(_MATMUL):
        return "matmul"
    if aten.startswith(_NORM):
        return "norm"
    if aten.startswith("embedding"):
        return "embedding"
    return "elementwise"


def kernel_shape(aten: str, ins: Sequence[torch.Tensor], outs: Sequence[torch.Tensor]
                 ) -> tuple[int, ...] | None:
    """The kernel's shape per ``Op.shape``: matmul (m, k, n), attention (b, h, q, kv, d), else
    (numel,) of the largest output."""
    dims = [tuple(t.shape) for t in ins]
    if aten in ("mm", "addmm") and len(dims) >= 2:
        a, b = dims[-2], dims[-1]
        return (a[0], a[1], b[1])
    if aten in ("bmm", "baddbmm") and len(dims) >= 2:
        a, b = dims[-2], dims[-1]
        return (a[0] * a[1], a[2], b[2])
    if aten.startswith(_ATTENTION) and "backward" not in aten and len(dims) >= 2:
        q, k = dims[0], dims[1]
        if len(q) == 4 and len(k) == 4:
            return (q[0], q[1], q[2], k[2], q[3])
    if aten in ("convolution", "_convolution") and len(dims) >= 2 and outs:
        w, o = dims[1], tuple(outs[0].shape)
        if len(o) >= 3:
            return (o[0] * math.prod(o[2:]), math.prod(w[1:]), w[0])
    if aten == "convolution_backward" and len(dims) >= 3:
        # (grad_output, input, weight, ...): the forward's (m, k, n), so the backward is costed as
        # its input- and weight-gradient GEMMs by shape (memsim/hardware/gemm.py), as the forward is
        g, w = dims[0], dims[2]
        if len(g) >= 3:
            return (g[0] * math.prod(g[2:]), math.prod(w[1:]), w[0])
    if outs:
        return (max(t.numel() for t in outs),)
    return None


# -- running ----------------------------------------------------------------------------------


def make_inputs(specs: Sequence[InputSpec], dtype: torch.dtype) -> list[torch.Tensor]:
    return [torch.empty(s.shape, dtype=s.dtype or dtype, device="meta") for s in specs]


def output_tensors(out: Any) -> list[torch.Tensor]:
    """The tensors in forward's result: a tensor, or tuples, lists and mappings of them (a HF
    ``ModelOutput`` is a mapping)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for value in out.values() for t in output_tensors(value)]
    if isinstance(out, list | tuple):
        return [t for value in out for t in output_tensors(value)]
    return []


def _scalar_loss(out: Any) -> torch.Tensor:
    """Sum of every floating output that requires grad: the scalar backward starts from."""
    leaves = [t for t in output_tensors(out) if t.is_floating_point() and t.requires_grad]
    if not leaves:
        raise SpecError("--train: forward returned no floating tensor that requires grad",
                        key="--train")
    loss = leaves[0].sum()
    for t in leaves[1:]:
        loss = loss + t.sum()
    return loss


ATTENTION = ("math", "flash")
_SDPA = torch._C._nn.scaled_dot_product_attention


class _FlashAttention(TorchFunctionMode):
    """Run ``F.scaled_dot_product_attention`` as ``aten._scaled_dot_product_flash_attention``.

    On meta, torch picks sdpa's math path (two ``bmm`` and a softmax, the L×S score matrix saved
    for backward); a GPU runs the fused flash kernel, which keeps only the output and a logsumexp
    and recomputes the scores in backward. Calls the flash kernel cannot take (an explicit mask,
    unequal head dims, unequal head counts) keep the math path.

    The mode sees calls made from module code; calls from inside other Python-level torch functions
    (``F.multi_head_attention_forward``, where modes are off) reach it through ``flash_attention``,
    which also swaps ``F.scaled_dot_product_attention`` for the duration.
    """

    def __init__(self, rec: _Recording | None):
        super().__init__()
        self.rec = rec

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _SDPA:
            out = self._flash(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)

    def _flash(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False) -> torch.Tensor | None:
        if attn_mask is not None or not q.dim() == k.dim() == v.dim() == 4:
            return None
        if not q.shape[-1] == k.shape[-1] == v.shape[-1] or not q.shape[1] == k.shape[1] == v.shape[1]:
            return None
        if self.rec is not None:
            self.rec.fused_attention += 1
        return torch.ops.aten._scaled_dot_product_flash_attention(
            q, k, v, dropout_p, is_causal, False, scale=scale)[0]


@contextmanager
def flash_attention(rec: _Recording | None) -> Iterator[None]:
    """``_FlashAttention`` active, and ``F.scaled_dot_product_attention`` routed through it.

    Patches a module attribute, so two traces must not run at once in one process."""
    mode = _FlashAttention(rec)

    def sdpa(*args, **kwargs):
        out = mode._flash(*args, **kwargs)
        return out if out is not None else _SDPA(*args, **kwargs)

    F.scaled_dot_product_attention = sdpa
    try:
        with mode:
            yield
    finally:
        F.scaled_dot_product_attention = _SDPA


def run_module(module: nn.Module, inputs: Sequence[torch.Tensor], train: bool,
               mode: TorchDispatchMode | None = None, attention: str = "math") -> Any:
    """Forward (and backward of ``_scalar_loss`` when training) on meta.

    Shared by the tracer and by tests that count with ``FlopCounterMode``, so both run the very
    same ops. A recorder's phase flips to backward between the two passes. ``attention="flash"``
    runs ``scaled_dot_product_attention`` as the fused kernel (see ``_FlashAttention``).
    """
    if attention not in ATTENTION:
        raise SpecError(f"expected one of {', '.join(ATTENTION)}, got {attention!r}"
                        f"{did_you_mean(attention, ATTENTION)}", key="--attention")
    module.train(train)
    recorder = mode if isinstance(mode, _Recorder) else None
    fused = flash_attention(recorder.rec if recorder else None) if attention == "flash" else nullcontext()
    with torch.device("meta"), torch.set_grad_enabled(train), fused:
        out = module(*inputs)
        if train:
            if recorder:
                recorder.loss_start = len(recorder.rec.ops)
            loss = _scalar_loss(out)
            if recorder:
                recorder.phase = "backward"
            loss.backward()
    return out


def record(module: nn.Module, inputs: Sequence[torch.Tensor], train: bool,
           progress: Callable[[int], None] | None = None, attention: str = "math"
           ) -> tuple[_Recording, Any]:
    rec = _Recording()
    for name, t in (*_named_unique(module.named_parameters()), *_named_unique(module.named_buffers())):
        rec.storages.setdefault(_key(t), _Storage(t.untyped_storage(), t.untyped_storage().nbytes(),
                                                  t.dtype, "weight", name=name))
    for i, t in enumerate(inputs):
        rec.storages.setdefault(_key(t), _Storage(t.untyped_storage(), t.untyped_storage().nbytes(),
                                                  t.dtype, "input", name=f"input{i}"))
    tracker = ModuleTracker()
    recorder = _Recorder(rec, tracker, type(module).__name__, progress)
    try:
        with tracker, recorder:
            out = run_module(module, inputs, train, recorder, attention)
    except SpecError:
        raise
    except Exception as exc:
        where = f" at {recorder.failed}" if recorder.failed else f" after {len(rec.ops)} ops"
        shapes = ", ".join("x".join(map(str, t.shape)) + f":{dtype_name(t.dtype)}" for t in inputs)
        first = str(exc).splitlines()[0] if str(exc) else ""
        if isinstance(exc, NotImplementedError | RuntimeError) and "meta" in str(exc):
            first += " (ops that need tensor values — .item(), nonzero, boolean masks — cannot run on meta)"
        raise SpecError(f"{recorder.phase} failed{where} for inputs [{shapes}]: "
                        f"{type(exc).__name__}: {first}", key="--input") from None
    rec.loss_start = recorder.loss_start
    return rec, out


def _named_unique(named) -> list[tuple[str, torch.Tensor]]:
    return [(n, t) for n, t in named if t is not None]


# -- Trace ------------------------------------------------------------------------------------


def to_trace(rec: _Recording, module: nn.Module, inputs: Sequence[InputSpec], outputs: Any,
             train: bool, name: str, dtype: torch.dtype, attention: str = "math") -> Trace:
    """Name every storage and op, classify tensors, and assemble the Trace with its meta."""
    # scope:aten:index — no "#" or "@", which the simulator uses to suffix tensor instances
    op_names = [f"{op.scope}:{op.aten}:{i}" for i, op in enumerate(rec.ops)]
    _name_storages(rec, module, op_names)
    classes = _classify(rec, {_key(t) for t in output_tensors(outputs)})
    tensors = {s.name: Tensor(s.name, s.nbytes, classes[k], dtype_name(s.dtype))
               for k, s in rec.storages.items()}
    ops = [Op(op_names[i], _kind(rec, i), op.phase, float(op.flops), op.bytes_read, op.bytes_written,
              tuple(rec.storages[k].name for k in op.inputs),
              tuple(rec.storages[k].name for k in op.outputs),
              dtype=dtype_name(op.dtype or dtype), shape=op.shape) for i, op in enumerate(rec.ops)]
    blocks = [Block("forward", [op for op in ops if op.phase == "forward"])]
    if train:
        blocks.append(Block("backward", [op for op in ops if op.phase == "backward"]))
    trace = Trace(name, "module", tensors, blocks)
    trace.meta = _meta(trace, module, inputs, train, dtype)
    trace.meta["attention"] = attention
    trace.meta["fused_attention_calls"] = rec.fused_attention
    return trace


def _name_storages(rec: _Recording, module: nn.Module, op_names: list[str]) -> None:
    grads = {_key(p.grad): f"{n}.grad" for n, p in module.named_parameters() if p.grad is not None}
    consts = 0
    for k, s in rec.storages.items():
        if k in grads:
            s.name = grads[k]
        elif s.origin == "const":
            s.name, consts = f"const{consts}", consts + 1
        elif s.origin == "op":
            outs = [o for o in rec.ops[s.producer].outputs
                    if rec.storages[o].producer == s.producer]
            base = op_names[s.producer]
            s.name = base if len(outs) == 1 else f"{base}.out{outs.index(k)}"
        s.origin = "grad" if k in grads else s.origin


def _classify(rec: _Recording, outputs: set[int]) -> dict[int, str]:
    """Storage key → tensor class, by the rules in the module docstring."""
    last_read: dict[int, int] = {}
    for i, op in enumerate(rec.ops):
        for k in op.inputs:
            last_read[k] = i
    # state the module holds and its forward stores computed values into (a KV cache, an SSM's
    # conv and recurrent state) is cache, not weights: class kv, as the config path counts it.
    # Counters and running statistics updated in place (batch norm) stay weights.
    written = {k for op in rec.ops if op.phase == "forward" and op.aten in CACHE_WRITES for k in op.outputs}
    classes = {}
    for k, s in rec.storages.items():
        if s.origin == "weight" and k in written:
            classes[k] = "kv"
        elif s.origin in ("weight", "const"):
            classes[k] = "weight"
        elif s.origin == "grad":
            classes[k] = "grad"
        elif s.origin == "input" or k in outputs:
            classes[k] = "activation"
        elif s.phase == "backward" or last_read.get(k, s.producer) <= s.producer + 1:
            classes[k] = "workspace"
        else:
            classes[k] = "activation"
    return classes


CACHE_WRITES = frozenset(("copy_", "index_copy_", "index_copy", "index_put_", "index_put", "scatter_",
                          "slice_scatter", "select_scatter"))  # ops that store values into a tensor


def _kind(rec: _Recording, index: int) -> str:
    if rec.loss_start is not None and rec.ops[index].phase == "forward" and index >= rec.loss_start:
        return "loss"
    return op_kind(rec.ops[index].aten)


def _meta(trace: Trace, module: nn.Module, inputs: Sequence[InputSpec], train: bool,
          dtype: torch.dtype) -> dict:
    by_class = trace.bytes_by_class()
    first = inputs[0].shape if inputs else (1,)
    is_ids = len(first) == 2 and inputs[0].dtype is not None and not inputs[0].dtype.is_floating_point
    peak_act = peak_live_bytes(trace, ("activation", "workspace"))
    per_device = {"weights": by_class["weight"], "gradients": by_class["grad"], "optimizer": 0,
                  "activations": peak_act, "kv_cache": by_class["kv"]}
    per_device["total"] = sum(per_device.values())
    return {
        "source": "torch tracer (meta device, torch.utils.flop_counter FLOPs)",
        "params": sum(p.numel() for p in module.parameters()),
        "flops_per_step": trace.flops,
        "tokens_per_step": first[0] * first[1] if is_ids else first[0],
        "per_device_bytes": per_device,
        "peak_activation_bytes": peak_act,
        "peak_live_bytes": peak_live_bytes(trace),
        "dtype": dtype_name(dtype),
        "train": train,
        "inputs": ["x".join(map(str, s.shape)) + (f":{dtype_name(s.dtype)}" if s.dtype else "")
                   for s in inputs],
        "layers": 1,
    }


def peak_live_bytes(trace: Trace, classes: Sequence[str] | None = None) -> int:
    """Largest sum of bytes alive at one op, over tensors of ``classes`` (all when None)."""
    n = trace.num_ops
    delta = [0] * (n + 1)
    for name, (born, dies) in trace.lifetimes().items():
        t = trace.tensor(name)
        if classes is None or t.cls in classes:
            delta[born] += t.bytes
            delta[dies + 1] -= t.bytes
    peak = live = 0
    for d in delta[:n]:
        live += d
        peak = max(peak, live)
    return peak


def trace_module(module: nn.Module, inputs: Sequence[InputSpec], *, train: bool = False,
                 name: str | None = None, dtype: torch.dtype | None = None, attention: str = "math",
                 progress: Callable[[int], None] | None = None) -> Trace:
    """Trace an already built (meta) module. ``dtype`` is the default for float inputs."""
    dtype = dtype or next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    tensors = make_inputs(inputs, dtype)
    rec, out = record(module, tensors, train, progress, attention)
    return to_trace(rec, module, inputs, out, train, name or type(module).__name__, dtype, attention)


def trace_factory(ref: str, inputs: Sequence[str], *, dtype: str | None = None, train: bool = False,
                  attention: str = "math", args: Sequence[str] = (),
                  progress: Callable[[int], None] | None = None) -> Trace:
    """``memsim trace``'s API: import ``ref``, call it with ``args`` (``KEY=VALUE``) on meta, trace
    forward (and backward)."""
    if not inputs:
        raise SpecError("give at least one --input shape such as 8x512 or 8x512:int64", key="--input")
    specs = [parse_input(text) for text in inputs]
    torch_dtype = parse_dtype(dtype)
    module = build_module(load_factory(ref), ref, torch_dtype, parse_args(args))
    return trace_module(module, specs, train=train, name=ref, dtype=torch_dtype, attention=attention,
                        progress=progress)


def summary(trace: Trace, top: int = 5) -> dict:
    """What ``memsim trace`` prints: counts, FLOPs, peak activation bytes, the heaviest ops."""
    ops = [op for b in trace.blocks for op in b.ops]
    heavy = sorted(ops, key=lambda op: (-op.flops, op.name))[:top]
    return {
        "ops": trace.num_ops, "tensors": trace.num_tensors, "flops": trace.flops,
        "params": trace.meta["params"], "peak_activation_bytes": trace.meta["peak_activation_bytes"],
        "per_device_bytes": trace.meta["per_device_bytes"],
        "top_ops": [{"name": op.name, "kind": op.kind, "phase": op.phase, "flops": op.flops}
                    for op in heavy if op.flops > 0],
    }
