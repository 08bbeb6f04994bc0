"""memsim: plan and simulate where every byte of a large model lives.

The Python API beside the CLI (the CLI is a thin layer on it)::

    import memsim
    system = memsim.load_system("h100-sxm")
    workload = memsim.load_workload("llama2-7b-train")
    report = memsim.plan(system, workload)          # MIP plan + baselines, all simulated
    result = memsim.simulate(system, workload, report.plan)
"""

from memsim.hardware import load_system

__version__ = "0.1.0"
__all__ = ["load_system"]
