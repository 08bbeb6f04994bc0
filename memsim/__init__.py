"""memsim: plan and simulate where every byte of a large model lives.

The Python API beside the CLI (the CLI is a thin layer on it)::

    import memsim
    system = memsim.load_system("h100-sxm")
    workload = memsim.load_workload("llama2-7b-train")
    trace = memsim.build_trace(workload)
    report = memsim.plan(system, trace)              # MIP plan + baselines, all simulated
    result = memsim.simulate(system, trace, report.plan)

Names resolve lazily so ``import memsim`` stays cheap and never imports torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "load_system": "memsim.hardware",
    "load_workload": "memsim.workloads",
    "build_trace": "memsim.workloads",
    "simulate": "memsim.sim",
    "plan": "memsim.api",
    "calibrate": "memsim.validation",
    "validate": "memsim.validation",
    "run_study": "memsim.studies",
    "Trace": "memsim.workloads.trace",
    "Plan": "memsim.contracts.plan",
    "Result": "memsim.contracts.result",
    "System": "memsim.hardware.spec",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'memsim' has no attribute {name!r}")
