"""Planner benchmarks (issue 5): prints figures, asserts nothing about wall-clock.

1. FlexGen's setup: the ``t4-gcp`` system (FlexGen's fitted T4 constants), OPT-30B, prompt 512,
   generate 32. The MIP plan's simulated throughput beside the measured 7.32 tokens/s
   (shared/reference/published.yaml), the search time (FlexGen's own search: ~3 s), and FlexGen's
   published policy (20/80 weights, KV and activations on the CPU, 48 × 3, CPU attention) simulated.
2. A Llama-2-70B training step on one H100 with DRAM and NVMe: solve time and gap (target: gap
   ≤ 1 % in < 10 s), and every baseline's simulated step time.

Run: ``python bench/bench_planner.py``.
"""

from __future__ import annotations

import time

import memsim
from memsim.api import plan
from memsim.contracts.report import infeasible_note
from memsim.planners import mip
from memsim.planners.registry import load_preset, run_preset

FLEXGEN_MEASURED = 7.32  # tokens/s, OPT-30B on one T4 (FlexGen README; shared/reference/published.yaml)


def _search_time(system, trace, options: dict, repeats: int = 3) -> tuple[float, mip.Search]:
    best, found = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        found = mip.search(system, trace, options, time_limit=10.0)
        best = min(best, time.perf_counter() - start)
    return best, found


def _row(name: str, result, extra: str = "") -> None:
    if result is None or not result.feasible:
        print(f"  {name:<24} infeasible ({infeasible_note(result) if result is not None else 'no plan'})")
        return
    print(f"  {name:<24} step {result.step_time_s:10.3f} s   {result.tokens_per_s:10.3f} tokens/s{extra}")


def flexgen_case() -> None:
    print("== FlexGen setup: t4-gcp, OPT-30B, prompt 512, gen 32 ==")
    system = memsim.load_system("t4-gcp")
    trace = memsim.build_trace(memsim.load_workload("opt-30b-flexgen"))
    search_s, found = _search_time(system, trace, {})
    best = found.best
    tps = trace.meta.get("tokens_per_step", 0) / best.estimate_s
    print(f"  MIP search: {search_s:.3f} s for {len(found.candidates)} structures (best of 3 runs), "
          f"status {found.status}, MIP estimate {tps:.3f} tokens/s")
    report = plan(system, trace, "mip", time_limit=10.0)
    p = report.plan
    print(f"  MIP plan: weights {p.placement.get('weight')}, kv {p.placement.get('kv')}, "
          f"{p.gpu_batch_size} x {p.num_gpu_batches}, cpu_attention {p.cpu_attention} ({p.planner.status})")
    r = report.result
    err = (r.tokens_per_s - FLEXGEN_MEASURED) / FLEXGEN_MEASURED
    _row("mip (simulated)", r, f"   vs measured {FLEXGEN_MEASURED}: {err:+.1%}; "
         f"this plan's MIP estimate {trace.meta['tokens_per_step'] / p.planner.estimate_s:.3f} tokens/s")
    for b in report.baselines:
        _row(b.name, b.result)
    for note in p.notes:
        print(f"  note: {note}")
    paper = run_preset(load_preset("flexgen-opt30b-paper"), system, trace)
    sim = memsim.simulate(system, trace, paper)
    err = (sim.tokens_per_s - FLEXGEN_MEASURED) / FLEXGEN_MEASURED if sim.feasible else float("nan")
    _row("flexgen published policy", sim, f"   vs measured {FLEXGEN_MEASURED}: {err:+.1%}")


def llama70b_training_case() -> None:
    print("== Llama-2-70B training step, one H100 + DRAM + NVMe ==")
    system = memsim.load_system("h100-sxm")
    trace = memsim.build_trace(memsim.load_workload("llama2-70b-train"))
    search_s, found = _search_time(system, trace, {"gap": 0.01})
    print(f"  MIP search: {search_s:.3f} s for {len(found.candidates)} structures, status {found.status}, "
          f"gap {found.gap if found.gap is not None else float('nan'):.4%}, "
          f"estimate {found.best.estimate_s:.3f} s" if found.best else "  MIP: nothing fits")
    report = plan(system, trace, "mip", time_limit=10.0)
    info = report.plan.planner
    _row("mip (simulated)", report.result,
         f"   MIP estimate {info.estimate_s:.3f} s, solve {info.solve_s:.3f} s, status {info.status}")
    for b in report.baselines:
        _row(b.name, b.result)
    for note in report.plan.notes:
        print(f"  note: {note}")


if __name__ == "__main__":
    flexgen_case()
    llama70b_training_case()
