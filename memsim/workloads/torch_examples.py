"""Small example factories for ``memsim trace`` (and the tracer's tests).

Each factory takes only keyword arguments with defaults, so ``memsim trace
memsim.workloads.torch_examples:tiny_gpt --input 2x128:int64`` works as is. The GPT block uses
``scaled_dot_product_attention``, as modern decoder implementations do. ``decoder`` builds any
catalog model from its HF config.json (``gpt_70b``: Llama-2-70B) — a 70B model traces without
real memory.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as recompute_in_backward

from memsim.workloads.models import Architecture, load_model


def mlp(d_in: int = 64, hidden: int = 256, d_out: int = 10, depth: int = 3) -> nn.Module:
    """A plain MLP: Linear → GELU, ``depth`` times, then a Linear head. Input ``BxD_IN``."""
    layers: list[nn.Module] = []
    width = d_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.GELU()]
        width = hidden
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


def transformer_block(d_model: int = 128, heads: int = 4, ffn: int = 512) -> nn.Module:
    """torch's own ``TransformerEncoderLayer`` (pre-norm, batch first). Input ``BxSxD`` float."""
    return nn.TransformerEncoderLayer(d_model, heads, ffn, dropout=0.0, batch_first=True,
                                      norm_first=True)


def convnet(channels: int = 16, classes: int = 10) -> nn.Module:
    """A small CNN (conv, batch norm, ReLU, pooling, linear head). Input ``Bx3x32x32``."""
    c = channels
    return nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
        nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), nn.BatchNorm2d(4 * c), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * c, classes))


