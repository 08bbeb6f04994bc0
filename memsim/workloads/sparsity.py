"""Predicted FFN sparsity with a neuron window, built into an inference Trace (LLM in a flash).

Alizadeh et al., "LLM in a flash" (arXiv 2312.11514), sect. 3: a low-rank predictor picks the FFN
neurons a token activates (about 10% for OPT-6.7B); the neurons active in the last k tokens stay
in memory (windowing: 24% of the FFN at k = 5) and each token reads only the ones the window lacks
(2.4%) from flash; row-column bundling stores a neuron's up-projection column next to its
down-projection row, so one read fetches both. What each knob becomes, per layer:

* ``L{layer}.weight``: everything but the FFN, the window's share of the FFN and the predictor —
  homed by the plan's weight placement (the resident set);
* ``L{layer}.neurons``: the FFN outside the window, homed on the plan's ``neuron_tier`` (flash);
  ``neuron_load`` reads the ``load_fraction`` of the FFN from it each decode step (the engine
  fetches that share of the tensor, in reads of the bundle size, :data:`READ_BYTES_META`) and
  moves the window's departed neurons out of the way (the paper's memory management, sect. 3.3:
  a copy of as many bytes within memory);
* ``predictor``: a decode matmul over the predictor's bytes before the FFN, on the attention
  output (the simulator starts the FFN part's neuron reads after it: memsim.sim.neurons);
* decode ``mlp_up``/``mlp_down`` compute and read ``active_fraction`` of the FFN. The prefill is
  left dense: a prompt's tokens together activate nearly every neuron; it reads the resident set
  only (the prompt's own neuron loading is not modelled: the paper times generated tokens).
"""

from __future__ import annotations

from memsim.errors import SpecError
from memsim.workloads.builder import L, op
from memsim.workloads.models import Architecture
from memsim.workloads.spec import Sparsity
from memsim.workloads.trace import Tensor, Trace

NEURONS = L + "neurons"
FFN_OPS = ("mlp_up", "mlp_down")
READ_BYTES_META = "read_bytes"  # trace.meta["sparsity"][...]: bytes of one contiguous flash read


def fractions(s: Sparsity) -> tuple[float, float]:
    """(resident window share, per-token load share) of the FFN neurons. Without measured values,
    activations independent across tokens: a neuron is in the window with 1-(1-a)^k and is newly
    loaded with a·(1-a)^k (k = 0: the token's own active set, a, is both). Real activations are
    correlated across tokens (the paper's OPT-6.7B: 24% and 2.4% at a = 10%, k = 5, where
    independence gives 41% and 5.9%), so give the measured ones when known."""
    a, k = s.active_fraction, s.window
    window = s.window_fraction if s.window_fraction is not None else (1 - (1 - a) ** k if k else a)
    load = s.load_fraction if s.load_fraction is not None else a * (1 - a) ** k
    return window, load


def ffn_params(arch: Architecture) -> tuple[int, int]:
    """(up-projection params incl. gate and bias, down-projection params) of one dense layer."""
    up_cols = (2 if arch.gated_mlp else 1) * arch.intermediate
    up = arch.hidden * up_cols + (up_cols if arch.linear_bias else 0)
    down = arch.intermediate * arch.hidden + (arch.hidden if arch.linear_bias else 0)
    return up, down


def sparsify(trace: Trace, arch: Architecture, s: Sparsity, e: int, dtype: str,
             file: str | None) -> None:
    """Rewrite a dense inference trace in place to run ``s`` (see the module docstring)."""
    if arch.is_moe:
        raise SpecError("inference.sparsity models dense FFN neurons; this model is a mixture of "
                        "experts", file=file, key="inference.sparsity")
    window, load = fractions(s)
    if load > 1 - window + 1e-9:
        raise SpecError(f"load_fraction {load:g} exceeds the FFN outside the window "
                        f"({1 - window:g})", file=file, key="inference.sparsity.load_fraction")
    up, down = ffn_params(arch)
    ffn = (up + down) * e
    cold = int(ffn * (1 - window))
    layers = int(trace.meta["layers"])
    weights = trace.meta["per_device_bytes"]["weights"]
    predictor = int(s.predictor_fraction * weights / layers)
    layer = trace.tensors[L + "weight"]
    layer.bytes = layer.bytes - cold + predictor
    loaded = int(ffn * load)
    trace.meta["per_device_bytes"]["weights"] = weights + predictor * layers
    trace.tensors[NEURONS] = Tensor(NEURONS, cold, "weight", dtype)
    a = s.active_fraction
    gated = 2 if arch.gated_mlp else 1
    for block in trace.blocks:
        if block.name != "decode":
            continue
        out = []
        for o in block.ops:
            key = o.name.split(".")[-1]
            if key == "mlp_up":
                rows = o.shape[0] if o.shape else 1
                rank_flops = 2.0 * rows * predictor / e  # one multiply-add per predictor weight
                out.append(op(L + "predictor", "matmul", "decode", rank_flops,
                              predictor + rows * arch.hidden * e, rows * gated * arch.intermediate,
                              ("act", L + "weight"), ("act",), dtype=dtype,
                              shape=(rows, arch.hidden, max(1, predictor // max(1, arch.hidden * e)))))
                out.append(op(L + "neuron_load", "elementwise", "decode", 0.0, loaded, loaded,
                              (NEURONS,), (), dtype=dtype, shape=(loaded // e,)))
            if key in FFN_OPS:
                w = (up if key == "mlp_up" else down) * e
                o.flops *= a
                o.bytes_read = int(o.bytes_read - w + w * a)
            out.append(o)
        block.ops = out
    row = arch.hidden * e  # one up-projection column or down-projection row
    trace.meta["sparsity"] = {
        "active_fraction": a, "window": s.window, "window_fraction": window, "load_fraction": load,
        "bundling": s.bundling, READ_BYTES_META: 2 * row if s.bundling else row,
        "load_share": loaded / cold if cold else 0.0, "ffn_bytes_per_layer": ffn,
        "resident_bytes_per_layer": layer.bytes, "loaded_bytes_per_token_layer": loaded,
        "predictor_bytes_per_layer": predictor,
    }
    trace.meta["flops_per_step"] = trace.flops  # the sparse model's FLOPs (what MFU counts)
