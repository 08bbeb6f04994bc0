"""The sparse FFN's neuron store in a program (``inference.sparsity``, memsim.workloads.sparsity).

``L{layer}.neurons`` (the FFN outside the resident window) is homed on the plan's
``neuron_tier`` when it names one, and read in chunks of one neuron (one bundle with row-column
bundling), so the tier's ``read_size_curve`` prices the scattered reads. Each decode step's
``neuron_load`` reads only the share of the store the token newly activates."""

from __future__ import annotations

from memsim.planners.plan import Plan
from memsim.sim.program import POp, TInfo
from memsim.workloads.sparsity import READ_BYTES_META
from memsim.workloads.trace import Trace

SUFFIX = ".neurons"


def _is_store(name: str) -> bool:
    base = name.split("#", 1)[0]
    return base.endswith(SUFFIX) and base[:1] == "L" and base[1:-len(SUFFIX)].isdigit()


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
