"""What `memsim workload list/show` print: one dict per workload, built from its Trace."""

from __future__ import annotations

import json

from memsim.workloads.spec import Workload
from memsim.workloads.trace import Trace


def workload_summary(workload: Workload, trace: Trace, *, trace_json_bytes: bool = True) -> dict:
    """The ``workload show --json`` document: the stable keys (``params``, ``per_device_bytes``,
    ``flops_per_step``, ``tokens_per_step``) with the rest of ``trace.meta``, the job as given, and
    the trace's size (ops and tensors after expansion, templates before)."""
    size = {"blocks": len(trace.blocks), "op_templates": sum(len(b.ops) for b in trace.blocks),
            "ops": trace.num_ops, "tensor_templates": len(trace.tensors), "tensors": trace.num_tensors,
            "requests": len(trace.requests) if trace.requests else 0}
    if trace_json_bytes:
        size["json_bytes"] = len(json.dumps(trace.to_dict(), sort_keys=True))
    return {**trace.meta, "name": workload.name, "description": workload.description, "kind": workload.kind,
            "source": workload._source, "job": getattr(workload, workload.kind).model_dump(mode="json"),
            "trace": size}


def list_entry(workload: Workload) -> dict:
    """One row of ``workload list``: no trace is built (listing stays instant)."""
    from memsim.workloads import workload_architecture

    arch = workload_architecture(workload)
    return {"name": workload.name, "kind": workload.kind, "model": arch.name, "params": arch.params,
            "description": workload.description}
