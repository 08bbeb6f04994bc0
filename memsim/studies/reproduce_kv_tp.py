"""Reproductions of vLLM's KV-cache capacity under tensor parallelism.

vLLM sizes each worker's KV pool from ``gpu_memory_utilization`` of its GPU, less its weights
(1/tp of them), the profile run's activation peak and the memory outside PyTorch's allocator
(CUDA context, cuBLAS workspaces, NCCL), the minimum over workers; the log prints it as
"# GPU blocks" or "available_kv_cache_memory". Each run here is one such log line: a model, a
GPU, a tensor-parallel size and vLLM's scheduler defaults of that release, served by memsim's
serving simulator with the runtime's non-tensor memory on (memsim.hardware.overheads), since vLLM's
profiler subtracts it. memsim's figure is ``serving.kv_blocks`` or ``serving.kv_pool_bytes``.
"""

from __future__ import annotations

from pathlib import Path

from memsim.contracts.plan import Plan
from memsim.sim import simulate
from memsim.studies.reproduce_cases import SIM, Say, _need, system_of
from memsim.studies.reproduce_spec import CaseResult, CaseSpec, Figure
from memsim.workloads import build_trace
from memsim.workloads.spec import Workload


def kv_capacity(spec: CaseSpec, path: Path, say: Say) -> CaseResult:
    """Each run: one vLLM worker's KV pool under its TP size, beside the logged figure."""
    s = spec.setup
    figures = []
    for i, run in enumerate(spec.runs or []):
        say(run["label"])
        tp = int(run.get("tensor", 1))
        sched = {"block_size": 16, "gpu_memory_utilization": 0.9, **(run.get("scheduler") or {})}
        # two short requests: only the pool vLLM sizes at start-up is compared
        serving = {"arrival": {"process": "poisson", "rate_per_s": 1.0, "seed": 0}, "num_requests": 2,
                   "prompt_len": {"dist": "fixed", "value": 16}, "output_len": {"dist": "fixed", "value": 1},
                   "scheduler": sched, "dtype": run.get("dtype", "fp16"), "parallel": {"tensor": tp}}
        w = Workload.model_validate({"name": f"{spec.name}-{i}", "model": _need(run, "model", path),
                                     "serving": serving})
        system = system_of({**s, "hardware": run.get("hardware", s.get("hardware"))}, path,
                           ["hardware.overheads=true", *run.get("overrides", [])])
        r = simulate(system, build_trace(w), Plan())
        if r.serving is None:
            raise ValueError(f"{path}: run {run['label']!r} produced no serving result")
        lines = (r.reserved_bytes or {}).get(system.gpu.memory, {})
        held = ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in lines.items() if v)
        note = f"TP{tp}; per GPU: non-tensor {held or 'none'}"
        if "published_blocks" in run:
            figures.append(Figure(f"run{i}", f"{run['label']}: KV blocks per GPU", "blocks",
                                  float(run["published_blocks"]), float(r.serving.kv_blocks), SIM, note))
        else:
            figures.append(Figure(f"run{i}", f"{run['label']}: KV cache memory per GPU", "GiB",
                                  float(run["published_kv_gib"]), r.serving.kv_pool_bytes / 2**30, SIM, note))
    setup = [f"one vLLM worker per run on `{s.get('hardware')}` (or the run's hardware), the runtime's "
             "non-tensor memory counted; block size 16, gpu_memory_utilization 0.9 unless a run says"]
    return CaseResult(spec.name, spec.title, spec.source, setup, figures)
