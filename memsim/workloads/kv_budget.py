"""Which KV is kept and which is fetched, built into an inference Trace.

Two mechanisms, each a rewrite of the dense trace (``inference.kv_budget``, ``inference.kv_prefetch``):

**Token budget** (StreamingLLM, Xiao et al., arXiv 2309.17453: ``sink`` first tokens plus a
``window`` of recent ones; SnapKV, Li et al., arXiv 2404.14469, Scissorhands, Liu et al., arXiv
2305.17118, CAKE, Qin et al., arXiv 2503.12491: a ``budget`` of tokens chosen by attention score,
per layer or per head). A sequence's cache never holds more than ``budget`` tokens (a list:
one budget per layer, as CAKE allocates them):

* ``L{layer}.kv`` is sized for min(prompt + gen, budget) tokens per sequence — the bytes the
  plan homes (HBM or a host tier);
* decode step t attends over min(prompt + t + 1, budget) tokens: attention FLOPs and KV reads
  follow the kept context (the decode op's mean; the engine's per-step fraction, memsim.sim.kv_select);
  with ``keep_generated`` (SnapKV compresses the prompt once) min(prompt, budget) + t + 1;
* a prompt longer than the budget is prefilled whole (attention over the full prompt: SnapKV
  compresses after the layer's prefill), so one layer's full-prompt KV lives for that layer as
  the ``kv_prompt`` buffer; ``kv_compress`` then scores the prompt with its last ``observation``
  queries (2·heads·head_dim FLOPs per query-key pair; none when only sinks and a window are
  kept) and gathers the kept tokens into ``L{layer}.kv``. With per-layer budgets the templated
  ops cost the mean layer's, and each layer's ``L{i}.kv`` has its own size: a layer whose
  budget holds the whole prompt is gathered (copied) all the same.

**Selective fetch** (InfiniGen, Lee et al., OSDI'24, arXiv 2406.19707: partial keys; SpeCache,
Jie et al., arXiv 2503.16163: a low-bit KV copy). The whole cache is homed where the plan puts
KV (DRAM); the GPU keeps ``L{layer}.kv_selector``, a copy of the keys at ``selector_bits`` over
``selector_channels`` of the channels (values too with ``selector_values``). Each decode step and
layer, ``kv_select`` scores every kept token against the query on that copy (2·heads·head_dim·
channels FLOPs per token) and attention reads only the ``top_k`` chosen tokens: the engine
fetches those tokens' KV over the link (read in pieces of one head's or one layer's row, ``per``),
prefetched ``prefetch_depth`` layers ahead as InfiniGen's speculation one layer ahead allows.
"""

from __future__ import annotations

from dataclasses import replace

from memsim.errors import SpecError
from memsim.workloads import accounting as acc
from memsim.workloads.builder import L, op
from memsim.workloads.kernels import layer_kernels
from memsim.workloads.models import Architecture
from memsim.workloads.trace import Tensor, Trace

KV, PROMPT, SELECTOR = L + "kv", "kv_prompt", L + "kv_selector"
META = "kv_select"  # trace.meta key the simulator reads (memsim.sim.kv_select)


def held(prompt: int, ctx: int, cap: int, keep_generated: bool = False) -> int:
    """Tokens a sequence's cache holds at context ``ctx``: at most ``cap``, or (SnapKV) the
    prompt's at most ``cap`` and every generated token besides."""
    return min(prompt, cap) + ctx - prompt if keep_generated else min(ctx, cap)


def mean_kept(prompt: int, gen: int, cap: float, top_k: float | None = None,
              keep_generated: bool = False) -> float:
    """Mean tokens decode attention reads over steps t = 1..gen-1 (context prompt + t + 1):
    what the cache holds (:func:`held`), and at most ``top_k`` of them when a selector picks."""
    steps = range(prompt + 2, prompt + gen + 1) or range(prompt + 1, prompt + 2)
    big = float("inf")
    return sum(min(held(prompt, c, cap, keep_generated), top_k or big) for c in steps) / len(steps)


def _check(inf, arch: Architecture, file: str | None) -> None:
    key = "inference.kv_budget" if inf.kv_budget is not None else "inference.kv_prefetch"
    if set(arch.mixers) != {"attn"}:
        raise SpecError("KV budgets and selective fetch model full-attention layers only",
                        file=file, key=key)
    if inf.kv_quant is not None:
        raise SpecError("kv_quant cannot be combined with kv_budget or kv_prefetch (KIVI's "
                        "residual layout assumes every token is kept)", file=file, key=key)
    if inf.prefill_chunk and inf.prefill_chunk != inf.prompt_len:
        raise SpecError("prefill_chunk cannot be combined with kv_budget or kv_prefetch",
                        file=file, key=key)


def _caps(inf, layers: int, total: int, file: str | None) -> list[int]:
    if inf.kv_budget is None:
        return [total] * layers
    try:
        return inf.kv_budget.caps(layers)
    except ValueError as exc:
        raise SpecError(str(exc), file=file, key="inference.kv_budget.budget") from None


