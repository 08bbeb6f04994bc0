"""Small synthetic transformer traces of any size, for planner tests and benchmarks.

They follow the trace conventions of ``memsim.workloads`` (``L{layer}.weight/grad/optim/input/
saved``, blocks embed → forward → head → backward → optimizer; ``L{layer}.kv`` for inference) with
the standard byte accounting: 12h² parameters per layer, bf16 weights and grads, 12 bytes of fp32
master weights + Adam moments per parameter (ZeRO's K = 12), Korthikanti et al. 2022's ≈ 34·s·b·h
activation bytes per layer with flash attention. Growing ``layers`` and ``hidden`` gives the
Checkmate-style family of cases the planner invariants are tested on.
"""

from __future__ import annotations

from memsim.workloads.trace import Block, Op, Tensor, Trace


def training_trace(
    layers: int = 4,
    hidden: int = 1024,
    seq: int = 1024,
    batch: int = 1,
    vocab: int = 32000,
    name: str = "synthetic-train",
) -> Trace:
    h, s, b = hidden, seq, batch
    p_layer = 12 * h * h
    act = b * s * h * 2
    t = {
        "L{layer}.weight": Tensor("L{layer}.weight", 2 * p_layer, "weight"),
        "L{layer}.grad": Tensor("L{layer}.grad", 2 * p_layer, "grad"),
        "L{layer}.optim": Tensor("L{layer}.optim", 12 * p_layer, "optimizer", "fp32"),
        "L{layer}.input": Tensor("L{layer}.input", act, "activation"),
        "L{layer}.saved": Tensor("L{layer}.saved", 33 * act // 2, "activation"),
        "L{layer}.work": Tensor("L{layer}.work", 4 * act, "workspace"),
        "embed.weight": Tensor("embed.weight", 2 * vocab * h, "weight"),
        "embed.grad": Tensor("embed.grad", 2 * vocab * h, "grad"),
        "embed.optim": Tensor("embed.optim", 12 * vocab * h, "optimizer", "fp32"),
        "logits": Tensor("logits", b * s * vocab * 2, "activation"),
    }
    mm = 2 * b * s * p_layer
    attn = 4 * b * s * s * h
    fwd = [
        Op(
            "L{layer}.attn",
            "attention",
            "forward",
            attn,
            4 * act,
            act,
            ("L{layer}.input", "L{layer}.weight"),
            ("L{layer}.work",),
            shape=(b, h // 128, s, s, 128),
        ),
        Op(
            "L{layer}.mlp",
            "matmul",
            "forward",
            mm,
            2 * p_layer + act,
            17 * act,
            ("L{layer}.work", "L{layer}.weight"),
            ("L{layer}.saved",),
            shape=(b * s, h, 12 * h),
        ),
    ]
    bwd = [
        Op(
            "L{layer}.mlp_bwd",
            "matmul",
            "backward",
            2 * mm,
            2 * p_layer + 18 * act,
            act + 2 * p_layer,
            ("L{layer}.saved", "L{layer}.weight"),
            ("L{layer}.grad",),
            shape=(b * s, h, 12 * h),
        ),
        Op(
            "L{layer}.attn_bwd",
            "attention",
            "backward",
            2.5 * attn,
            5 * act,
            act,
            ("L{layer}.input", "L{layer}.grad"),
            ("L{layer}.grad",),
            shape=(b, h // 128, s, s, 128),
        ),
    ]
    head = [
        Op(
            "head",
            "matmul",
            "forward",
            2 * b * s * h * vocab,
            2 * vocab * h + act,
            b * s * vocab * 2,
            ("embed.weight",),
            ("logits",),
            shape=(b * s, h, vocab),
        ),
        Op(
            "head_bwd",
            "matmul",
            "backward",
            4 * b * s * h * vocab,
            2 * vocab * h + b * s * vocab * 2,
            2 * vocab * h,
            ("logits", "embed.weight"),
            ("embed.grad",),
            shape=(b * s, h, vocab),
        ),
    ]
    opt = [
        Op(
            "L{layer}.adam",
            "optimizer",
            "optimizer",
            12 * p_layer,
            16 * p_layer,
            14 * p_layer,
            ("L{layer}.grad", "L{layer}.optim", "L{layer}.weight"),
            ("L{layer}.weight",),
            shape=(p_layer,),
        )
    ]
    blocks = [
        Block("forward", fwd, repeat=layers),
        Block("head", head),
        Block("backward", bwd, repeat=layers, first_layer=layers - 1, step=-1),
        Block("optimizer", opt, repeat=layers),
        Block(
            "embed_optimizer",
            [
                Op(
                    "embed.adam",
                    "optimizer",
                    "optimizer",
                    12 * vocab * h,
                    16 * vocab * h,
                    14 * vocab * h,
                    ("embed.grad", "embed.optim", "embed.weight"),
                    ("embed.weight",),
                )
            ],
        ),
    ]
    params = layers * p_layer + vocab * h
    meta = {
        "kind": "training",
        "model": name,
        "params": params,
        "active_params": params,
        "layers": layers,
        "dtype": "bf16",
        "tokens_per_step": b * s,
        "flops_per_step": 6 * params * b * s,
        "micro_batch": b,
        "seq_len": s,
        "data_parallel": 1,
        "zero_stage": 0,
    }
    return Trace(name, "training", t, blocks, meta)


def inference_trace(
    layers: int = 4,
    hidden: int = 1024,
    batch: int = 8,
    prompt: int = 512,
    gen: int = 32,
    name: str = "synthetic-infer",
) -> Trace:
    h, b = hidden, batch
    p_layer = 12 * h * h
    ctx = prompt + gen
    kv = 2 * b * ctx * h * 2
    mean_ctx = prompt + gen // 2
    t = {
        "L{layer}.weight": Tensor("L{layer}.weight", 2 * p_layer, "weight"),
        "L{layer}.kv": Tensor("L{layer}.kv", kv, "kv"),
        "L{layer}.hidden": Tensor("L{layer}.hidden", b * prompt * h * 2, "activation"),
    }
    prefill = [
        Op(
            "L{layer}.prefill",
            "matmul",
            "prefill",
            2 * b * prompt * p_layer,
            2 * p_layer + 2 * b * prompt * h * 2,
            b * prompt * h * 2 + kv * prompt // ctx,
            ("L{layer}.weight",),
            ("L{layer}.kv", "L{layer}.hidden"),
            shape=(b * prompt, h, 12 * h),
        ),
        Op(
            "L{layer}.prefill_attn",
            "attention",
            "prefill",
            4 * b * prompt * prompt * h,
            b * prompt * h * 6,
            b * prompt * h * 2,
            ("L{layer}.kv", "L{layer}.hidden"),
            (),
            shape=(b, h // 128, prompt, prompt, 128),
        ),
    ]
    decode = [
        Op(
            "L{layer}.decode",
            "matmul",
            "decode",
            2 * b * p_layer,
            2 * p_layer + 4 * b * h,
            2 * b * h,
            ("L{layer}.weight",),
            ("L{layer}.kv",),
            shape=(b, h, 12 * h),
        ),
        Op(
            "L{layer}.decode_attn",
            "attention",
            "decode",
            4 * b * mean_ctx * h,
            kv * mean_ctx // ctx,
            2 * b * h,
            ("L{layer}.kv",),
            (),
            shape=(b, h // 128, 1, mean_ctx, 128),
        ),
    ]
    blocks = [
        Block("prefill", prefill, repeat=layers),
        Block("decode", decode, repeat=layers, iterations=gen - 1),
    ]
    params = layers * p_layer
    meta = {
        "kind": "inference",
        "model": name,
        "params": params,
        "active_params": params,
        "layers": layers,
        "dtype": "bf16",
        "tokens_per_step": b * gen,
        "flops_per_step": 2 * params * b * (prompt + gen),
        "batch_size": b,
        "prompt_len": prompt,
        "gen_len": gen,
        "data_parallel": 1,
    }
    return Trace(name, "inference", t, blocks, meta)


def serving_trace(layers: int = 4, hidden: int = 1024, requests: int = 50, rate: float = 20.0,
                  prompt: int = 256, output: int = 64, seed: int = 0, name: str = "synthetic-serve") -> Trace:
    """A serving trace: Poisson arrivals (seeded) of fixed-length requests, with TokenCosts."""
    import random
    from dataclasses import asdict

    from memsim.workloads.trace import Requests, TokenCosts

    rng = random.Random(seed)
    arrivals, now = [], 0.0
    for _ in range(requests):
        now += rng.expovariate(rate)
        arrivals.append(round(now, 9))
    p_layer = 12 * hidden * hidden
    costs = TokenCosts(weight_bytes=2 * p_layer * layers, flops_per_token=2.0 * p_layer * layers,
                       attn_flops_per_token_ctx=4.0 * hidden * layers, kv_bytes_per_token=4 * hidden * layers,
                       activation_bytes_per_token=16 * hidden, layers=layers)
    t = {"L{layer}.weight": Tensor("L{layer}.weight", 2 * p_layer, "weight")}
    decode = [Op("L{layer}.decode", "matmul", "decode", 2 * p_layer, 2 * p_layer, 2 * hidden,
                 ("L{layer}.weight",), (), shape=(1, hidden, 12 * hidden))]
    meta = {"kind": "serving", "model": name, "params": p_layer * layers, "active_params": p_layer * layers,
            "layers": layers, "dtype": "bf16", "tokens_per_step": requests * output,
            "flops_per_step": 2.0 * p_layer * layers * requests * (prompt + output), "data_parallel": 1,
            "token_costs": asdict(costs)}
    reqs = Requests(arrivals, [prompt] * requests, [output] * requests)
    return Trace(name, "serving", t, [Block("decode", decode, repeat=layers)], meta, reqs)
