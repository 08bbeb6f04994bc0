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
from memsim.workloads.quantization import WeightQuant, linear_bytes, parse_quantization

FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "opt", "gpt2", "gemma", "gemma2", "gemma3",
            "gemma3_text", "phi3", "qwen3", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3",
            "falcon", "gpt_neox", "starcoder2", "olmo", "olmo2", "cohere", "mamba", "jamba",
            "llama4", "llama4_text")
# Fields every decoder config carries under these names; enough to read an unknown model_type
# as a dense llama-like decoder.
STANDARD_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "vocab_size")
SSM_STATE_BITS = 16  # conv and SSM states are kept in the model dtype (HF MambaCache, vLLM)


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
    # -- per-layer mechanisms (defaults: a uniform decoder with full attention) ----------------
    mixers: tuple[str, ...] = ()  # per layer: "attn" (full), "local" (sliding window), "mla", "ssm"
    mlps: tuple[str, ...] = ()  # per layer: "dense", "moe" or "none" (Mamba blocks have no MLP)
    sliding_window: int = 0  # tokens a "local" layer keeps
    norms_per_layer: int = 2  # Gemma-2/3 and OLMo-2 add post-norms, Cohere/Falcon-7B share one
    qk_norm: int = 0  # parameters of the q/k norms per layer (Qwen3, Gemma-3, OLMo-2)
    # MLA (DeepSeek-V2/V3): a low-rank latent is cached instead of K and V
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    # MoE extras: shared experts (DeepSeek, Qwen2-MoE) and dense layers (first_k_dense_replace)
    shared_intermediate: int = 0  # all shared experts together (n_shared · moe_intermediate)
    shared_gate: bool = False  # Qwen2-MoE gates its shared expert with a Linear(hidden, 1)
    dense_intermediate: int = 0  # MLP width of the "dense" layers of an MoE model
    router_bias: bool = False  # DeepSeek-V3's e_score_correction_bias
    # SSM (Mamba) mixer
    ssm_inner: int = 0
    ssm_state: int = 0
    ssm_conv: int = 0
    ssm_dt_rank: int = 0
    ssm_conv_bias: bool = True
    ssm_proj_bias: bool = False
    ssm_inner_norms: bool = False  # Jamba's dt/B/C RMSNorms
    notes: tuple[str, ...] = ()  # how the config was read, when it needed a guess
    quant: WeightQuant | None = None  # the config's quantization_config (weights)

    def __post_init__(self) -> None:
        if not self.mixers:
            object.__setattr__(self, "mixers", ("attn",) * self.layers)
        if not self.mlps:
            object.__setattr__(self, "mlps", ("moe" if self.experts > 1 else "dense",) * self.layers)

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

    def _mlp(self, f: int) -> int:
        h = self.hidden
        if self.gated_mlp:
            return 3 * h * f + ((2 * f + h) if self.linear_bias else 0)
        return 2 * h * f + ((f + h) if self.linear_bias else 0)

    @property
    def expert_params(self) -> int:
        """One expert's MLP (the whole MLP of a dense model)."""
        return self._mlp(self.intermediate)

    @property
    def router_params(self) -> int:
        return (self.hidden + (1 if self.router_bias else 0)) * self.experts if self.is_moe else 0

    @property
    def norm_params(self) -> int:
        """One norm's parameters: RMSNorm has a weight, LayerNorm a weight and a bias, OLMo-1's
        non-parametric LayerNorm none."""
        return self.hidden * {"rms": 1, "layer": 2, "none": 0}[self.norm]

    @property
    def mla_params(self) -> int:
        """DeepSeek MLA: q (direct or through a q_lora_rank bottleneck with its norm), the joint
        down-projection to the latent plus the shared rope key, the latent's norm, the up-projection
        to per-head nope keys and values, and the output projection."""
        h, a = self.hidden, self.heads
        qk = self.qk_nope_head_dim + self.qk_rope_head_dim
        q = (h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * a * qk if self.q_lora_rank
             else h * a * qk)
        kv = (h * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
              + self.kv_lora_rank * a * (self.qk_nope_head_dim + self.v_head_dim))
        return q + kv + a * self.v_head_dim * h

    @property
    def ssm_params(self) -> int:
        """Mamba mixer: in_proj (x and gate), depthwise conv, x_proj to (dt, B, C), dt_proj, A_log,
        D and out_proj (HF MambaMixer / JambaMambaMixer)."""
        h, d, n, r = self.hidden, self.ssm_inner, self.ssm_state, self.ssm_dt_rank
        pb = 1 if self.ssm_proj_bias else 0
        return (h * 2 * d + pb * 2 * d + d * self.ssm_conv + (d if self.ssm_conv_bias else 0)
                + d * (r + 2 * n) + r * d + d + d * n + d + d * h + pb * h
                + ((r + 2 * n) if self.ssm_inner_norms else 0))

    def mixer_params(self, i: int) -> int:
        kind = self.mixers[i]
        if kind == "ssm":
            return self.ssm_params
        if kind == "mla":
            return self.mla_params
        return self.qkv_params + self.out_params + self.qk_norm

    def mlp_params(self, i: int, *, active: bool = False) -> int:
        kind = self.mlps[i]
        if kind == "none":
            return 0
        if kind == "dense":
            return self._mlp(self.dense_intermediate or self.intermediate)
        shared = self._mlp(self.shared_intermediate) if self.shared_intermediate else 0
        routed = (self.experts_per_token if active else self.experts) * self.expert_params
        return routed + self.router_params + shared + (self.hidden if self.shared_gate else 0)

    def params_of_layer(self, i: int, *, active: bool = False) -> int:
        return (self.mixer_params(i) + self.mlp_params(i, active=active)
                + self.norms_per_layer * self.norm_params)

    @property
    def layers_params(self) -> int:
        return sum(self.params_of_layer(i) for i in range(self.layers))

    @property
    def layers_active_params(self) -> int:
        return sum(self.params_of_layer(i, active=True) for i in range(self.layers))

    @property
    def layer_params(self) -> int:
        """Parameters of one layer; for models whose layers differ (dense first layers, hybrid
        SSM/attention) the mean, rounded up, so a templated layer × layers covers the total."""
        return -(-self.layers_params // self.layers)

    @property
    def layer_active_params(self) -> int:
        """Parameters one token touches in a layer: only ``experts_per_token`` experts (mean)."""
        return -(-self.layers_active_params // self.layers)

    @property
    def embed_params(self) -> int:
        return (self.vocab + self.learned_positions) * self.hidden

    @property
    def head_params(self) -> int:
        """Final norm, plus the LM head unless it is tied to the token embedding."""
        return self.norm_params + (0 if self.tied_embeddings else self.vocab * self.hidden)

    @property
    def params(self) -> int:
        return self.embed_params + self.layers_params + self.head_params

    @property
    def active_params(self) -> int:
        return self.embed_params + self.layers_active_params + self.head_params

    def _mlp_shapes(self, f: int, copies: int) -> list[tuple[int, int, int]]:
        h = self.hidden
        return [(h, f, copies * (2 if self.gated_mlp else 1)), (f, h, copies)]

    def linear_shapes(self) -> list[tuple[int, int, int]]:
        """(in, out, copies) of every matmul weight in the layers (what quantization packs; the
        router stays in the model dtype)."""
        h, a = self.hidden, self.heads
        out: list[tuple[int, int, int]] = []
        for i in range(self.layers):
            kind = self.mixers[i]
            if kind == "ssm":
                d, r, n = self.ssm_inner, self.ssm_dt_rank, self.ssm_state
                out += [(h, 2 * d, 1), (d, r + 2 * n, 1), (r, d, 1), (d, h, 1)]
            elif kind == "mla":
                qk = self.qk_nope_head_dim + self.qk_rope_head_dim
                out += ([(h, self.q_lora_rank, 1), (self.q_lora_rank, a * qk, 1)] if self.q_lora_rank
                        else [(h, a * qk, 1)])
                out += [(h, self.kv_lora_rank + self.qk_rope_head_dim, 1),
                        (self.kv_lora_rank, a * (self.qk_nope_head_dim + self.v_head_dim), 1),
                        (a * self.v_head_dim, h, 1)]
            else:
                out += [(h, self.q_dim, 1), (h, self.kv_dim, 2), (self.q_dim, h, 1)]  # q, k, v, o
            if self.mlps[i] == "dense":
                out += self._mlp_shapes(self.dense_intermediate or self.intermediate, 1)
            elif self.mlps[i] == "moe":
                out += self._mlp_shapes(self.intermediate, self.experts)
                if self.shared_intermediate:
                    out += self._mlp_shapes(self.shared_intermediate, 1)
        return out

    def weight_bytes(self, e: int) -> int:
        """Bytes of all weights: ``e`` per parameter, or the packed bytes of the quantized linears
        (memsim.workloads.quantization) plus ``e`` per remaining parameter."""
        if self.quant is None:
            return self.params * e
        shapes = self.linear_shapes()
        embed, head = self.table_bytes(e)
        rest = self.params - self.embed_params - self.head_params - sum(i * o * c for i, o, c in shapes)
        return rest * e + linear_bytes(self.quant, shapes) + embed + head

    def table_bytes(self, e: int) -> tuple[int, int]:
        """Bytes of the embedding and of the head (final norm, untied LM head): ``e`` per
        parameter, the token table and an untied LM head packed where the quantization packs
        embeddings too (DeepSpeed's, memsim.workloads.quantization)."""
        embed, head = self.embed_params * e, self.head_params * e
        if self.quant is not None and self.quant.embeddings:
            table = self.vocab * self.hidden
            saved = table * e - linear_bytes(self.quant, [(self.hidden, self.vocab, 1)])
            embed -= saved
            head -= 0 if self.tied_embeddings else saved
        return embed, head

    # -- KV cache / recurrent state, per layer kind --------------------------------------------

    def kv_elems(self, i: int, context: int | None) -> int:
        """Cache elements layer ``i`` holds for one sequence of ``context`` tokens (None: the
        per-token growth of an unbounded context): full attention 2·kv_heads·head_dim per token,
        sliding window the same for min(window, context) tokens, MLA kv_lora_rank +
        qk_rope_head_dim per token, an SSM layer a fixed conv + SSM state (no growth)."""
        kind = self.mixers[i]
        if kind == "ssm":
            return 0 if context is None else self.ssm_inner * (self.ssm_conv + self.ssm_state)
        per_token = self.kv_lora_rank + self.qk_rope_head_dim if kind == "mla" else 2 * self.kv_dim
        if context is None:
            return per_token
        held = min(context, self.sliding_window) if kind == "local" else context
        return per_token * held

    def kv_seq_bytes(self, context: int, kv_bits: int = 16, layers: range | None = None) -> int:
        """Exact cache bytes of one sequence of ``context`` tokens over ``layers`` (all)."""
        bits = 0
        for i in layers if layers is not None else range(self.layers):
            bits += self.kv_elems(i, context) * (SSM_STATE_BITS if self.mixers[i] == "ssm" else kv_bits)
        return -(-bits // 8)

    def kv_layer_mean_elems(self, context: float) -> float:
        """Mean cache elements one layer reads for a sequence of ``context`` tokens (attention
        reads what its layer holds; SSM state is read in full)."""
        if set(self.mixers) == {"attn"}:
            return 2 * self.kv_dim * context
        total = 0.0
        for i in range(self.layers):
            per_token = self.kv_elems(i, None)
            kind = self.mixers[i]
            total += (self.kv_elems(i, 1) if kind == "ssm" else
                      per_token * (min(context, self.sliding_window) if kind == "local" else context))
        return total / self.layers

    @property
    def kv_token_elems(self) -> float:
        """Mean cache elements one token appends per layer (what attention writes per token)."""
        return sum(self.kv_elems(i, None) for i in range(self.layers)) / self.layers

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
    """Map one HF config onto an Architecture; a missing or inconsistent key is a SpecError.
    A multimodal config's ``text_config`` is read (the language model only)."""
    if isinstance(config.get("text_config"), dict):
        config = {**config["text_config"], "_outer_model_type": config.get("model_type")}
    family = config.get("model_type")
    if family in ("llama4", "llama4_text"):  # chunked attention: a layer holds at most a chunk
        config = {**config, "sliding_window": config.get("attention_chunk_size")}
    if family == "falcon":  # the original Falcon configs spell these the GPT-2 way
        config = {{"n_head": "num_attention_heads", "n_layer": "num_hidden_layers",
                   "n_head_kv": "num_kv_heads"}.get(k, k): v for k, v in config.items()}
    notes: list[str] = []
    if family not in FAMILIES:
        missing = [k for k in STANDARD_KEYS if k not in config]
        if missing:
            raise SpecError(f"unsupported model_type {family!r}{did_you_mean(str(family), FAMILIES)} and "
                            f"the config lacks {', '.join(missing)} (needed to read it as a dense "
                            f"decoder); supported: {', '.join(FAMILIES)}", file=file, key=missing[0])
        notes.append(f"model_type {family!r} is not a known family{did_you_mean(str(family), FAMILIES)}: "
                     "read as a dense llama-like decoder (gated MLP, RMSNorm, rotary) from its "
                     "standard fields")

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
    elif family == "mamba":
        hidden, heads = get("hidden_size"), 1
        arch = dict(hidden=hidden, layers=get("num_hidden_layers"), heads=1, kv_heads=1,
                    intermediate=get("intermediate_size", 2 * hidden), vocab=get("vocab_size"),
                    max_positions=config.get("max_position_embeddings") or 2**20, gated_mlp=False,
                    norm="rms", qkv_bias=False, linear_bias=False,
                    tied_embeddings=config.get("tie_word_embeddings", True), learned_positions=0,
                    dropout=False, activation=config.get("hidden_act", "silu"), norms_per_layer=1)
        arch.update(_ssm(config, hidden, get, prefix=""))
        arch["mixers"] = ("ssm",) * arch["layers"]
        arch["mlps"] = ("none",) * arch["layers"]
        config = {**config, "head_dim": hidden}
        head_key = "hidden_size"
    else:
        hidden, heads = get("hidden_size"), get("num_attention_heads")
        layers = get("num_hidden_layers")
        kv_heads = config.get("num_key_value_heads") or heads
        if family == "falcon":
            kv_heads = (config.get("num_kv_heads") or heads if config.get("new_decoder_architecture")
                        else 1 if config.get("multi_query", True) else heads)
        arch = dict(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                    intermediate=config.get("intermediate_size") or 4 * hidden,
                    vocab=get("vocab_size"), max_positions=config.get("max_position_embeddings") or 2**20,
                    gated_mlp=True, norm="rms",
                    qkv_bias=family in ("qwen2", "qwen2_moe") or bool(config.get("attention_bias", False)),
                    linear_bias=bool(config.get("mlp_bias", False)),
                    tied_embeddings=config.get("tie_word_embeddings", family in _TIED_BY_DEFAULT),
                    learned_positions=0, dropout=(config.get("attention_dropout") or 0.0) > 0,
                    activation=config.get("hidden_act") or config.get("hidden_activation") or "silu")
        arch.update(_family_specifics(family, config, arch, get, file))
        head_key = "num_attention_heads"

    if family not in ("gpt2", "opt", "mamba"):
        window = config.get("sliding_window")
        uses_window = window and config.get("use_sliding_window", True) is not False
        mixers = arch.get("mixers") or ("attn",) * arch["layers"]
        if uses_window and "local" not in mixers and family not in _WINDOW_BY_PATTERN:
            mixers = tuple("local" if m == "attn" else m for m in mixers)  # every layer slides
        if "local" in mixers:
            if not (isinstance(window, int) and window > 0):
                raise SpecError("local-attention layers need a positive integer sliding_window",
                                file=file, key="sliding_window")
            arch["sliding_window"] = window
        arch["mixers"] = mixers

    explicit_head_dim = config.get("head_dim")
    if explicit_head_dim is None and hidden % heads:
        raise SpecError(f"{head_key}={heads} does not divide the hidden size {hidden}",
                        file=file, key=head_key)
    head_dim = explicit_head_dim or hidden // heads
    if arch["heads"] % arch["kv_heads"]:
        raise SpecError(f"num_key_value_heads={arch['kv_heads']} does not divide {head_key}={heads}",
                        file=file, key="num_key_value_heads")
    if arch.get("experts_per_token", 1) > arch.get("experts", 1):
        raise SpecError(f"num_experts_per_tok={arch['experts_per_token']} exceeds the expert count "
                        f"{arch['experts']}", file=file, key="num_experts_per_tok")
    if arch.get("qk_norm") == -1:  # per-head q/k norms, known once head_dim is
        arch["qk_norm"] = 2 * head_dim
    quant = parse_quantization(config.get("quantization_config"), file=file)
    return Architecture(name=name, family=family or "unknown", head_dim=head_dim, notes=tuple(notes),
                        quant=quant, **arch)


_TIED_BY_DEFAULT = ("gemma", "gemma2", "gemma3", "gemma3_text", "cohere", "falcon", "starcoder2", "jamba")
_WINDOW_BY_PATTERN = ("gemma2", "gemma3", "gemma3_text", "cohere", "llama4", "llama4_text")


def _ssm(config: dict, hidden: int, get, *, prefix: str) -> dict:
    """Mamba mixer shapes; ``prefix`` is ``"mamba_"`` in Jamba's config."""
    expand = config.get(prefix + "expand", 2)
    state = config.get("state_size") if not prefix else config.get("mamba_d_state", 16)
    conv = config.get("conv_kernel") if not prefix else config.get("mamba_d_conv", 4)
    inner = config.get("intermediate_size") if not prefix else None
    inner = inner or expand * hidden
    rank = config.get("mamba_dt_rank" if prefix else "time_step_rank", "auto")
    rank = -(-hidden // 16) if rank in ("auto", None) else rank
    return dict(ssm_inner=inner, ssm_state=state or 16, ssm_conv=conv or 4, ssm_dt_rank=rank,
                ssm_conv_bias=bool(config.get(prefix + ("conv_bias" if prefix else "use_conv_bias"), True)),
                ssm_proj_bias=bool(config.get(prefix + ("proj_bias" if prefix else "use_bias"), False)),
                ssm_inner_norms=bool(prefix))


def _family_specifics(family: str, config: dict, arch: dict, get, file: str | None) -> dict:
    """What a llama-like family changes: norms, biases, MLP kind, per-layer patterns, MoE, MLA."""
    layers, hidden = arch["layers"], arch["hidden"]
    out: dict = {}
    if family == "mixtral":
        out.update(experts=get("num_local_experts"), experts_per_token=get("num_experts_per_tok"))
    elif family in ("gemma", "gemma2", "gemma3", "gemma3_text"):
        out["activation"] = config.get("hidden_activation") or "gelu_pytorch_tanh"
        if family != "gemma":
            out["norms_per_layer"] = 4  # input, post-attention, pre- and post-feedforward
            if family == "gemma2":  # layer 0 slides, then every other one (Gemma2DecoderLayer)
                out["mixers"] = tuple("local" if i % 2 == 0 else "attn" for i in range(layers))
            else:  # every sliding_window_pattern-th layer is global (5 local : 1 global)
                types = config.get("layer_types")
                if types:
                    out["mixers"] = tuple("local" if t == "sliding_attention" else "attn" for t in types)
                else:
                    k = config.get("sliding_window_pattern", 6)
                    out["mixers"] = tuple("attn" if (i + 1) % k == 0 else "local" for i in range(layers))
                out["qk_norm"] = -1
    elif family == "qwen3":
        out["qk_norm"] = -1
    elif family == "olmo":
        out["norm"] = "none"  # non-parametric LayerNorm
    elif family == "olmo2":
        out["qk_norm"] = arch["heads"] * config.get("head_dim", hidden // arch["heads"]) + \
            arch["kv_heads"] * config.get("head_dim", hidden // arch["heads"])
    elif family == "cohere":
        out["norms_per_layer"] = 1  # one LayerNorm (weight only) feeds parallel attention and MLP
        if config.get("use_qk_norm"):
            raise SpecError("Cohere with use_qk_norm is not read yet", file=file, key="use_qk_norm")
        types = config.get("layer_types")
        if types:
            out["mixers"] = tuple("local" if t == "sliding_attention" else "attn" for t in types)
    elif family == "falcon":
        bias = bool(config.get("bias", False))
        out.update(gated_mlp=False, norm="layer", qkv_bias=bias, linear_bias=bias, activation="gelu",
                   norms_per_layer=2 if config.get("new_decoder_architecture") else
                   (1 if config.get("parallel_attn", True) else 2),
                   intermediate=config.get("ffn_hidden_size") or 4 * hidden)
    elif family == "gpt_neox":
        out.update(gated_mlp=False, norm="layer", qkv_bias=bool(config.get("attention_bias", True)),
                   linear_bias=True, tied_embeddings=bool(config.get("tie_word_embeddings", False)),
                   activation=config.get("hidden_act", "gelu"))
    elif family == "starcoder2":
        bias = bool(config.get("use_bias", True))
        out.update(gated_mlp=False, norm="layer", qkv_bias=bias, linear_bias=bias,
                   activation=config.get("hidden_act", "gelu_pytorch_tanh"))
    elif family == "phi3":
        pass  # fused qkv_proj and gate_up_proj: the same parameters as llama's
    elif family in ("qwen2_moe", "qwen3_moe"):
        step, only = config.get("decoder_sparse_step", 1), set(config.get("mlp_only_layers") or ())
        out.update(experts=get("num_experts"), experts_per_token=get("num_experts_per_tok"),
                   intermediate=get("moe_intermediate_size"),
                   dense_intermediate=get("intermediate_size"),
                   mlps=tuple("moe" if i not in only and (i + 1) % step == 0 else "dense"
                              for i in range(layers)))
        if family == "qwen3_moe":
            out["qk_norm"] = -1
        if family == "qwen2_moe" and config.get("shared_expert_intermediate_size"):
            out.update(shared_intermediate=config["shared_expert_intermediate_size"], shared_gate=True)
    elif family in ("deepseek_v2", "deepseek_v3"):
        first_dense = config.get("first_k_dense_replace", 0)
        freq = config.get("moe_layer_freq", 1)
        routed = get("n_routed_experts")
        moe_f = get("moe_intermediate_size")
        out.update(experts=routed, experts_per_token=get("num_experts_per_tok"), intermediate=moe_f,
                   dense_intermediate=get("intermediate_size"),
                   shared_intermediate=(config.get("n_shared_experts") or 0) * moe_f,
                   router_bias=family == "deepseek_v3",
                   mlps=tuple("moe" if i >= first_dense and i % freq == 0 else "dense"
                              for i in range(layers)),
                   mixers=("mla",) * layers, q_lora_rank=config.get("q_lora_rank") or 0,
                   kv_lora_rank=get("kv_lora_rank"), qk_rope_head_dim=get("qk_rope_head_dim"),
                   qk_nope_head_dim=get("qk_nope_head_dim"), v_head_dim=get("v_head_dim"),
                   kv_heads=arch["heads"])
    elif family in ("llama4", "llama4_text"):
        # Llama4TextMoe: top-k routed experts plus one shared expert of intermediate_size; the
        # other layers a dense MLP of intermediate_size_mlp (HF configuration_llama4 moe_layers).
        # Rope layers use chunked attention (attention_chunk_size); every no_rope_layer_interval-th
        # layer is a global NoPE layer. The q/k L2 norms have no parameters.
        step = config.get("interleave_moe_layer_step", 1)
        moe = config.get("moe_layers")
        moe = set(moe) if moe is not None else set(range(step - 1, layers, step))
        every = config.get("no_rope_layer_interval", 4)
        rope = config.get("no_rope_layers") or [int((i + 1) % every != 0) for i in range(layers)]
        f = get("intermediate_size")
        out.update(experts=get("num_local_experts"), experts_per_token=get("num_experts_per_tok"),
                   intermediate=f, shared_intermediate=f, dense_intermediate=get("intermediate_size_mlp"),
                   mlps=tuple("moe" if i in moe else "dense" for i in range(layers)),
                   mixers=tuple("local" if r else "attn" for r in rope))
        if not config.get("attention_chunk_size"):
            out["mixers"] = ("attn",) * layers
    elif family == "jamba":
        ap, ao = config.get("attn_layer_period", 8), config.get("attn_layer_offset", 4)
        ep, eo = config.get("expert_layer_period", 2), config.get("expert_layer_offset", 1)
        experts = config.get("num_experts", 16)
        out.update(_ssm(config, hidden, get, prefix="mamba_"))
        out.update(experts=experts, experts_per_token=config.get("num_experts_per_tok", 2),
                   mixers=tuple("attn" if i % ap == ao else "ssm" for i in range(layers)),
                   mlps=tuple("moe" if experts > 1 and i % ep == eo else "dense" for i in range(layers)))
    return out
