"""KV token budgets (memsim.workloads.kv_budget) against published capacity claims, simulated.

A case lists ``runs`` (top level): workload overrides (a budget, none) and whether the paper says that job
runs on the case's GPU (``published_fits``); memsim's figure is whether its simulation fits (no
tier over capacity). With ``longest: true`` the setup also reports the longest prompt that fits
with and without the budget (bisection on simulated feasibility, to ``search_step`` tokens),
and the case's ``notes.longest`` says how to read it.
"""

from __future__ import annotations

from pathlib import Path

from memsim.errors import SpecError
from memsim.sim import simulate
from memsim.studies.reproduce_spec import CaseResult, CaseSpec, Figure

NO_BUDGET = "inference.kv_budget=null"


def kv_budget_case(spec: CaseSpec, path: Path, say) -> CaseResult:
    from memsim.studies.reproduce_cases import gb, system_of, trace_of

    s = spec.setup
    system = system_of(s, path)
    fast = system.fast_tier
    cap = system.tiers[fast].capacity

    def run(extra: list[str]):
        trace = trace_of(s, path, extra)
        return simulate(system, trace, None), trace

    figures, setup = [], [f"hardware `{s['hardware']}` ({gb(cap):.1f} GB {fast}), batch 1"]
    if not spec.runs:
        raise SpecError("a kv_budget case needs runs", file=str(path), key="runs")
    for i, r in enumerate(spec.runs):
        say(f"simulating {r['label']}")
        res, trace = run(list(r.get("overrides", [])))
        sel = trace.meta.get("kv_select") or {}
        kept = f"{sel['kept'][0]:,} tokens kept a layer" if sel else "the whole cache"
        figures.append(Figure(f"run{i}", f"{r['label']}: fits (1 = yes)", "x",
                              1.0 if r["published_fits"] else 0.0, 1.0 if res.feasible else 0.0,
                              "simulated", f"peak {fast} {gb(res.peak_bytes[fast]):.1f} GB "
                              f"({kept})"))
    if s.get("longest"):
        step = int(s.get("search_step", 8192))
        upper = int(s.get("search_max", 1 << 20))
        for label, extra in (("with the budget", []), ("without it", [NO_BUDGET])):
            lo, hi = 0, upper // step
            while lo < hi:
                mid = (lo + hi + 1) // 2
                say(f"longest prompt {label}: trying {mid * step:,}")
                ok = run([*extra, f"inference.prompt_len={mid * step}"])[0].feasible
                lo, hi = (mid, hi) if ok else (lo, mid - 1)
            setup.append(f"longest prompt that fits {label}: {lo * step:,} tokens (simulated, "
                         f"to {step:,})")
    notes = [spec.notes["longest"]] if s.get("longest") and "longest" in spec.notes else []
    return CaseResult(spec.name, spec.title, spec.source, setup, figures, notes)
