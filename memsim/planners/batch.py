"""``inference.batch_size: auto``: search the batch size jointly with the offload policy.

FlexGen's policy search (Sheng et al., ICML 2023, §4.2) picks the batch with the placement: the
effective batch is ``gpu_batch_size × num_gpu_batches``, and a bigger one amortises each layer's
weight load over more tokens until the KV cache and activations no longer fit (or the batch
takes longer than the latency the user accepts). Here every batch size tried is a full search
(``mip.search``: every split of it into GPU batches, CPU attention or not, an LP per split), so
the pair is searched jointly; the search model ranks the sizes and the simulator decides:

1. the estimate at batch 1, 2, 4, ... until nothing fits or the estimate passes the bound
   (memory and step time grow with the batch: past the first size that fails, all do);
2. the same between the best power of two's neighbours, at eighths of it (FlexGen's published
   batches are such products, e.g. 48 × 3 = 144 for OPT-30B);
3. ``TOP`` sizes simulated through the planner's own path (its shortlist, its repairs): the
   smallest, middle and largest of those within ``NEAR`` of the best estimated tokens/s and the
   best; the
   fastest simulated within the bound is kept;
4. ``report.plan`` on that batch: the plan, its baselines and the report users see, with the
   search's record under ``batch_search``.

Latency is the step: prefill plus every decode step of the batch, when each sequence is done.
"""

from __future__ import annotations

from memsim.contracts.simulator import Simulator
from memsim.errors import Diagnosis, Infeasible, SpecError
from memsim.hardware.spec import System
from memsim.planners import mip
from memsim.planners.registry import load_preset
from memsim.workloads.spec import MAX_TOKENS
from memsim.workloads.trace import Trace

TOP = 4  # batch sizes simulated
NEAR = 0.01  # estimated tokens/s this close to the best's is a tie the simulator breaks
MAX_BATCH = 1 << 16  # the doubling stops here at the latest (far past any tier's KV capacity)


def plan_batch(system: System, trace: Trace, planner: str, time_limit: float, baselines: bool,
               say, rebuild, simulator: Simulator):
    """The PlanReport of the highest-throughput batch that fits (and meets ``max_latency_s``)."""
    from memsim.planners import report

    if rebuild is None:
        raise SpecError("inference.batch_size: auto needs the workload to rebuild at each batch: "
                        "plan it with memsim plan (plan_case)", key="inference.batch_size")
    preset = load_preset(planner)
    if preset.kind not in report.SEARCH_KINDS:
        raise SpecError(f"inference.batch_size: auto is searched by a search planner "
                        f"({', '.join(report.SEARCH_KINDS)}); {preset.name!r} only places a batch "
                        f"it is given: set the batch", key="inference.batch_size")
    bound = (trace.meta["batch_size_auto"] or {}).get("max_latency_s")
    options = mip.search_options(preset.kind, preset.options)
    traces: dict[int, Trace] = {}
    estimates: dict[int, float | None] = {}  # batch → estimated step time (None: nothing fits)

    def build(batch: int) -> Trace:
        if batch not in traces:
            traces[batch] = rebuild(_fixed(batch))
        return traces[batch]

    def estimate(batch: int) -> float | None:
        if batch not in estimates:
            say(f"batch search: estimating batch {batch}")
            found = mip.search(system, build(batch), options, time_limit)
            estimates[batch] = found.best.estimate_s if found.best is not None else None
        return within(batch)

    def within(batch: int) -> float | None:
        est = estimates.get(batch)
        return est if est is not None and (bound is None or est <= bound) else None

    def rate(batch: int) -> float:
        est = within(batch)
        return batch * int(build(batch).meta.get("gen_len") or 1) / est if est else 0.0

    batch = 1
    while batch <= min(MAX_BATCH, MAX_TOKENS) and estimate(batch) is not None:
        batch *= 2
    fits = [b for b in estimates if within(b) is not None]
    if not fits:
        raise _nothing_fits(system, build(1), estimates, bound, simulator=simulator)
    best = max(fits, key=lambda b: (rate(b), -b))
    for k in range(5, 16):  # between best/2 and 2·best, at eighths of best
        b = best * k // 8
        if best * k % 8 == 0 and b not in estimates and b <= MAX_TOKENS:
            estimate(b)
    simulated: dict[int, object] = {}  # batch → Evaluated
    for b in _shortlist([b for b in estimates if within(b) is not None], rate):
        say(f"batch search: simulating batch {b}")
        simulated[b] = report._planned(preset, system, build(b), time_limit, say, simulator)
    ok = [b for b, ev in simulated.items()
          if ev.feasible and (bound is None or ev.result.step_time_s <= bound)]
    if not ok:
        raise _nothing_fits(system, build(1), estimates, bound, simulated, simulator)
    chosen = max(ok, key=lambda b: (simulated[b].result.tokens_per_s, -b))
    out = report.plan(system, build(chosen), planner, simulator=simulator, time_limit=time_limit,
                      baselines=baselines, progress=say,
                      rebuild=lambda extra: rebuild([*_fixed(chosen), *extra]))
    out.batch_search = _record(chosen, bound, estimates, simulated, rate, out)
    split = (f" ({out.plan.gpu_batch_size} × {out.plan.num_gpu_batches} GPU batches)"
             if out.plan.num_gpu_batches else "")
    out.plan.notes.append(
        f"batch search: batch {chosen}{split} of {len(estimates)} sizes estimated and "
        f"{len(simulated)} simulated" + (f", within max_latency_s {bound:g} s" if bound is not None else ""))
    return out


