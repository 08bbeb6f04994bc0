"""Small example factories for ``memsim trace`` (and the tracer's tests).

Each factory takes only keyword arguments with defaults, so ``memsim trace
memsim.workloads.torch_examples:tiny_gpt --input 2x128:int64`` works as is. The GPT block uses
``scaled_dot_product_attention``, as modern decoder implementations do; ``gpt`` with Llama-2-70B's
shape (``gpt_70b``) shows a 70B model tracing without real memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class DecoderBlock(nn.Module):
    """Pre-norm decoder layer: causal SDPA attention with grouped KV heads, SwiGLU MLP."""

    def __init__(self, d_model: int, heads: int, kv_heads: int, ffn: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, d_model // heads
        self.attn_norm, self.mlp_norm = RMSNorm(d_model), RMSNorm(d_model)
        self.wq = nn.Linear(d_model, d_model, bias=False)
        self.wkv = nn.Linear(d_model, 2 * kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(d_model, d_model, bias=False)
        self.w_gate_up = nn.Linear(d_model, 2 * ffn, bias=False)
        self.w_down = nn.Linear(ffn, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        h = self.attn_norm(x)
        q = self.wq(h).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.wkv(h).view(b, s, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.wo(a.transpose(1, 2).reshape(b, s, -1))
        gate, up = self.w_gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.w_down(F.silu(gate) * up)


class GPT(nn.Module):
    """Token embedding, ``layers`` decoder blocks, final norm, untied LM head. Input ``BxS:int64``."""

    def __init__(self, vocab: int, d_model: int, layers: int, heads: int, kv_heads: int, ffn: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.blocks = nn.ModuleList(DecoderBlock(d_model, heads, kv_heads, ffn) for _ in range(layers))
        self.norm = RMSNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def gpt(vocab: int = 512, d_model: int = 128, layers: int = 2, heads: int = 4, kv_heads: int = 4,
        ffn: int = 344) -> nn.Module:
    """A GPT-style decoder of any size (defaults: a tiny one)."""
    if d_model % heads or heads % kv_heads:
        raise ValueError(f"heads ({heads}) must divide d_model ({d_model}) and kv_heads ({kv_heads}) "
                         f"must divide heads")
    return GPT(vocab, d_model, layers, heads, kv_heads, ffn)


def tiny_gpt() -> nn.Module:
    """Two layers, d_model 128, vocab 512: traces in well under a second."""
    return gpt()


def gpt_70b() -> nn.Module:
    """Llama-2-70B's shape (vocab 32000, d_model 8192, 80 layers, 64 heads, 8 KV heads, FFN 28672;
    Touvron et al. 2023, Table 1 and the HF config): 69.0e9 parameters, only on the meta device."""
    return gpt(vocab=32000, d_model=8192, layers=80, heads=64, kv_heads=8, ffn=28672)


def linear_stack(layers: int = 32, d_in: int = 4096, d_out: int = 4096 * 14) -> nn.Module:
    """``layers`` independent Linear(d_in, d_out), summed: 7.5e9 parameters with the defaults."""
    return _LinearStack(layers, d_in, d_out)


class _LinearStack(nn.Module):
    def __init__(self, layers: int, d_in: int, d_out: int):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(d_in, d_out, bias=False) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(layer(x) for layer in self.linears)
