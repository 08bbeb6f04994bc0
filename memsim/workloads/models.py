"""Model architectures from HuggingFace ``config.json`` files, and their exact parameter counts.

One dataclass covers the decoder families memsim ships (llama, mistral, mixtral, qwen2, opt,
gpt2): the differences that matter for bytes and FLOPs are the attention shape (GQA), the MLP
(gated SwiGLU or two-matrix), biases, the norm kind, mixture-of-experts and tied or learned
embeddings. Counts follow the HF modules parameter by parameter, so they equal
``sum(p.numel() for p in model.parameters())`` of the real model (Llama-2-7B: 6,738,415,616).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from memsim.catalog import catalog_dir
from memsim.errors import SpecError, did_you_mean

FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "opt", "gpt2")


@dataclass(frozen=True)
class Architecture:
    """The shapes of a decoder-only transformer, whatever family its config came from."""

    name: str
    family: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # per expert for MoE
    vocab: int
    max_positions: int
    gated_mlp: bool  # SwiGLU: gate, up, down (3 matrices) instead of fc1, fc2
    norm: str  # "rms" (weight) or "layer" (weight and bias)
    qkv_bias: bool
    linear_bias: bool  # bias on the attention output and the MLP matrices (OPT, GPT-2)
    tied_embeddings: bool
    learned_positions: int  # rows of a learned position table (0: rotary)
    dropout: bool  # dropout in training (changes the saved activations, Korthikanti et al.)
    experts: int = 1
    experts_per_token: int = 1
    activation: str = "silu"

    # -- shapes -----------------------------------------------------------------------------------

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def qkv_dim(self) -> int:
        return self.q_dim + 2 * self.kv_dim

    @property
    def is_moe(self) -> bool:
        return self.experts > 1

    # -- parameters, per piece ----------------------------------------------------------------

    @property
    def qkv_params(self) -> int:
        return self.hidden * self.qkv_dim + (self.qkv_dim if self.qkv_bias else 0)

    @property
    def out_params(self) -> int:
        return self.q_dim * self.hidden + (self.hidden if self.linear_bias else 0)

    @property
    def expert_params(self) -> int:
        """One expert's MLP (the whole MLP of a dense model)."""
        h, f = self.hidden, self.intermediate
        if self.gated_mlp:
            return 3 * h * f + ((2 * f + h) if self.linear_bias else 0)
        return 2 * h * f + ((f + h) if self.linear_bias else 0)

    @property
    def router_params(self) -> int:
        return self.hidden * self.experts if self.is_moe else 0

    @property
    def norm_params(self) -> int:
        """One norm's parameters: RMSNorm has a weight, LayerNorm a weight and a bias."""
        return self.hidden * (1 if self.norm == "rms" else 2)

    @property
    def layer_params(self) -> int:
        return (self.qkv_params + self.out_params + self.experts * self.expert_params
                + self.router_params + 2 * self.norm_params)

    @property
    def layer_active_params(self) -> int:
        """Parameters one token touches in a layer: only ``experts_per_token`` experts."""
        return (self.qkv_params + self.out_params + self.experts_per_token * self.expert_params
                + self.router_params + 2 * self.norm_params)

    @property
    def embed_params(self) -> int:
        return (self.vocab + self.learned_positions) * self.hidden

    @property
    def head_params(self) -> int:
        """Final norm, plus the LM head unless it is tied to the token embedding."""
        return self.norm_params + (0 if self.tied_embeddings else self.vocab * self.hidden)

    @property
    def params(self) -> int:
        return self.embed_params + self.layers * self.layer_params + self.head_params

    @property
    def active_params(self) -> int:
        return self.embed_params + self.layers * self.layer_active_params + self.head_params

    def lora_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of every linear LoRA may adapt, by generic target name."""
        h, f = self.hidden, self.intermediate
        shapes = {"q": (h, self.q_dim), "k": (h, self.kv_dim), "v": (h, self.kv_dim), "o": (self.q_dim, h),
                  "up": (h, f), "down": (f, h)}
        if self.gated_mlp:
            shapes["gate"] = (h, f)
        return shapes


# HF module names → memsim's generic LoRA target names.
LORA_ALIASES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "out_proj": "o",
                "gate_proj": "gate", "up_proj": "up", "down_proj": "down", "fc1": "up", "fc2": "down",
                "w1": "gate", "w3": "up", "w2": "down", "c_fc": "up", "c_proj": "down"}


def list_models() -> list[str]:
    return sorted(p.stem for p in (catalog_dir("workloads") / "models").glob("*.json"))


def model_path(name_or_path: str | Path, *, file: str | None = None, key: str = "model") -> Path:
    """A catalog model name (``llama-2-7b``), the HF hub id of a catalog model
    (``meta-llama/Llama-2-7b-hf``; nothing is downloaded) or a path to a config.json."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".json" or candidate.exists():
        if not candidate.is_file():
            raise SpecError(f"model config {str(candidate)!r} not found", file=file, key=key)
        return candidate
    hit = catalog_dir("workloads") / "models" / f"{name_or_path}.json"
    if hit.is_file():
        return hit
    by_hub_id = _hub_ids().get(str(name_or_path).lower())
    if by_hub_id:
        return catalog_dir("workloads") / "models" / f"{by_hub_id}.json"
    raise SpecError(f"unknown model {str(name_or_path)!r}{did_you_mean(str(name_or_path), list_models())}; "
                    f"known: {', '.join(list_models())}", file=file, key=key)


