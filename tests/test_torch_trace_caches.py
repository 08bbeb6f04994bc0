"""The torch tracer keeps up with the attention kinds: small modules written here (a sliding-window
KV ring, an MLA latent cache, a Mamba step with its conv and SSM states) traced on meta hold the
same cache bytes, as class ``kv``, that the config path (Architecture.kv_seq_bytes) counts."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from memsim.workloads import torch_trace as tt  # noqa: E402
from memsim.workloads.models import parse_config  # noqa: E402

BATCH, POS = 4, 10_000  # decode one token at position 10,000


class SlidingWindowDecode(nn.Module):
    """One decode step of Mistral-style attention over a ring of the last ``window`` K and V."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, window: int):
        super().__init__()
        self.heads, self.kv_heads, self.d, self.window = heads, kv_heads, hidden // heads, window
        self.q = nn.Linear(hidden, heads * self.d, bias=False)
        self.k = nn.Linear(hidden, kv_heads * self.d, bias=False)
        self.v = nn.Linear(hidden, kv_heads * self.d, bias=False)
        self.o = nn.Linear(heads * self.d, hidden, bias=False)
        self.register_buffer("k_cache", torch.zeros(BATCH, kv_heads, window, self.d), persistent=False)
        self.register_buffer("v_cache", torch.zeros(BATCH, kv_heads, window, self.d), persistent=False)

    def forward(self, x):
        b = x.shape[0]
        q = self.q(x).view(b, 1, self.heads, self.d).transpose(1, 2)
        slot = POS % self.window
        self.k_cache[:, :, slot:slot + 1] = self.k(x).view(b, 1, self.kv_heads, self.d).transpose(1, 2)
        self.v_cache[:, :, slot:slot + 1] = self.v(x).view(b, 1, self.kv_heads, self.d).transpose(1, 2)
        rep = self.heads // self.kv_heads
        out = F.scaled_dot_product_attention(q, self.k_cache.repeat_interleave(rep, 1),
                                             self.v_cache.repeat_interleave(rep, 1))
        return self.o(out.transpose(1, 2).reshape(b, 1, -1))


class LatentAttentionDecode(nn.Module):
    """One decode step of DeepSeek's MLA: only the kv_lora_rank latent and the shared rope key are
    cached; per-head keys and values are expanded from the latent."""

    def __init__(self, hidden: int, heads: int, rank: int, rope: int, nope: int, v: int, ctx: int):
        super().__init__()
        self.heads, self.rank, self.rope, self.nope, self.vd = heads, rank, rope, nope, v
        self.q = nn.Linear(hidden, heads * (nope + rope), bias=False)
        self.kv_a = nn.Linear(hidden, rank + rope, bias=False)
        self.kv_b = nn.Linear(rank, heads * (nope + v), bias=False)
        self.o = nn.Linear(heads * v, hidden, bias=False)
        self.register_buffer("latent", torch.zeros(BATCH, ctx, rank + rope), persistent=False)

    def forward(self, x):
        b, h = x.shape[0], self.heads
        self.latent[:, POS:POS + 1] = self.kv_a(x)
        kv = self.kv_b(self.latent[..., :self.rank]).view(b, -1, h, self.nope + self.vd).transpose(1, 2)
        rope_k = self.latent[..., self.rank:].unsqueeze(1).expand(b, h, -1, self.rope)
        keys = torch.cat([kv[..., :self.nope], rope_k], dim=-1)
        q = self.q(x).view(b, 1, h, self.nope + self.rope).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, keys, kv[..., self.nope:])
        return self.o(out.transpose(1, 2).reshape(b, 1, -1))