def _fixed(batch: int) -> list[str]:
    """The ``--set`` lines of one batch size (its bound is the search's, not the batch's)."""
    return [f"inference.batch_size={batch}", "inference.max_latency_s=null"]


def _shortlist(fits: list[int], rate) -> list[int]:
    """The ``TOP`` sizes to simulate. Past the weight-bound batches the estimate plateaus (the
    weights' load is amortised, KV traffic grows with the batch), and within ``NEAR`` of the best
    the stage model cannot rank them (copy-queue backlogs the simulator sees decide): the
    smallest, middle and largest of the plateau, its best estimate, then the next best."""
    top = max(rate(b) for b in fits)
    near = sorted(b for b in fits if rate(b) >= (1 - NEAR) * top)
    best = max(fits, key=lambda b: (rate(b), -b))
    picks = list(dict.fromkeys([near[0], near[len(near) // 2], near[-1], best]))
    for b in sorted(fits, key=lambda b: (-rate(b), b)):
        if len(picks) >= TOP:
            break
        if b not in picks:
            picks.append(b)
    return sorted(picks[:TOP])


def _record(chosen: int, bound, estimates: dict, simulated: dict, rate, out) -> dict:
    """What ``plan --json`` says under ``batch_search``."""
    tried = []
    for b in sorted(estimates):
        ev = simulated.get(b)
        tried.append({
            "batch_size": b,
            "estimate_s": estimates[b],
            "estimated_tokens_per_s": rate(b) or None,
            "simulated": ev is not None,
            "feasible": bool(ev.feasible) if ev is not None else None,
            "step_time_s": ev.result.step_time_s if ev is not None and ev.feasible else None,
            "tokens_per_s": ev.result.tokens_per_s if ev is not None and ev.feasible else None,
        })
    return {"batch_size": chosen, "gpu_batch_size": out.plan.gpu_batch_size,
            "num_gpu_batches": out.plan.num_gpu_batches, "max_latency_s": bound,
            "latency_s": out.result.step_time_s, "candidates": tried}


def _nothing_fits(system: System, trace: Trace, estimates: dict, bound, simulated=None,
                  simulator: Simulator | None = None) -> Infeasible:
    """Exit 3: no batch fits (at batch 1 it is the tiers; else the latency bound)."""
    from memsim.planners.diagnose import diagnose

    if bound is not None and estimates.get(1) is not None and estimates[1] > bound:
        return Infeasible(Diagnosis(
            f"no batch size's plan finishes within max_latency_s {bound:g} s (batch 1's estimate "
            f"is {estimates[1]:.6g} s)",
            suggestions=["raise inference.max_latency_s", "add faster tiers or links"]))
    if bound is not None and simulated:
        fastest = min((ev.result.step_time_s for ev in simulated.values() if ev.feasible),
                      default=None)
        what = f"the fastest simulated takes {fastest:.6g} s" if fastest else "none fits"
        return Infeasible(Diagnosis(
            f"no batch size's simulated plan finishes within max_latency_s {bound:g} s ({what})",
            suggestions=["raise inference.max_latency_s"]))
    return Infeasible(diagnose(system, trace, {}, 5.0, simulator=simulator))