@cache
def _hub_ids() -> dict[str, str]:
    """HF hub ids of the catalog configs (``meta-llama/Llama-2-7b-hf`` → ``llama-2-7b``)."""
    out = {}
    for name in list_models():
        config = json.loads((catalog_dir("workloads") / "models" / f"{name}.json").read_text())
        if isinstance(config.get("_name_or_path"), str):
            out[config["_name_or_path"].lower()] = name
    return out


def load_model(name_or_path: str | Path, *, file: str | None = None, key: str = "model") -> Architecture:
    """The Architecture of a catalog model or of a user's config.json."""
    return _load(model_path(name_or_path, file=file, key=key).resolve())


@cache
def _load(path: Path) -> Architecture:
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SpecError(f"invalid JSON: {exc.msg} (line {exc.lineno})", file=str(path)) from None
    if not isinstance(config, dict):
        raise SpecError("expected a JSON object", file=str(path))
    return parse_config(config, name=path.stem, file=str(path))


# Sane upper bounds, checked before anything is built: the trace, the simulator and the MIP all
# grow with the layer count (100,000 layers kept plan busy for minutes; 1e30 never finished). The
# deepest published decoders have 126 layers (Llama-3.1-405B) and 118 (PaLM-540B); the widest
# vocabularies ~256k (Gemma) and contexts ~10M tokens (Llama 4 Scout).
MAX_LAYERS = 4096
MAX_DIM = 1 << 24
_BOUND_WHY = {MAX_LAYERS: "the deepest published decoders have ~126 layers; every layer is planned "
                          "and simulated one by one",
              MAX_DIM: "2^24; published models stay below ~10M tokens or features"}