class MambaDecode(nn.Module):
    """One recurrent step of a Mamba mixer: a rolling conv state and the SSM state, fixed size."""

    def __init__(self, hidden: int, inner: int, state: int, conv: int, rank: int):
        super().__init__()
        self.inner, self.state, self.rank = inner, state, rank
        self.in_proj = nn.Linear(hidden, 2 * inner, bias=False)
        self.conv_w = nn.Parameter(torch.zeros(inner, conv))
        self.x_proj = nn.Linear(inner, rank + 2 * state, bias=False)
        self.dt_proj = nn.Linear(rank, inner)
        self.A_log = nn.Parameter(torch.zeros(inner, state))
        self.out_proj = nn.Linear(inner, hidden, bias=False)
        self.register_buffer("conv_state", torch.zeros(BATCH, inner, conv), persistent=False)
        self.register_buffer("ssm_state", torch.zeros(BATCH, inner, state), persistent=False)

    def forward(self, x):
        xs, z = self.in_proj(x[:, 0]).chunk(2, dim=-1)
        self.conv_state.copy_(torch.roll(self.conv_state, -1, -1))
        self.conv_state[:, :, -1] = xs
        xs = F.silu((self.conv_state * self.conv_w).sum(-1))
        dt, B, C = self.x_proj(xs).split([self.rank, self.state, self.state], dim=-1)
        dt = F.softplus(self.dt_proj(dt)).unsqueeze(-1)
        self.ssm_state.copy_(self.ssm_state * torch.exp(dt * -torch.exp(self.A_log))
                             + dt * B.unsqueeze(1) * xs.unsqueeze(-1))
        y = (self.ssm_state * C.unsqueeze(1)).sum(-1) * F.silu(z)
        return self.out_proj(y).unsqueeze(1)


def _trace(module: nn.Module, hidden: int):
    with torch.device("meta"):
        module = module.to(torch.bfloat16)
    return tt.trace_module(module, [tt.parse_input(f"{BATCH}x1x{hidden}")], dtype=torch.bfloat16)


def _kv(trace) -> int:
    return sum(t.bytes for t in trace.tensors.values() if t.cls == "kv")


def test_sliding_window_ring_equals_the_config_path():
    with torch.device("meta"):
        module = SlidingWindowDecode(512, 8, 2, window=256)
    trace = _trace(module, 512)
    arch = parse_config({"model_type": "mistral", "hidden_size": 512, "num_hidden_layers": 1,
                         "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 1024,
                         "vocab_size": 1000, "sliding_window": 256}, name="tiny-swa")
    assert _kv(trace) == BATCH * arch.kv_seq_bytes(POS + 1) == BATCH * 2 * 2 * 64 * 256 * 2
    assert trace.meta["per_device_bytes"]["kv_cache"] == _kv(trace)
    assert trace.meta["per_device_bytes"]["weights"] == 2 * sum(p.numel() for p in module.parameters())


def test_mla_latent_cache_equals_the_config_path():
    ctx = POS + 1
    with torch.device("meta"):
        module = LatentAttentionDecode(512, 8, rank=128, rope=32, nope=64, v=64, ctx=ctx)
    trace = _trace(module, 512)
    arch = parse_config({"model_type": "deepseek_v2", "hidden_size": 512, "num_hidden_layers": 1,
                         "num_attention_heads": 8, "intermediate_size": 1024, "moe_intermediate_size": 256,
                         "n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1,
                         "first_k_dense_replace": 1, "kv_lora_rank": 128, "qk_rope_head_dim": 32,
                         "qk_nope_head_dim": 64, "v_head_dim": 64, "vocab_size": 1000}, name="tiny-mla")
    assert _kv(trace) == BATCH * arch.kv_seq_bytes(ctx) == BATCH * ctx * (128 + 32) * 2
    # what full attention would cache for the same heads: 2 · 8 · 64 per token, 6.4x more
    assert _kv(trace) * 2 * 8 * 64 / (128 + 32) > 6 * _kv(trace)


def test_ssm_state_equals_the_config_path():
    with torch.device("meta"):
        module = MambaDecode(256, inner=512, state=16, conv=4, rank=16)
    trace = _trace(module, 256)
    arch = parse_config({"model_type": "mamba", "hidden_size": 256, "num_hidden_layers": 1,
                         "intermediate_size": 512, "state_size": 16, "conv_kernel": 4,
                         "time_step_rank": 16, "vocab_size": 1000}, name="tiny-mamba")
    assert _kv(trace) == BATCH * arch.kv_seq_bytes(POS) == BATCH * 512 * (4 + 16) * 2
    # the parameters stay weights: written state is the only kv
    assert {t.cls for n, t in trace.tensors.items() if n.endswith(("conv_w", "A_log"))} == {"weight"}
