"""The sparse FFN's neuron store in a program (``inference.sparsity``, memsim.workloads.sparsity).

``L{layer}.neurons`` (the FFN outside the resident window) is homed on the plan's
``neuron_tier`` when it names one, and read in chunks of one neuron (one bundle with row-column
bundling), so the tier's ``read_size_curve`` prices the scattered reads. Each decode step's
``neuron_load`` reads only the share of the store the token newly activates.

The predictor runs on the layer's attention output (LLM in a flash, sect. 3.1: the low-rank
predictor takes the current layer's attention output), so which neurons to read is known only
then: each decode layer's FFN part, from the predictor on, is its own segment and prefetch slot
(``ffn_segments``), and at ``prefetch_depth: 0`` its reads start when that part does."""

from __future__ import annotations

from memsim.contracts.names import is_layer_tensor
from memsim.contracts.plan import Plan
from memsim.sim.program import POp, TInfo
from memsim.workloads.sparsity import READ_BYTES_META
from memsim.workloads.trace import Trace

SUFFIX = ".neurons"


def _is_store(name: str) -> bool:
    return is_layer_tensor(name, SUFFIX[1:])


FFN_PART = frozenset(("predictor", "neuron_load", "mlp_up", "mlp_act", "mlp_down", "mlp_residual"))


def ffn_segments(raw: list[POp]) -> list[POp]:
    """Give each decode layer's ops from the predictor on a group of their own (see above)."""
    for op in raw:
        if op.phase == "decode" and op.layer is not None and op.name.rsplit(".", 1)[-1] in FFN_PART:
            op.group = (f"{op.group[0]}~ffn", *op.group[1:])
    return raw


def home_neurons(ops: list[POp], tensors: dict[str, TInfo], trace: Trace, plan: Plan) -> None:
    meta = trace.meta["sparsity"]
    chunk, share = int(meta[READ_BYTES_META]), float(meta["load_share"])
    for name, info in tensors.items():
        if _is_store(name):
            info.chunk = chunk
            if plan.neuron_tier is not None:
                info.home = {plan.neuron_tier: info.bytes}
    for o in ops:
        if o.name.endswith(".neuron_load"):
            o.in_frac = tuple(share if _is_store(t) else f for t, f in zip(o.inputs, o.in_frac,
                                                                            strict=True))
