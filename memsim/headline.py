"""The first line of ``plan`` and ``simulate``: the answer, before any table.

A user asks "does my job fit on this machine, and how fast": the line says fits / does not fit,
on how many of the node's GPUs, and which job (sequence length, batch), so the tables below only
add detail. ``job`` is also the ``job`` key of the JSON documents.
"""

from __future__ import annotations

from memsim import units
from memsim.kinds import workload_kinds


def job(trace, system) -> dict:
    """What the case runs and on how much of the node: tokens, batch, GPUs used of the node's."""
    meta = trace.meta
    gpu = system.gpu
    node = gpu.count if gpu else 0
    used = min(int(meta.get("data_parallel", 1) or 1), node) if node else 0
    par = meta.get("parallel") or {}
    if node and par.get("work"):  # a parallel layout uses its tensor × pipeline × context × data GPUs
        used = min(int(par["gpus"]), node * system.nodes)
    if node and meta.get("disaggregated"):  # both pools' GPUs (memsim/sim/disaggregated.py)
        used = sum(int(meta["disaggregated"][role]["gpus"]) for role in ("prefill", "decode"))
    out = {"kind": trace.kind, "model": meta.get("model"), "gpus": used, "gpus_in_node": node,
           "compute_tier": system.fast_tier}
    if system.nodes > 1:
        out["nodes"] = system.nodes
    for key in ("seq_len", "micro_batch", "grad_accum", "batch_size", "prompt_len", "gen_len",
                "num_requests"):
        if meta.get(key) is not None:
            out[key] = meta[key]
    return out


def _job_text(j: dict) -> str:
    kind = workload_kinds().get(j.get("kind"))  # workloads/kinds/workloads.yaml
    return kind.job_text(j) if kind is not None else str(j.get("kind") or "module")


def headline(doc: dict) -> str:
    """``FITS — llama2-7b-train (training, seq 4096, micro-batch 1) on 1 of 8 GPUs of h100-sxm``;
    when it does not fit, which tier is short and by how much."""
    j = doc.get("job") or {}
    where = (f"on {j['gpus']} of {j['gpus_in_node']} GPU{'s' if j['gpus_in_node'] != 1 else ''} of "
             f"{doc['hardware']}" if j.get("gpus_in_node") else f"on {doc['hardware']}")
    if j.get("nodes", 1) > 1:
        where = f"on {j['gpus']} GPUs of {j['nodes']} × {doc['hardware']}"
    what = f"{doc['workload']} ({_job_text(j)})" if j else doc["workload"]
    if doc.get("feasible", True):
        return f"FITS — {what} {where}"
    oom = doc.get("oom") or {}
    short = (f": {oom['tier']} short by {units.fmt_bytes(oom['short_bytes'])}"
             if oom.get("tier") and oom.get("short_bytes") else "")
    return f"DOES NOT FIT — {what} {where}{short}"
