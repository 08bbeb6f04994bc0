"""Small hand-sized Traces that follow the workload conventions, for tests and the benchmark.

They are not models: sizes and FLOPs are parameters, so a test can make a case whose time and
bytes are checkable by hand (and hypothesis can draw random ones).
"""

from __future__ import annotations

from memsim.workloads.trace import Block, Op, Requests, Tensor, TokenCosts, Trace

L = "L{layer}."


def training_trace(layers: int = 4, weight: int = 1 << 30, optim: int = 6 << 30,
                   act: int = 1 << 28, saved: int = 1 << 29, flops: float = 1e13,
                   tokens: int = 4096, name: str = "synthetic-train") -> Trace:
    """Per layer: norm (keeps the input checkpoint), one matmul, a residual; backward and an
    Adam op per layer, in the block order of ``memsim.workloads.training``."""
    t = {n: Tensor(n, b, c, d) for n, b, c, d in [
        ("tokens", 4 * tokens, "activation", "int32"), ("hidden", act, "activation", "bf16"),
        ("grad_hidden", act, "workspace", "bf16"),
        (L + "weight", weight, "weight", "bf16"), (L + "grad", weight, "grad", "bf16"),
        (L + "optim", optim, "optimizer", "fp32"), (L + "input", act, "activation", "bf16"),
        (L + "saved", saved, "activation", "bf16"), (L + "out", act, "workspace", "bf16")]}
    fwd = [
        Op(L + "norm", "elementwise", "forward", 0.0, act, act + saved, ("hidden",),
           (L + "input", L + "saved")),
        Op(L + "mm", "matmul", "forward", flops, weight + saved, act, (L + "saved", L + "weight"),
           (L + "out",)),
        Op(L + "residual", "elementwise", "forward", 0.0, 2 * act, act, ("hidden", L + "out"),
           ("hidden",)),
    ]
    bwd = [
        Op(L + "mm_bwd", "matmul", "backward", 2 * flops, weight + saved + act, weight + act,
           ("grad_hidden", L + "saved", L + "weight"), ("grad_hidden", L + "grad")),
        Op(L + "norm_bwd", "elementwise", "backward", 0.0, 2 * act, act,
           ("grad_hidden", L + "input"), ("grad_hidden",)),
    ]
    opt = [Op(L + "adam", "optimizer", "optimizer", 12.0 * weight / 2, optim + weight, optim + weight,
              (L + "grad", L + "optim", L + "weight"), (L + "weight", L + "optim"), dtype="fp32")]
    blocks = [
        Block("embed", [Op("embed", "embedding", "forward", 0.0, act, act, ("tokens",), ("hidden",))]),
        Block("forward", fwd, repeat=layers),
        Block("head", [Op("loss", "loss", "forward", 0.0, act, act, ("hidden",), ("grad_hidden",))]),
        Block("backward", bwd, repeat=layers, first_layer=layers - 1, step=-1),
        Block("optimizer", opt, repeat=layers),
    ]
    meta = {"kind": "training", "layers": layers, "dtype": "bf16", "tokens_per_step": tokens,
            "flops_per_step": 3 * flops * layers, "data_parallel": 1}
    return Trace(name, "training", t, blocks, meta)


def inference_trace(layers: int = 4, weight: int = 1 << 30, kv: int = 1 << 28, act: int = 1 << 24,
                    flops: float = 1e12, batch: int = 8, prompt: int = 512, gen: int = 4,
                    name: str = "synthetic-infer") -> Trace:
    """Prefill then ``gen - 1`` decode iterations; each layer's attention writes and reads its KV."""
    t = {n: Tensor(n, b, c) for n, b, c in [
        ("hidden", act, "activation"), (L + "weight", weight, "weight"), (L + "kv", kv, "kv"),
        (L + "h", act, "workspace")]}

    def layer(phase: str, scale: float) -> list[Op]:
        return [
            Op(L + "attn", "attention", phase, flops * scale * 0.2, kv + act, act,
               ("hidden", L + "kv", L + "weight"), (L + "kv", L + "h")),
            Op(L + "mlp", "matmul", phase, flops * scale, weight + act, act,
               (L + "h", L + "weight"), ("hidden",)),
        ]

    blocks = [
        Block("embed", [Op("embed", "embedding", "prefill", 0.0, act, act, (), ("hidden",))]),
        Block("prefill", layer("prefill", prompt), repeat=layers),
        Block("decode", layer("decode", 1), repeat=layers, iterations=gen - 1),
    ]
    meta = {"kind": "inference", "layers": layers, "dtype": "bf16", "batch_size": batch,
            "prompt_len": prompt, "gen_len": gen, "tokens_per_step": batch * gen,
            "flops_per_step": flops * (prompt + gen - 1) * layers * 1.2, "data_parallel": 1}
    return Trace(name, "inference", t, blocks, meta)


def serving_trace(n: int = 100, rate_per_s: float = 10.0, prompt: int = 512, output: int = 64,
                  layers: int = 32, hidden: int = 4096, kv_heads: int = 8, head_dim: int = 128,
                  params: float = 7e9, seed: int = 0, name: str = "synthetic-serve") -> Trace:
    """Poisson arrivals (seeded), fixed lengths jittered ±50%; token costs of a dense model."""
    import random

    rng = random.Random(seed)
    arrivals, t = [], 0.0
    prompts, outputs = [], []
    for _ in range(n):
        t += rng.expovariate(rate_per_s)
        arrivals.append(t)
        prompts.append(max(1, int(prompt * rng.uniform(0.5, 1.5))))
        outputs.append(max(1, int(output * rng.uniform(0.5, 1.5))))
    costs = TokenCosts(weight_bytes=int(2 * params), flops_per_token=2 * params,
                       attn_flops_per_token_ctx=4.0 * layers * hidden,
                       kv_bytes_per_token=2 * layers * kv_heads * head_dim * 2,
                       activation_bytes_per_token=2 * hidden * 2 * 4, layers=layers)
    from dataclasses import asdict

    tensors = {L + "weight": Tensor(L + "weight", int(2 * params) // layers, "weight")}
    blocks = [Block("decode", [Op(L + "step", "matmul", "decode", 2 * params / layers,
                                  int(2 * params) // layers, 0, (L + "weight",), ())], repeat=layers)]
    meta = {"kind": "serving", "layers": layers, "dtype": "bf16", "params": params,
            "token_costs": asdict(costs), "data_parallel": 1,
            "tokens_per_step": sum(outputs), "flops_per_step": 2 * params * (sum(prompts) + sum(outputs))}
    return Trace(name, "serving", tensors, blocks, meta, Requests(arrivals, prompts, outputs))
