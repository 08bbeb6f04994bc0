"""Training step → Trace: forward, loss, backward, optimizer, with ZeRO sharding and its comms.

Tensor naming (the planner and simulator rely on it):

* per layer ``L{layer}.weight`` / ``.grad`` / ``.optim`` — this rank's bytes of the layer's
  parameters (training dtype; ÷Nd under ZeRO-3), gradients (÷Nd under stage ≥ 2) and optimizer
  states (fp32 master + states; ÷Nd under stage ≥ 1); plain ``embed.*`` and ``head.*`` likewise.
* ``L{layer}.input`` — the layer's input hidden states, kept for backward: the checkpoint under
  recompute. A template can only name its own layer, so the residual stream between layers is the
  plain activation ``hidden`` (the final hidden state, kept for the final norm's backward), and a
  layer's first op (its input norm) reads ``hidden`` and keeps ``L{layer}.input``.
* ``L{layer}.saved_attn``, ``.saved_scores`` (without flash attention), ``.saved_mlp`` — every
  other tensor saved for backward (accounting.layer_activations).
* workspace: ``L{layer}.attn_out`` / ``.mlp_out`` (forward transients), ``L{layer}.grad_act``
  (the layer's largest intermediate gradient), ``grad_hidden`` (the residual-stream gradient),
  and under ZeRO with Nd > 1: ``L{layer}.gathered`` / ``.gathered_bwd`` (ZeRO-3 all-gathered
  full weights, forward and backward separately so neither outlives its pass) and
  ``L{layer}.grad_full`` (stage ≥ 2: full gradients before the reduce-scatter).

With ``grad_accum`` > 1 the embed … embed_backward blocks repeat once per micro-batch (same tensor
names, so activations are allocated once and reused); the gradient all-reduce of stages 0–1 runs
on the last micro-batch only, the reduce-scatter of stage ≥ 2 on each. Backward FLOPs are 2× the
forward matmul FLOPs (dX and dW); a frozen LoRA base computes dX only (1×). Flash-attention
backward is 2.5× its forward (it recomputes QKᵀ inside the kernel); without flash 2×. The model
FLOPs in ``meta["flops_per_step"]`` count attention backward as 2× (no recompute).
"""

from __future__ import annotations

from dataclasses import replace

from memsim.contracts.names import is_micro_batch, micro_batch
from memsim.errors import SpecError
from memsim.workloads import accounting as acc
from memsim.workloads.builder import L, TraceBuilder, op
from memsim.workloads.kernels import Kernel, head_kernels, layer_kernels
from memsim.workloads.models import LORA_ALIASES, Architecture
from memsim.workloads.parallel import training_layout_summary
from memsim.workloads.spec import Training, Workload
from memsim.workloads.trace import Trace


def lora_targets(arch: Architecture, t: Training, file: str | None) -> tuple[str, ...]:
    """Generic target names (q, k, v, o, gate, up, down); HF names are mapped; unknown → SpecError."""
    if t.lora is None:
        return ()
    allowed = arch.lora_shapes()
    out = []
    for i, name in enumerate(t.lora.targets):
        generic = LORA_ALIASES.get(name, name)
        if generic not in allowed:
            from memsim.errors import did_you_mean
            raise SpecError(f"unknown LoRA target {name!r}{did_you_mean(name, [*allowed, *LORA_ALIASES])}; "
                            f"{arch.name} has {', '.join(allowed)}", file=file,
                            key=f"training.lora.targets.{i}")
        if generic not in out:
            out.append(generic)
    return tuple(out)


