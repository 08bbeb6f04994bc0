"""Simulator speed: events/s and wall time on the cases the issue names (prints; never asserts).

    python bench/bench_sim.py [-n REPEATS] [CASE SUBSTRING ...]

Targets (issue 4): ≥ 200,000 simulated events/s on one core; a Llama-2-70B training step with
offload < 1 s; a 10,000-request serving trace on a 70B model < 30 s. ``events`` counts the
simpy events processed; wall times and ``events/s`` are the whole simulate() call (turning the
Trace and Plan into a program included); ``loop ev/s`` is the event loop alone. The simulator's
modules (and simpy) are imported before the first case, so its row does not pay for loading
them. Each case runs ``-n`` times (default 3); the best and the median are printed, as the
machine may be shared; ``cpu ev/s`` divides by the process's CPU time (the best run), which a
busy machine distorts less than wall time.
"""

from __future__ import annotations

import statistics
import sys
import time

import memsim
import memsim.sim.engine  # imported up front: module loading is not simulation time
import memsim.sim.serving
from memsim.contracts.plan import Plan
from memsim.sim import simulate

CASES = [
    # (label, hardware, workload, overrides, plan)
    ("llama2-70b train step, ZeRO-Infinity-style offload + recompute", "h100-sxm", "llama2-70b-train", [],
     Plan(placement={"weight": {"dram": 1.0}, "grad": {"dram": 1.0},
                     "optimizer": {"dram": 0.5, "nvme": 0.5}},
          optimizer_device="cpu", activations="recompute", prefetch_depth=2)),
    ("llama2-7b train step, ZeRO-Offload", "h100-sxm", "llama2-7b-train", [],
     Plan(placement={"grad": {"dram": 1.0}, "optimizer": {"dram": 1.0}}, optimizer_device="cpu")),
    ("llama3-8b inference (255 decode steps), half the weights in DRAM", "h100-sxm", "llama3-8b-infer", [],
     Plan(placement={"weight": {"hbm": 0.5, "dram": 0.5}})),
    ("opt-30b FlexGen-style on t4-gcp (48 x 3 GPU batches, KV on CPU)", "t4-gcp", "opt-30b-flexgen", [],
     Plan(placement={"weight": {"hbm": 0.2, "dram": 0.8}, "kv": {"dram": 1.0},
                     "activation": {"dram": 1.0}},
          gpu_batch_size=48, num_gpu_batches=3, cpu_attention=True)),
    ("llama2-70b serving, 10,000 requests, 55% of weights streamed from DRAM", "h100-sxm",
     "llama2-70b-serve", [], Plan(placement={"weight": {"hbm": 0.45, "dram": 0.55}})),
]


def loop_rate(system, trace, plan) -> float:
    """Events/s of the event loop alone (a step's program is built first, untimed)."""
    from memsim.sim.engine import StepEngine
    from memsim.sim.program import build_program

    view = system.rank_view(int(trace.meta.get("data_parallel", 1) or 1))
    engine = StepEngine(view, build_program(trace, view, plan), plan.prefetch_depth, False, trace.meta)
    t0 = time.perf_counter()
    r = engine.run()
    return r.events / (time.perf_counter() - t0)


def main() -> None:
    args = sys.argv[1:]
    repeats = 3
    if "-n" in args:
        k = args.index("-n")
        repeats = max(1, int(args[k + 1]))
        del args[k:k + 2]
    only = args
    print(f"{'case':<70} {'events':>9} {'best s':>7} {'median s':>8} {'best ev/s':>9} "
          f"{'median ev/s':>11} {'cpu ev/s':>10} {'loop ev/s':>9}  simulated")
    for label, hw, wl, overrides, plan in CASES:
        if only and not any(o in label for o in only):
            continue
        system = memsim.load_system(hw, overrides)
        trace = memsim.build_trace(memsim.load_workload(wl, overrides))
        serving = trace.kind == "serving"
        walls, cpus, loops = [], [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            r = simulate(system, trace, plan)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            if not serving:
                loops.append(loop_rate(system, trace, plan))
        best, median = min(walls), statistics.median(walls)
        loop = r.events / best if serving else max(loops)
        what = "makespan" if serving else "step"
        fit = "" if r.feasible else f" (does not fit: {r.oom.tier if r.oom else '?'})"
        print(f"{label:<70} {r.events:>9,} {best:>7.3f} {median:>8.3f} {r.events / best:>9,.0f} "
              f"{r.events / median:>11,.0f} {r.events / min(cpus):>10,.0f} {loop:>9,.0f}  "
              f"{what} {r.step_time_s:.4g} s{fit}")


if __name__ == "__main__":
    main()
