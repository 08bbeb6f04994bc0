"""One GPU's per-token costs at each tensor-parallel degree ``serving.slo.tensor`` tries.

The SLO search (memsim.planners.slo) runs the serving simulator once per deployment; a
deployment of TP degree t runs replicas of t GPUs each, and the simulator needs one GPU's share
of the weights, KV bytes per token and FLOPs at that degree (memsim.workloads.parallel_serving).
They are computed here, where the architecture is known, and carried in ``meta["slo"]``. A
degree the model cannot be split by (heads or KV heads not divisible) is left out with its reason.
"""

from __future__ import annotations

from dataclasses import asdict

from memsim.errors import SpecError
from memsim.workloads.models import Architecture
from memsim.workloads.parallel_serving import serving_layout, shard_costs
from memsim.workloads.trace import TokenCosts


def costs_by_tensor(arch: Architecture, costs: TokenCosts, sv, e: int, file: str | None) -> dict:
    """{str(degree): TokenCosts dict or {"invalid": reason}} for the degrees the SLO tries."""
    degrees = sv.slo.tensor or [sv.parallel.tensor]
    out: dict[str, dict] = {}
    for t in sorted(set(degrees)):
        try:
            lay = serving_layout(arch, t, sv.parallel.pipeline, file)
        except SpecError as exc:
            out[str(t)] = {"invalid": str(exc)}
            continue
        out[str(t)] = asdict(shard_costs(arch, costs, lay, e, sv.kv_bits))
    return out
