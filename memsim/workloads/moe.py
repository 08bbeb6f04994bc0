"""Routed experts: which of them a step reads, and their bytes.

A decode step of an MoE model multiplies each token by the ``k`` experts its router picks, so
an offloaded expert only crosses the link when some token of the step is routed to it. With
``E`` experts, top-``k`` routing and ``t`` tokens in the step, the expected number of distinct
experts read per MoE layer is

    E · (1 − (1 − k/E)^t)

under the assumption that tokens route **independently** and each expert is equally likely
(every expert is in a token's top-k with probability k/E, and the tokens of a batch do not share
choices). Real routers are skewed and correlated within a sequence, which lowers the count: the
formula is the load-balanced upper case that auxiliary balancing losses push routers towards
(Switch Transformer, Fedus et al. 2022, §2.2; DeepSeek-V3's bias-based balancing, arXiv:2412.19437
§2.1.2). Batch 1 of Mixtral (E=8, k=2) reads 2 experts; batch 16 reads 7.92.

The expert cache: the share of the expert bytes that a plan keeps in HBM is resident, and under
the same uniform routing a touched expert is resident with probability equal to that share
(capacity-based hits), so a step moves ``touched/E × (expert bytes homed off HBM)``. That is
what the simulator does with the fraction this module writes into an inference trace's meta
(``routed_experts``), and what the inference planner charges per decode step.
"""

from __future__ import annotations

from memsim.workloads.models import Architecture
from memsim.workloads.quantization import linear_bytes

EXPERTS = "experts"  # the per-layer tensor name suffix: ``L{layer}.experts``


def touched_experts(experts: int, top_k: int, tokens: float) -> float:
    """Expected distinct experts ``tokens`` independently, uniformly routed tokens read."""
    if experts <= 1:
        return float(experts)
    return min(float(experts), experts * (1.0 - (1.0 - top_k / experts) ** tokens))


def read_fraction(arch: Architecture, tokens: float) -> float:
    """Share of a layer's routed-expert bytes one forward over ``tokens`` tokens reads."""
    if not arch.is_moe:
        return 1.0
    return touched_experts(arch.experts, arch.experts_per_token, tokens) / arch.experts


def routed_expert_shapes(arch: Architecture) -> list[tuple[int, int, int]]:
    """(in, out, copies) of the routed experts' matmul weights over all layers."""
    h, f = arch.hidden, arch.intermediate
    moe_layers = arch.mlps.count("moe")
    return [(h, f, moe_layers * arch.experts * (2 if arch.gated_mlp else 1)),
            (f, h, moe_layers * arch.experts)]


def routed_expert_bytes(arch: Architecture, e: int) -> int:
    """Bytes of every routed expert of every layer (packed when the checkpoint is quantized;
    biases, if any, in the model dtype)."""
    if not arch.is_moe:
        return 0
    moe_layers = arch.mlps.count("moe")
    shapes = routed_expert_shapes(arch)
    bias = moe_layers * arch.experts * (((2 if arch.gated_mlp else 1) * arch.intermediate + arch.hidden)
                                        if arch.linear_bias else 0)
    if arch.quant is None:
        return sum(i * o * c for i, o, c in shapes) * e + bias * e
    return linear_bytes(arch.quant, shapes) + bias * e


def weight_bytes_read(costs, tokens: float) -> float:
    """Weight bytes one forward over ``tokens`` tokens reads, from a trace's TokenCosts: all of
    them, less the routed experts no token of the pass is routed to."""
    if not getattr(costs, "routed_expert_bytes", 0) or costs.experts <= 1:
        return float(costs.weight_bytes)
    share = touched_experts(costs.experts, costs.experts_per_token, tokens) / costs.experts
    return costs.weight_bytes - costs.routed_expert_bytes * (1.0 - share)


def trace_meta(arch: Architecture, tokens: dict[str, float]) -> dict:
    """``routed_experts`` entry of an inference trace's meta: the tensor and, per phase, the share
    of it one pass reads (``tokens``: tokens per layer pass of each phase)."""
    return {"tensor": EXPERTS, "experts": arch.experts, "top_k": arch.experts_per_token,
            "read_fraction": {phase: read_fraction(arch, t) for phase, t in tokens.items()},
            "assumption": "tokens route independently and uniformly: E·(1-(1-k/E)^tokens) experts"}