def parse_config(config: dict, *, name: str, file: str | None = None) -> Architecture:
    """Map one HF config onto an Architecture; a missing or inconsistent key is a SpecError."""
    family = config.get("model_type")
    if family not in FAMILIES:
        raise SpecError(f"unsupported model_type {family!r}{did_you_mean(str(family), FAMILIES)}; "
                        f"supported: {', '.join(FAMILIES)}", file=file, key="model_type")

    def get(key: str, default=None, *, kind=int):
        value = config.get(key, default)
        if value is None:
            raise SpecError("required key is missing", file=file, key=key)
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise SpecError(f"expected a positive integer, got {value!r}", file=file, key=key)
        bound = MAX_LAYERS if key in ("num_hidden_layers", "n_layer") else MAX_DIM
        if kind is int and value > bound:
            raise SpecError(f"{value:,} is above memsim's bound of {bound:,} ({_BOUND_WHY[bound]})",
                            file=file, key=key)
        return value

    if family == "gpt2":
        hidden, heads = get("n_embd"), get("n_head")
        arch = dict(hidden=hidden, layers=get("n_layer"), heads=heads, kv_heads=heads,
                    intermediate=config.get("n_inner") or 4 * hidden, vocab=get("vocab_size"),
                    max_positions=get("n_positions"), gated_mlp=False, norm="layer", qkv_bias=True,
                    linear_bias=True, tied_embeddings=config.get("tie_word_embeddings", True),
                    learned_positions=get("n_positions"),
                    dropout=any(config.get(k, 0.1) > 0 for k in ("resid_pdrop", "attn_pdrop")),
                    activation=config.get("activation_function", "gelu_new"))
        head_key = "n_head"
    elif family == "opt":
        hidden, heads = get("hidden_size"), get("num_attention_heads")
        if config.get("word_embed_proj_dim", hidden) != hidden:
            raise SpecError("OPT with word_embed_proj_dim != hidden_size (opt-350m's projections) is "
                            "not supported", file=file, key="word_embed_proj_dim")
        bias = config.get("enable_bias", True)
        arch = dict(hidden=hidden, layers=get("num_hidden_layers"), heads=heads, kv_heads=heads,
                    intermediate=get("ffn_dim"), vocab=get("vocab_size"),
                    max_positions=get("max_position_embeddings"), gated_mlp=False, norm="layer",
                    qkv_bias=bias, linear_bias=bias, tied_embeddings=config.get("tie_word_embeddings", True),
                    # OPTLearnedPositionalEmbedding keeps 2 extra rows (its offset)
                    learned_positions=get("max_position_embeddings") + 2,
                    dropout=any(config.get(k, 0.0) > 0 for k in ("dropout", "attention_dropout")),
                    activation=config.get("activation_function", "relu"))
        head_key = "num_attention_heads"
    else:
        hidden, heads = get("hidden_size"), get("num_attention_heads")
        arch = dict(hidden=hidden, layers=get("num_hidden_layers"), heads=heads,
                    kv_heads=get("num_key_value_heads", heads), intermediate=get("intermediate_size"),
                    vocab=get("vocab_size"), max_positions=get("max_position_embeddings"), gated_mlp=True,
                    norm="rms", qkv_bias=family == "qwen2" or bool(config.get("attention_bias", False)),
                    linear_bias=bool(config.get("mlp_bias", False)),
                    tied_embeddings=config.get("tie_word_embeddings", False), learned_positions=0,
                    dropout=config.get("attention_dropout", 0.0) > 0,
                    activation=config.get("hidden_act", "silu"))
        if family == "mixtral":
            arch["experts"] = get("num_local_experts")
            arch["experts_per_token"] = get("num_experts_per_tok")
        head_key = "num_attention_heads"

    explicit_head_dim = config.get("head_dim")
    if explicit_head_dim is None and hidden % heads:
        raise SpecError(f"{head_key}={heads} does not divide the hidden size {hidden}",
                        file=file, key=head_key)
    head_dim = explicit_head_dim or hidden // heads
    if arch["heads"] % arch["kv_heads"]:
        raise SpecError(f"num_key_value_heads={arch['kv_heads']} does not divide {head_key}={heads}",
                        file=file, key="num_key_value_heads")
    if arch.get("experts_per_token", 1) > arch.get("experts", 1):
        raise SpecError(f"num_experts_per_tok={arch['experts_per_token']} exceeds num_local_experts="
                        f"{arch['experts']}", file=file, key="num_experts_per_tok")
    return Architecture(name=name, family=family, head_dim=head_dim, **arch)
