"""Parallel-layout simulation speed: a Llama 3 405B step on 16,384 GPUs (prints; never asserts).

    python bench/bench_parallel.py [-n REPEATS]

Target (issue 17): the step simulated in under 5 s. One rank per distinct role (first, middle,
last pipeline stage) is simulated, so the cost is that of one pipeline, whatever the data-parallel
degree. ``trace`` is building the workload's Trace (the model's rank work included), ``simulate``
the simulate() call; both are wall times of the best of ``-n`` runs on a possibly shared machine.
"""

from __future__ import annotations

import sys
import time

from memsim.hardware import load_system
from memsim.sim import simulate
from memsim.units import fmt_bytes
from memsim.workloads import load_trace

CASES = [
    # (label, hardware, workload, overrides)
    ("llama3-405b, TP8·PP16·DP128 on 16,384 H100 (2,048 DGX nodes)", "h100-sxm", "llama3-405b-pretrain",
     ["hardware.nodes=2048"]),
    ("llama3-405b, same layout, the first layer of each stage recomputed (what `plan` picks)",
     "h100-sxm", "llama3-405b-pretrain", ["hardware.nodes=2048"]),
]


def main(argv: list[str]) -> None:
    repeats = int(argv[argv.index("-n") + 1]) if "-n" in argv else 3
    from memsim.planners.layouts import partial_recompute

    for i, (label, hw, wl, sets) in enumerate(CASES):
        best_trace = best_sim = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            system, trace = load_system(hw, sets), load_trace(wl, sets)
            t1 = time.perf_counter()
            plan = partial_recompute(trace, 1) if i == 1 else None
            r = simulate(system, trace, plan)
            t2 = time.perf_counter()
            best_trace, best_sim = min(best_trace, t1 - t0), min(best_sim, t2 - t1)
        par = r.parallel
        total = best_trace + best_sim
        print(f"{label}\n  trace {best_trace:.3f} s + simulate {best_sim:.3f} s = {total:.3f} s "
              f"(target < 5 s); {par['roles_simulated']} roles of {par['layout']['gpus']} ranks, "
              f"{r.events} events\n  step {r.step_time_s:.3f} s, MFU {r.mfu:.1%}, bubble "
              f"{par['bubble_fraction']:.1%}, exposed comm {par['exposed_comm_s']:.3f} s, per-GPU peak "
              f"{fmt_bytes(par['per_gpu_peak_bytes'])} (rank {par['busiest_rank']['rank']}, stage "
              f"{par['busiest_rank']['stage']}), fits: {r.feasible}")


if __name__ == "__main__":
    main(sys.argv[1:])
