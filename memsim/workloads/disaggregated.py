"""Disaggregated serving (``serving.disaggregated``): each pool's per-GPU costs, for the simulator.

A prefill instance and a decode instance may split the model differently (DistServe picks each
phase's parallelism on its own), so each pool carries one GPU's share of the per-token costs at
its own tensor and pipeline degrees (``memsim.workloads.parallel_serving.shard_costs``) and the
scheduler settings it overrides. The whole model's KV bytes per token are carried too: that is
what a finished prompt sends from its prefill instance to a decode instance
(``memsim.sim.disaggregated``).
"""

from __future__ import annotations

from dataclasses import asdict

from memsim.errors import SpecError
from memsim.workloads.models import Architecture
from memsim.workloads.parallel import Layout, validate_layout
from memsim.workloads.parallel_serving import shard_costs
from memsim.workloads.trace import TokenCosts


def disaggregated_meta(arch: Architecture, costs: TokenCosts, sv, e: int, file: str | None) -> dict:
    """``meta["disaggregated"]``: per pool its instances, layout, one GPU's TokenCosts and the
    scheduler keys it overrides; the link, transfer mode and full KV bytes per token."""
    d = sv.disaggregated
    if sv.slo is not None:
        raise SpecError("memsim plan's SLO search sizes colocated replicas; simulate a disaggregated "
                        "deployment without serving.slo", file=file, key="serving.disaggregated")
    pools = {}
    for role in ("prefill", "decode"):
        pool = getattr(d, role)
        key = f"serving.disaggregated.{role}"
        lay = Layout(tensor=pool.tensor or sv.parallel.tensor, pipeline=pool.pipeline or sv.parallel.pipeline)
        validate_layout(arch, lay, file=file, prefix=key)
        if pool.gpus % lay.gpus:
            raise SpecError(f"{pool.gpus} GPUs do not split into instances of {lay.gpus} "
                            f"(tensor {lay.tensor} × pipeline {lay.pipeline})", file=file, key=f"{key}.gpus")
        sched = {k: v for k in ("max_num_batched_tokens", "max_num_seqs")
                 if (v := getattr(pool, k)) is not None}
        pools[role] = {"gpus": pool.gpus, "instances": pool.gpus // lay.gpus, "tensor": lay.tensor,
                       "pipeline": lay.pipeline, "scheduler": sched,
                       "token_costs": asdict(shard_costs(arch, costs, lay, e, sv.kv_bits))}
    return {**pools, "link": d.link, "latency": d.latency, "transfer": d.transfer,
            "kv_bytes_per_token": costs.kv_bytes_per_token,
            "file": file}  # the link is resolved against the system at simulation: errors name it
