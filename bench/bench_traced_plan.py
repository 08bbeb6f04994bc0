"""Plan traced modules under a tight HBM budget and print the MILP against the baselines.

    python bench/bench_traced_plan.py [--quick]

For each of the tracer's example modules (sized so activations matter) and Llama-2-70B traced on
meta (2×4096 tokens, flash attention, training), on an H100 whose HBM is cut to a budget that
``resident`` overflows: the simulated step time and HBM peak of the MILP's plan and of every
baseline, the MILP's own estimate and its solve time. Budgets: halfway between resident's
simulated peak and the leanest uniform policy's (examples), 320 GiB and the real 80 GiB (70B).
Solve times are wall
clock and vary with the machine's load.
"""

from __future__ import annotations

import argparse
import time

import torch

from memsim.api import plan
from memsim.contracts.plan import Plan
from memsim.hardware import load_system
from memsim.sim import simulate
from memsim.workloads import torch_examples as ex
from memsim.workloads.stages import stage
from memsim.workloads.torch_trace import InputSpec, build_module, trace_module

GIB = 2**30
CASES = {
    "mlp": (ex.mlp, {"d_in": 1024, "hidden": 4096, "depth": 6}, [InputSpec((8192, 1024))], None, "math"),
    "gpt": (ex.gpt, {"vocab": 4096, "d_model": 512, "layers": 4, "heads": 8, "kv_heads": 8, "ffn": 1376},
            [InputSpec((8, 512), torch.int64)], None, "math"),
    "transformer_block": (ex.transformer_block, {"d_model": 512, "heads": 8, "ffn": 2048},
                          [InputSpec((16, 512, 512))], None, "math"),
    "llama-2-70b": (ex.decoder, {"model": "llama-2-70b"}, [InputSpec((2, 4096), torch.int64)],
                    torch.bfloat16, "flash"),
}


def run(name: str, real_gpu: bool = False) -> None:
    factory, kwargs, inputs, dtype, attention = CASES[name]
    start = time.perf_counter()
    trace = stage(trace_module(build_module(factory, name, dtype, kwargs), inputs, train=True,
                               name=name, attention=attention))
    traced_s = time.perf_counter() - start
    system = load_system("h100-sxm")
    need = simulate(system, trace, Plan()).peak_bytes["hbm"]
    if real_gpu:
        budget = system.tiers["hbm"].capacity
    elif name == "llama-2-70b":
        budget = 320 * GIB
    else:
        lean = min(simulate(system, trace, p).peak_bytes["hbm"]
                   for p in (Plan(activations="recompute"),
                             Plan(activations="offload", activation_tier="dram")))
        budget = (need + lean) // 2
    small = load_system("h100-sxm", [f"hardware.tiers.hbm.capacity={budget}"])
    start = time.perf_counter()
    report = plan(small, trace, "mip", time_limit=10)
    plan_s = time.perf_counter() - start
    info, r = report.plan.planner, report.result
    counts = report.plan.policy_counts(int(trace.meta["layers"]))
    print(f"{name}: {trace.num_ops} ops, {trace.meta['layers']} stages, traced in {traced_s:.1f} s; "
          f"budget {budget / GIB:.2f} GiB (resident needs {need / GIB:.2f} GiB)")
    homed = {c: s for c, s in report.plan.placement.items()}
    print(f"  mip [{info.status}] {r.step_time_s:.6g} s, hbm peak {r.peak_bytes['hbm'] / GIB:.2f} GiB, "
          f"estimate {info.estimate_s:.6g} s, solve {info.solve_s:.3f} s (plan incl. simulations "
          f"{plan_s:.1f} s); stages: " + ", ".join(f"{n} {p}" for p, n in counts.items() if n)
          + (f"; placement {homed}" if homed else ""))
    for b in report.baselines:
        if b.feasible:
            print(f"  {b.name}: {b.step_time_s:.6g} s, hbm peak {b.result.peak_bytes['hbm'] / GIB:.2f} GiB")
        else:
            print(f"  {b.name}: does not fit ({b.to_dict()['note']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small examples only")
    args = parser.parse_args()
    for name in CASES:
        if args.quick and name == "llama-2-70b":
            continue
        run(name)
    if not args.quick:
        run("llama-2-70b", real_gpu=True)  # one real 80 GB H100


if __name__ == "__main__":
    main()