def resnet(units: str = "3,24,36,3", base: int = 64, classes: int = 1000) -> nn.Module:
    """A bottleneck residual network for ImageNet (input ``Bx3x224x224``), laid out as Chen et
    al.'s own example (dmlc/mxnet-memonger ``example_resnet.py``): every convolution is followed
    by batch norm and a ReLU, a unit is 1x1, 3x3, 1x1 convolutions (the first of a stage strided
    and with a projection shortcut), the four stages have ``units`` residual units of width
    ``base``·2^stage. The ReLUs run in place, as MXNet's memory planner shares their storage.
    The units are one flat list, so each one is a stage for checkpointing
    (``memsim/workloads/stages.py``): the points Chen et al. mark ``mirror_stage``."""
    counts = [int(n) for n in str(units).split(",")]
    if len(counts) != 4 or min(counts) < 1:
        raise ValueError(f"units must be four positive counts such as 3,24,36,3, got {units!r}")
    return _ResNet(counts, base, classes)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class _Bottleneck(nn.Module):
    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn_relu(c_in, width, 1), *_conv_bn_relu(width, width, 3, stride),
                                  *_conv_bn_relu(width, 4 * width, 1))
        self.shortcut = (nn.Sequential(*_conv_bn_relu(c_in, 4 * width, 1, stride))
                         if stride != 1 or c_in != 4 * width else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class _ResNet(nn.Module):
    def __init__(self, counts: list[int], base: int, classes: int):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(3, base, 7, 2), nn.MaxPool2d(3, 2, 1))
        units, c_in = [], base
        for stage, count in enumerate(counts):
            width = base * 2**stage
            for i in range(count):
                units.append(_Bottleneck(c_in, width, 2 if stage and i == 0 else 1))
                c_in = 4 * width
        self.units = nn.ModuleList(units)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for unit in self.units:
            x = unit(x)
        return self.head(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def _norm(arch: Architecture) -> nn.Module:
    return RMSNorm(arch.hidden) if arch.norm == "rms" else nn.LayerNorm(arch.hidden)


def _act(name: str):
    if name in ("relu",):
        return F.relu
    if name.startswith("gelu"):
        return partial(F.gelu, approximate="tanh" if name in ("gelu_new", "gelu_pytorch_tanh") else "none")
    return F.silu


def rotary_tables(seq: int, head_dim: int, dtype: torch.dtype, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of rotary position embedding (Su et al. 2021), built once per forward as HF
    Llama does, half-split layout."""
    even = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
    inv_freq = 1.0 / (10000.0 ** (even / head_dim))
    angles = torch.outer(torch.arange(seq, dtype=torch.float32, device=device), inv_freq)
    angles = torch.cat((angles, angles), -1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1]
    return x * cos + torch.cat((-x[..., d // 2:], x[..., : d // 2]), -1) * sin


class MLP(nn.Module):
    """SwiGLU (gate and up in one matrix, then down) or two matrices with an activation."""

    def __init__(self, arch: Architecture):
        super().__init__()
        h, f, bias = arch.hidden, arch.intermediate, arch.linear_bias
        self.gated, self.act = arch.gated_mlp, _act(arch.activation)
        self.up = nn.Linear(h, 2 * f if self.gated else f, bias=bias)
        self.down = nn.Linear(f, h, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = self.up(x).chunk(2, dim=-1)
            return self.down(self.act(gate) * up)
        return self.down(self.act(self.up(x)))


class MoE(nn.Module):
    """Top-k mixture of experts with tokens split evenly over experts.

    Which token goes to which expert is data the meta device does not have, so dispatch assumes
    the balanced routing MoE training aims for: each expert runs ``tokens × k / experts`` rows.
    FLOPs are then the expected ones; parameters are exactly the real model's.
    """

    def __init__(self, arch: Architecture):
        super().__init__()
        self.k = arch.experts_per_token
        self.router = nn.Linear(arch.hidden, arch.experts, bias=False)
        self.experts = nn.ModuleList(MLP(arch) for _ in range(arch.experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        weights, chosen = self.router(flat).softmax(-1).topk(self.k, dim=-1)
        order = chosen.reshape(-1).argsort()  # (token, slot) pairs grouped by expert
        token = order // self.k
        rows = flat.index_select(0, token)
        n, e = rows.shape[0], len(self.experts)
        sizes = [n // e + (1 if i < n % e else 0) for i in range(e)]  # balanced routing
        out = torch.cat([expert(part) for expert, part in zip(self.experts, rows.split(sizes), strict=True)])
        out = out * weights.reshape(-1)[order].unsqueeze(-1)
        return torch.zeros_like(flat).index_add(0, token, out).view_as(x)


class DecoderBlock(nn.Module):
    """Pre-norm decoder layer: causal SDPA attention (grouped KV heads, rotary or learned
    positions), then the MLP or MoE; dropout where the architecture trains with it."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self.attn_norm, self.mlp_norm = _norm(arch), _norm(arch)
        self.wq = nn.Linear(arch.hidden, arch.q_dim, bias=arch.qkv_bias)
        self.wkv = nn.Linear(arch.hidden, 2 * arch.kv_dim, bias=arch.qkv_bias)
        self.wo = nn.Linear(arch.q_dim, arch.hidden, bias=arch.linear_bias)
        self.mlp = MoE(arch) if arch.is_moe else MLP(arch)
        self.p = 0.1 if arch.dropout else 0.0

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> torch.Tensor:
        a, (b, s, _) = self.arch, x.shape
        h = self.attn_norm(x)
        q = self.wq(h).view(b, s, a.heads, a.head_dim).transpose(1, 2)
        k, v = self.wkv(h).view(b, s, 2, a.kv_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = _rotate(q, *rope), _rotate(k, *rope)
        if a.kv_heads != a.heads:
            k = k.repeat_interleave(a.heads // a.kv_heads, dim=1)
            v = v.repeat_interleave(a.heads // a.kv_heads, dim=1)
        p = self.p if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        x = x + F.dropout(self.wo(o.transpose(1, 2).reshape(b, s, -1)), p, self.training)
        return x + F.dropout(self.mlp(self.mlp_norm(x)), p, self.training)


class Decoder(nn.Module):
    """Token (and learned position) embedding, decoder blocks, final norm, LM head (tied or not).
    Input ``BxS:int64`` token ids. Its parameters are exactly ``Architecture.params``.
    ``checkpoint=True`` recomputes every block in backward (torch.utils.checkpoint)."""

    def __init__(self, arch: Architecture, checkpoint: bool = False):
        super().__init__()
        self.arch, self.checkpoint = arch, checkpoint
        self.embed = nn.Embedding(arch.vocab, arch.hidden)
        self.positions = nn.Embedding(arch.learned_positions, arch.hidden) if arch.learned_positions else None
        self.blocks = nn.ModuleList(DecoderBlock(arch) for _ in range(arch.layers))
        self.norm = _norm(arch)
        self.head = None if arch.tied_embeddings else nn.Linear(arch.hidden, arch.vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        if self.positions is not None:
            offset = self.arch.learned_positions - self.arch.max_positions  # OPT's 2 extra rows
            x = x + self.positions(torch.arange(ids.shape[1], device=ids.device) + offset)
        rope = None if self.positions is not None else rotary_tables(
            ids.shape[1], self.arch.head_dim, x.dtype, ids.device)
        recompute = self.checkpoint and self.training
        for block in self.blocks:
            # activation checkpointing: keep each block's input, recompute the block in backward
            x = recompute_in_backward(block, x, rope, use_reentrant=False) if recompute else block(x, rope)
        x = self.norm(x)
        return self.head(x) if self.head is not None else F.linear(x, self.embed.weight)


def decoder(model: str = "llama-2-7b", layers: int | None = None, checkpoint: bool = False) -> nn.Module:
    """A catalog model (``workloads/models/*.json``) or a HF config.json path, as a torch module;
    ``layers`` overrides the depth (a 2-layer Llama-3-70B traces in a second), ``checkpoint``
    turns on per-block activation checkpointing."""
    arch = load_model(model)
    return Decoder(replace(arch, layers=layers) if layers else arch, checkpoint)


def gpt(vocab: int = 512, d_model: int = 128, layers: int = 2, heads: int = 4, kv_heads: int = 4,
        ffn: int = 344, checkpoint: bool = False) -> nn.Module:
    """A Llama-style decoder of any size (defaults: a tiny one)."""
    if d_model % heads or heads % kv_heads:
        raise ValueError(f"heads ({heads}) must divide d_model ({d_model}) and kv_heads ({kv_heads}) "
                         f"must divide heads")
    return Decoder(Architecture(
        name="gpt", family="llama", hidden=d_model, layers=layers, heads=heads, kv_heads=kv_heads,
        head_dim=d_model // heads, intermediate=ffn, vocab=vocab, max_positions=4096, gated_mlp=True,
        norm="rms", qkv_bias=False, linear_bias=False, tied_embeddings=False, learned_positions=0,
        dropout=False), checkpoint)


def tiny_gpt() -> nn.Module:
    """Two layers, d_model 128, vocab 512: traces in well under a second."""
    return gpt()


def gpt_70b() -> nn.Module:
    """Llama-2-70B from its HF config (68,976,648,192 parameters), only ever on the meta device."""
    return decoder("llama-2-70b")


def linear_stack(layers: int = 32, d_in: int = 4096, d_out: int = 4096 * 14) -> nn.Module:
    """``layers`` independent Linear(d_in, d_out), summed: 7.5e9 parameters with the defaults."""
    return _LinearStack(layers, d_in, d_out)


class _LinearStack(nn.Module):
    def __init__(self, layers: int, d_in: int, d_out: int):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(d_in, d_out, bias=False) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(layer(x) for layer in self.linears)