class _Group:
    """One parameter group (a layer, the embedding, the head): its per-rank state tensors."""

    def __init__(self, b: TraceBuilder, prefix: str, params: int, trainable: int, t: Training, e: int,
                 gather_extra: int = 0):
        self.prefix, self.nd, self.stage = prefix, t.data_parallel, t.zero_stage
        self.multi = t.data_parallel > 1
        self.e = e
        self.full_w = params * e
        self.full_g = trainable * e
        self.full_o = acc.optimizer_bytes(trainable, t.precision, t.optimizer) if trainable else 0
        self.trainable = trainable
        dtype = t.precision
        self.weight = b.tensor(prefix + "weight", self._part(self.full_w, 3), "weight", dtype)
        self.grad = self.optim = self.gathered = self.gathered_bwd = self.grad_full = None
        if trainable:
            self.grad = b.tensor(prefix + "grad", self._part(self.full_g, 2), "grad", dtype)
            self.optim = b.tensor(prefix + "optim", self._part(self.full_o, 1), "optimizer", "fp32")
        if self.multi and self.stage == 3:
            # the head's gather also brings a tied embedding (gather_extra bytes)
            self.gathered = b.tensor(prefix + "gathered", self.full_w + gather_extra, "workspace", dtype)
            self.gathered_bwd = b.tensor(prefix + "gathered_bwd", self.full_w + gather_extra, "workspace",
                                         dtype)
        self.gather_bytes = self.full_w + gather_extra
        if self.multi and self.stage >= 2 and trainable:
            self.grad_full = b.tensor(prefix + "grad_full", self.full_g, "workspace", dtype)

    def _part(self, nbytes: int, from_stage: int) -> int:
        return acc.shard(nbytes, self.nd) if self.stage >= from_stage else nbytes

    @property
    def ring(self) -> float:
        """Bytes each rank sends plus receives per byte of a ring all-gather/reduce-scatter."""
        return 2 * (self.nd - 1) / self.nd

    def w(self, backward: bool = False) -> str:
        """The weights compute reads: the gathered copy under ZeRO-3."""
        if self.gathered:
            return self.gathered_bwd if backward else self.gathered
        return self.weight

    def g(self) -> str | None:
        """Where backward writes gradients: the full buffer before a reduce-scatter."""
        return self.grad_full or self.grad

    def gather(self, backward: bool, dtype: str, sources: tuple[str, ...] = ()) -> list:
        if not self.gathered:
            return []
        out = self.gathered_bwd if backward else self.gathered
        return [op(f"{self.prefix}allgather{'_bwd' if backward else ''}", "comm",
                   "backward" if backward else "forward", 0, self.ring * self.gather_bytes, 0,
                   (self.weight, *sources), (out,), dtype=dtype, shape=(self.gather_bytes // self.e,))]

    def reduce(self, last_microbatch: bool, dtype: str) -> list:
        if not (self.multi and self.trainable):
            return []
        if self.grad_full:
            return [op(f"{self.prefix}reduce_scatter", "comm", "backward", 0, self.ring * self.full_g, 0,
                       (self.grad_full,), (self.grad,), dtype=dtype, shape=(self.full_g // self.e,))]
        if not last_microbatch:
            return []
        return [op(f"{self.prefix}allreduce", "comm", "backward", 0, 2 * self.ring * self.full_g, 0,
                   (self.grad,), (self.grad,), dtype=dtype, shape=(self.full_g // self.e,))]

    def step(self, t: Training, name: str) -> list:
        """The optimizer op over this rank's partition, then (stages 1–2) the parameter all-gather."""
        if not self.trainable:
            return []
        part = (lambda x: acc.shard(x, self.nd)) if self.stage >= 1 else (lambda x: x)
        w_bytes = part(self.full_g)  # the trainable weights, in the training dtype (same bytes as grads)
        read = part(self.full_g) + self.optim_bytes + (w_bytes if t.precision == "fp32" else 0)
        written = self.optim_bytes + w_bytes
        n_params = part(self.trainable) if self.stage >= 1 else self.trainable
        flops = acc.optimizer_flops_per_param(t.optimizer) * n_params
        ops = [op(self.prefix + name, "optimizer", "optimizer", flops,
                  read, written, (self.grad, self.optim, self.weight), (self.weight,), dtype="fp32",
                  shape=(n_params,))]
        if self.multi and self.stage in (1, 2):
            ops.append(op(self.prefix + "allgather_params", "comm", "optimizer", 0,
                          self.ring * self.full_w, 0,
                          (self.weight,), (self.weight,), dtype=t.precision, shape=(self.full_w // self.e,)))
        return ops

    @property
    def optim_bytes(self) -> int:
        return acc.shard(self.full_o, self.nd) if self.stage >= 1 else self.full_o


def build_training(w: Workload, arch: Architecture) -> Trace:
    t: Training = w.training
    e = acc.DTYPE_BYTES[t.precision]
    dt = t.precision
    b, s = t.micro_batch, t.seq_len
    m = b * s
    targets = lora_targets(arch, t, w._source)
    parallel = training_layout_summary(arch, t, w._source)
    rank = t.lora.rank if t.lora else 0
    layer_lora = acc.lora_params(arch, rank, list(targets)) if t.lora else 0
    tb = TraceBuilder(w.name, "training", arch.layers)

    layer = _Group(tb, L, arch.layer_params + layer_lora, layer_lora if t.lora else arch.layer_params, t, e)
    embed = _Group(tb, "embed.", arch.embed_params, 0 if t.lora else arch.embed_params, t, e)
    head = _Group(tb, "head.", arch.head_params, 0 if t.lora else arch.head_params, t, e,
                  embed.full_w if arch.tied_embeddings else 0)

    acts = acc.layer_activations(arch, b, s, e, t.flash_attention)
    tb.tensor(L + "input", acts.input, "activation", dt)
    tb.tensor(L + "saved_attn", acts.attn, "activation", dt)
    if acts.scores:
        tb.tensor(L + "saved_scores", acts.scores, "activation", dt)
    tb.tensor(L + "saved_mlp", acts.mlp, "activation", dt)
    hidden = tb.tensor("hidden", m * arch.hidden * e, "activation", dt)
    tb.tensor("head.normed", m * arch.hidden * e, "activation", dt)
    tb.tensor("logits", m * arch.vocab * 4, "activation", "fp32")
    tb.tensor(L + "attn_out", m * arch.hidden * e, "workspace", dt)
    tb.tensor(L + "mlp_out", m * arch.hidden * e, "workspace", dt)
    grad_hidden = tb.tensor("grad_hidden", m * arch.hidden * e, "workspace", dt)

    kernels = layer_kernels(arch, b, s, s, e, e, flash=t.flash_attention, lora_rank=rank,
                            lora_targets=targets)
    widest = max(max(k.read, k.written) for k in kernels if k.kind != "elementwise")
    tb.tensor(L + "grad_act", widest, "workspace", dt)

    fwd = layer.gather(False, dt) + [_forward_op(k, layer, hidden, bool(acts.scores), dt) for k in kernels]
    model_flops = sum(k.flops for k in kernels) * arch.layers
    bwd_ops, bwd_model = _backward_ops(kernels, layer, grad_hidden, bool(acts.scores), t, dt)
    model_flops += bwd_model * arch.layers

    pos = 2 if arch.learned_positions else 1
    embed_ops = [*embed.gather(False, dt), op(
        "embed", "embedding", "forward", m * arch.hidden * (pos - 1), m * arch.hidden * e * pos,
        m * arch.hidden * e, (embed.w(),), (hidden,), dtype=dt, shape=(m * arch.hidden,))]
    head_fwd, head_bwd, head_model = _head_ops(arch, m, e, t, embed, head, hidden, grad_hidden, dt)
    model_flops += head_model
    embed_bwd = [op("embed_bwd", "embedding", "backward", m * arch.hidden, m * arch.hidden * e + embed.full_g,
                    embed.full_g, (grad_hidden,), (embed.g(),), dtype=dt, shape=(m * arch.hidden,))
                 ] if embed.trainable else []

    for micro in range(t.grad_accum):
        last = micro == t.grad_accum - 1
        per_micro = _per_microbatch(tb, micro)
        tb.block("embed", per_micro(embed_ops))
        tb.block("forward", per_micro(fwd), templated=True)
        tb.block("head", per_micro(head_fwd + head_bwd + head.reduce(last, dt)))
        tb.block("backward", per_micro(bwd_ops + layer.reduce(last, dt)), templated=True, backward=True)
        tb.block("embed_backward", per_micro(embed_bwd + embed.reduce(last, dt)))
    opt_name = "sgd" if t.optimizer == "sgd" else "adam"
    tb.block("optimizer", layer.step(t, opt_name), templated=True)
    tb.block("optimizer_embed_head", embed.step(t, opt_name) + head.step(t, opt_name))

    tokens = m * t.grad_accum
    meta = {
        "kind": "training", "model": arch.name, "params": arch.params, "active_params": arch.active_params,
        "trainable_params": arch.layers * layer.trainable + embed.trainable + head.trainable,
        "layers": arch.layers, "dtype": dt, "tokens_per_step": tokens,
        "global_tokens_per_step": tokens * t.data_parallel,
        "flops_per_step": model_flops * t.grad_accum,
        "data_parallel": t.data_parallel, "zero_stage": t.zero_stage, "micro_batch": b, "seq_len": s,
        "parallel": parallel,
        "grad_accum": t.grad_accum, "optimizer": t.optimizer, "flash_attention": t.flash_attention,
        "lora": t.lora.model_dump() if t.lora else None,
        "hints": {"offload_optimizer": t.offload.optimizer, "offload_param": t.offload.param},
        "activation_bytes_per_layer": {"input": acts.input, "attn": acts.attn, "scores": acts.scores,
                                       "mlp": acts.mlp, "total": acts.total},
    }
    trace = tb.trace(meta)
    trace.workload_spec = w  # the layout planner rebuilds it under other layouts (planners/layouts.py)
    meta["per_device_bytes"] = tb.per_device_bytes(trace)
    return trace


def _per_microbatch(tb: TraceBuilder, micro: int):
    """Ops of micro-batch ``micro`` with their workspace tensors renamed ``<name>.mb<micro>``, so a
    gathered weight or a full gradient buffer dies within its own micro-batch (lifetimes follow
    names). Activations keep their names, so per_device_bytes counts them once; the simulator
    gives each micro-batch its own instances of them (``sim.program._micro_batch_instances``),
    so they die within their micro-batch too."""
    if micro == 0:
        return lambda ops: ops
    workspace = [n for n, t in tb.tensors.items() if t.cls == "workspace" and not is_micro_batch(n)]
    rename = {n: micro_batch(n, micro) for n in workspace}
    for old, new in rename.items():
        src = tb.tensors[old]
        tb.tensor(new, src.bytes, "workspace", src.dtype)

    def apply(ops: list) -> list:
        return [replace(o, inputs=tuple(rename.get(n, n) for n in o.inputs),
                        outputs=tuple(rename.get(n, n) for n in o.outputs)) for o in ops]

    return apply


def _forward_op(k: Kernel, g: _Group, hidden: str, scores: bool, dt: str):
    W = g.w()
    io = {
        "attn_norm": ((hidden, W), (L + "input", L + "saved_attn")),
        "qkv": ((L + "saved_attn", W), (L + "saved_attn",)),
        "attention": ((L + "saved_attn",), (L + "saved_attn", *((L + "saved_scores",) if scores else ()))),
        "out_proj": ((L + "saved_attn", W), (L + "attn_out",)),
        "attn_residual": ((hidden, L + "attn_out"), (L + "saved_mlp",)),
        "mlp_norm": ((L + "saved_mlp", W), (L + "saved_mlp",)),
        "router": ((L + "saved_mlp", W), (L + "saved_mlp",)),
        "mlp_up": ((L + "saved_mlp", W), (L + "saved_mlp",)),
        "mlp_act": ((L + "saved_mlp",), (L + "saved_mlp",)),
        "mlp_down": ((L + "saved_mlp", W), (L + "mlp_out",)),
        "mlp_residual": ((L + "saved_mlp", L + "mlp_out"), (hidden,)),
    }[k.key]
    return op(L + k.key, k.kind, "forward", k.flops, k.weight_bytes + k.read, k.written, *io, dtype=dt,
              shape=k.shape)


def _backward_ops(kernels: list[Kernel], g: _Group, grad_hidden: str, scores: bool, t: Training, dt: str):
    """Backward of one layer, in reverse; returns (ops, model FLOPs of the layer's backward)."""
    W, G = g.w(backward=True), g.g()
    act = L + "grad_act"
    saved = {"attn_norm": L + "input", "qkv": L + "saved_attn", "attention": L + "saved_attn",
             "out_proj": L + "saved_attn", "mlp_norm": L + "saved_mlp", "router": L + "saved_mlp",
             "mlp_up": L + "saved_mlp", "mlp_act": L + "saved_mlp", "mlp_down": L + "saved_mlp"}
    grad_in = {"mlp_down": grad_hidden, "out_proj": grad_hidden}  # these read the residual-stream gradient
    grad_out = {"attn_norm": grad_hidden, "mlp_norm": grad_hidden}  # these add into it
    ops, model = list(g.gather(True, dt)), 0.0
    for k in reversed(kernels):
        if k.key in ("attn_residual", "mlp_residual"):
            continue  # a residual's gradient is the identity: no kernel
        trains = g.trainable > 0 and (k.adapter_flops > 0 if t.lora else k.params > 0)
        if k.kind == "matmul":
            base = k.flops - k.adapter_flops
            flops = (2 * base if not t.lora else base) + 2 * k.adapter_flops
            model += flops
        elif k.kind == "attention":
            flops = (2.5 if t.flash_attention else 2.0) * k.flops
            model += 2.0 * k.flops
        else:
            flops = 2 * k.flops
            model += flops
        wgrad = ((k.adapter_params if t.lora else k.params) * acc.DTYPE_BYTES[dt]) if trains else 0
        inputs = [grad_in.get(k.key, act), saved[k.key]]
        if k.key == "attention" and scores:
            inputs.append(L + "saved_scores")
        if k.weight_bytes:
            inputs.append(W)
        outputs = [grad_out.get(k.key, act)]
        if trains and G:
            outputs.append(G)
        read = k.written + k.read + k.weight_bytes  # grad of output, saved input, weights
        ops.append(op(L + k.key + "_bwd", k.kind, "backward", flops, read, k.read + wgrad,
                      tuple(inputs), tuple(outputs), dtype=dt, shape=k.shape))
    return ops, model


def _head_ops(arch: Architecture, m: int, e: int, t: Training, embed: _Group, head: _Group, hidden: str,
              grad_hidden: str, dt: str):
    """Final norm, LM head and loss, forward then backward (the loss is the turn of the step)."""
    norm, lm = head_kernels(arch, m, e, e)
    tied = arch.tied_embeddings
    head_w = head.w()
    lm_w = embed.w() if tied and not head.gathered else head_w
    sources = (embed.weight,) if tied and head.gathered else ()
    lm_grad = embed.g() if tied else head.g()
    fwd = [
        *head.gather(False, dt, sources),
        op("final_norm", "elementwise", "forward", norm.flops, norm.weight_bytes + norm.read, norm.written,
           (hidden, head_w), ("head.normed",), dtype=dt, shape=norm.shape),
        op("lm_head", "matmul", "forward", lm.flops, lm.weight_bytes + lm.read, lm.written,
           ("head.normed", lm_w), ("logits",), dtype=dt, shape=lm.shape),
        op("loss", "loss", "forward", 5 * m * arch.vocab, m * arch.vocab * 4, m * 4, ("logits",), (),
           dtype="fp32", shape=(m * arch.vocab,)),
    ]
    head_w_bwd = head.w(backward=True)
    lm_w_bwd = embed.w() if tied and not head.gathered else head_w_bwd
    trains = not t.lora
    lm_flops = (2 if trains else 1) * lm.flops
    bwd = [
        *head.gather(True, dt, sources),
        op("loss_bwd", "loss", "backward", 2 * m * arch.vocab, m * arch.vocab * 4, m * arch.vocab * 4,
           ("logits",), ("logits",), dtype="fp32", shape=(m * arch.vocab,)),
        op("lm_head_bwd", "matmul", "backward", lm_flops, lm.written + lm.read + lm.weight_bytes,
           lm.read + (lm.weight_bytes if trains else 0), ("logits", "head.normed", lm_w_bwd),
           (grad_hidden, *((lm_grad,) if trains and lm_grad else ())), dtype=dt, shape=lm.shape),
        op("final_norm_bwd", "elementwise", "backward", 2 * norm.flops, 2 * norm.read + norm.weight_bytes,
           norm.read + (norm.weight_bytes if trains else 0), (grad_hidden, hidden, head_w_bwd),
           (grad_hidden, *((head.g(),) if trains and head.g() else ())), dtype=dt, shape=norm.shape),
    ]
    model = norm.flops + lm.flops + 2 * norm.flops + lm_flops
    return fwd, bwd, model