def apply(trace: Trace, arch: Architecture, inf, e: int, dtype: str, file: str | None) -> None:
    """Rewrite the dense inference ``trace`` in place (see the module docstring)."""
    _check(inf, arch, file)
    b, p, g = int(trace.meta["batch_size"]), inf.prompt_len, inf.gen_len
    kv_e = inf.kv_bits / 8
    budget, pref = inf.kv_budget, inf.kv_prefetch
    layers = arch.layers
    caps = _caps(inf, layers, p + g, file)
    keep = budget is not None and budget.keep_generated
    kept = [held(p, p + g, c, keep) for c in caps]  # tokens one sequence holds at the end, per layer
    token_layer = acc.kv_bytes(arch, 1, inf.kv_bits, layers=1)  # K and V of one token, one layer
    compressed = p > min(caps)
    sel_token = 0
    if pref is not None:
        parts = 2 if pref.selector_values else 1
        sel_token = -(-int(parts * arch.kv_dim * pref.selector_channels * pref.selector_bits) // 8)
    mean = round(sum(kept) / layers)  # the templated layer's (what planners read)
    kv = trace.tensors[KV]
    kv.bytes = b * mean * token_layer
    if pref is not None:
        trace.tensors[SELECTOR] = Tensor(SELECTOR, b * mean * sel_token, "kv", "int8")
    if len(set(kept)) > 1:  # per-layer budgets (CAKE): each layer's tensors their own size
        for layer, n in enumerate(kept):
            name = KV.replace("{layer}", str(layer))
            trace.tensors[name] = Tensor(name, b * n * token_layer, "kv", kv.dtype)
            if pref is not None:
                name = SELECTOR.replace("{layer}", str(layer))
                trace.tensors[name] = Tensor(name, b * n * sel_token, "kv", "int8")
    pdb = trace.meta["per_device_bytes"]
    pdb["kv_cache"] = sum(b * n * (token_layer + sel_token) for n in kept)
    if compressed:
        trace.tensors[PROMPT] = Tensor(PROMPT, b * p * token_layer, "activation", kv.dtype)
        pdb["activations"] += b * p * token_layer
    pdb["total"] = sum(v for k, v in pdb.items() if k != "total")

    top_k = pref.top_k if pref is not None else None
    kept_mean = sum(mean_kept(p, g, c, None, keep) for c in caps) / layers
    read_mean = sum(mean_kept(p, g, c, top_k, keep) for c in caps) / layers
    dec = {k.key: k for k in layer_kernels(arch, b, 1, read_mean, e, e, kv_e=kv_e, dequant=True)}
    scored = budget is not None and max(caps) > budget.sink + budget.window  # tokens chosen by score
    gathered = sum(min(p, c) for c in caps) / layers
    for block in trace.blocks:
        if block.name not in ("prefill", "decode"):
            continue
        out = []
        for o in block.ops:
            key = o.name.split(".")[-1]
            if block.name == "prefill" and key == "qkv" and (compressed or pref is not None):
                outs = tuple(PROMPT if t == KV else t for t in o.outputs) if compressed else o.outputs
                if pref is not None and not compressed:  # the selector copy of the prompt's keys
                    outs = (*outs, SELECTOR)
                    o = replace(o, bytes_written=o.bytes_written + b * p * sel_token)
                o = replace(o, outputs=outs)
            elif block.name == "prefill" and key == "attention" and compressed:
                o = replace(o, inputs=tuple(PROMPT if t == KV else t for t in o.inputs))
            elif block.name == "decode" and key == "qkv" and pref is not None:
                o = replace(o, outputs=(*o.outputs, SELECTOR),
                            bytes_written=o.bytes_written + b * sel_token)
            elif block.name == "decode" and key == "attention":
                a = dec["attention"]
                if pref is not None:
                    out.append(_select_op(arch, b, kept_mean, pref, sel_token, e, dtype))
                o = replace(o, flops=a.flops, bytes_read=a.read, shape=a.shape)
            out.append(o)
            if block.name == "prefill" and key == "attention" and compressed:
                out.append(_compress_op(arch, b, p, gathered, token_layer, sel_token,
                                        budget.observation if scored else 0, e, dtype))
        block.ops = out
    trace.meta[META] = {
        "caps": caps, "kept": kept, "top_k": top_k, "prompt": p, "keep_generated": keep,
        "compressed": compressed, "token_layer_bytes": token_layer,
        "selector_token_layer_bytes": sel_token, "decode_kept_mean": kept_mean,
        "decode_read_mean": read_mean,
        "read_bytes": (arch.head_dim if (pref is not None and pref.per == "head") else arch.kv_dim)
        * inf.kv_bits // 8,
        "per": (pref.per if pref is not None else budget.per),
    }
    trace.meta["flops_per_step"] = trace.flops


def _compress_op(arch: Architecture, b: int, p: int, cap: float, token_layer: int, sel_token: int,
                 observation: int, e: int, dtype: str):
    """SnapKV's selection after a layer's prefill: score the prompt's keys with the last
    ``observation`` queries (none for sinks + window only), gather the kept tokens."""
    scores = 2.0 * b * arch.heads * arch.head_dim * min(observation, p) * p
    keys = b * p * arch.kv_dim * e if observation else 0
    outs = (KV, SELECTOR) if sel_token else (KV,)
    moved = int(b * cap * (token_layer + sel_token))
    return op(L + "kv_compress", "attention", "prefill", scores, keys + b * cap * token_layer, moved,
              (PROMPT,), outs, dtype=dtype, shape=(b, arch.heads, max(1, observation), p, arch.head_dim))


def _select_op(arch: Architecture, b: int, ctx: float, pref, sel_token: int, e: int, dtype: str):
    """Score every kept token on the selector copy and pick the top_k (one compare per score)."""
    d = arch.head_dim * pref.selector_channels
    flops = 2.0 * b * arch.heads * d * ctx + b * arch.heads * ctx
    read = b * arch.q_dim * e + b * ctx * sel_token
    return op(L + "kv_select", "attention", "decode", flops, read, b * pref.top_k * 4,
              ("act", SELECTOR), ("act",), dtype=dtype,
              shape=(b, arch.heads, 1, round(ctx), max(1, round(d))))
