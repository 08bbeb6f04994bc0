"""``plan``: run a planner, simulate its plan and every applicable baseline, report them side by side.

The planner's own estimate is a search model; the figures a user sees are the simulator's. Two
guards make the MIP honest: if its plan overflows a tier in the simulator, the tier's capacity is
cut by the overflow and the MIP re-solved (the model missed a peak); if a baseline simulates
faster, that baseline's plan is returned and the notes and ``planner.status`` say so.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable

from memsim.contracts.plan import trace_fingerprint
from memsim.contracts.report import Evaluated, PlanReport
from memsim.contracts.simulator import Simulator
from memsim.errors import Infeasible, SpecError
from memsim.hardware.spec import System
from memsim.planners import mip, nearmiss
from memsim.planners.diagnose import diagnose
from memsim.planners.registry import Preset, list_presets, load_preset, run_preset
from memsim.planners.upgrade import Rebuild, buyable_upgrade
from memsim.units import fmt_bytes
from memsim.workloads.trace import Trace

Progress = Callable[[str], None]
REPAIRS = 4  # re-solves of one structure after the simulator finds an overflow
TOP = 4  # MIP structures simulated, best estimates first
SEARCH_KINDS = ("mip", "flexgen")


def plan(
    system: System,
    trace: Trace,
    planner: str = "mip",
    *,
    simulator: Simulator,
    time_limit: float = 10.0,
    baselines: bool = True,
    progress: Progress | None = None,
    rebuild: Rebuild | None = None,
) -> PlanReport:
    """Run ``planner`` (a preset name, a preset file or a registry kind), simulate its plan and the
    baselines; raise ``Infeasible`` with a diagnosis when no plan fits. ``rebuild`` (extra
    ``--set`` lines → the workload's Trace) lets a throughput target try more GPUs. ``simulator``
    scores every plan (``memsim.api.plan`` passes the simulator's)."""
    if trace.meta.get("batch_size_auto"):  # the batch is searched too: memsim/planners/batch.py
        from memsim.planners.batch import plan_batch

        return plan_batch(system, trace, planner, time_limit, baselines, progress or (lambda _m: None),
                          rebuild, simulator)
    return _plan(system, trace, planner, time_limit, baselines, progress or (lambda _msg: None), rebuild,
                 simulator)


def _plan(system: System, trace: Trace, planner: str, time_limit: float, baselines: bool,
          say: Progress, rebuild: Rebuild | None, sim: Simulator) -> PlanReport:
    preset = load_preset(planner)
    if preset.kind == "layouts":  # the layout itself is searched: the report has that layout's trace
        from memsim.planners.layouts import plan_layouts

        try:
            return plan_layouts(system, trace, preset.options, say, sim)
        except mip.NotApplicable as exc:
            raise SpecError(f"planner {preset.name!r}: {exc}", key="--planner") from None
    if sim.runs_parallel(trace, system):  # layouts beyond data parallelism or one node
        from memsim.planners.layouts import plan_parallel

        return plan_parallel(system, trace, say, sim)
    upgrade = None
    if "target_tokens_per_s" in preset.options:  # min hardware cost subject to a throughput target
        target = _target(preset.options["target_tokens_per_s"], planner)
        options = {k: v for k, v in preset.options.items() if k != "target_tokens_per_s"}
        preset = preset.model_copy(update={"options": options})
        say("planning buyable upgrades")
        def score(s: System, t: Trace) -> Evaluated:
            return _planned(preset, s, t, time_limit, say, sim)

        upgrade = buyable_upgrade(system, trace, target, score,
                                  options, time_limit, rebuild)
        system, trace = upgrade.system, upgrade.trace
    say(f"solving {preset.name}")
    try:
        chosen = _planned(preset, system, trace, time_limit, say, sim)
    except mip.NotApplicable as exc:
        raise SpecError(f"planner {preset.name!r} does not apply to this {trace.kind} workload: {exc}",
                        key="--planner") from None
    others = (
        [_evaluate(p, system, trace, time_limit, say, sim) for p in _baselines(preset, trace)]
        if baselines else []
    )
    others = [b for b in others if b is not None]
    best = min((b for b in others if b.feasible), key=lambda b: b.result.step_time_s, default=None)
    # the MIP never returns a plan slower than a baseline; a named baseline is shown as it is
    fallback = None
    if preset.kind == "mip" and best is not None and (
        not chosen.feasible or best.result.step_time_s < chosen.result.step_time_s * (1 - 1e-9)
    ):
        fallback = _fallback_doc(chosen, best)
        chosen = _fall_back(chosen, best, fallback["summary"])
    if not chosen.feasible:
        say("diagnosing")
        ran = next((e.result for e in (chosen, *others) if e.result is not None), None)
        diagnosis = diagnose(
            system, trace, preset.options if preset.kind == "mip" else {}, min(time_limit, 5.0), result=ran,
            simulator=sim)
        if chosen.result is not None and chosen.result.oom and not diagnosis.shortfalls:
            # the planner's model fits; the simulator saw a peak it does not: report the simulator's
            diagnosis.shortfalls = _sim_shortfalls(chosen.result)
            s = diagnosis.shortfalls[0]
            diagnosis.suggestions.insert(0, f"add {fmt_bytes(_gib_up(s.short_bytes))} of {s.tier} "
                                            f"(the simulator's overflow)")
        exc = Infeasible(diagnosis)
        exc.payload = {
            "planner": {"name": preset.name, "status": "infeasible"},
            "baselines": [b.to_dict() for b in others],
        }
        raise exc
    chosen.plan.workload, chosen.plan.fingerprint = trace.name, trace_fingerprint(trace)
    _flag_disagreement(chosen)
    if upgrade is not None:
        chosen.plan.notes.append(f"planned on the first upgrade for {upgrade.target_tokens_per_s:g} "
                                 f"tokens/s: {'; '.join(upgrade.notes)}")
    return PlanReport(system, trace, chosen.plan, chosen.result, others, upgrade, fallback)


def _target(value, planner: str) -> float:
    """``options.target_tokens_per_s`` as a positive finite number, else exit 2 naming it."""
    try:
        target = float(value)
    except (TypeError, ValueError):
        target = math.nan
    if not math.isfinite(target) or target <= 0:
        raise SpecError(f"target_tokens_per_s must be a positive number of tokens/s, got {value!r}",
                        file=str(planner), key="options.target_tokens_per_s")
    return target


def _planned(preset: Preset, system: System, trace: Trace, time_limit: float, say: Progress,
             sim: Simulator) -> Evaluated:
    """The preset's plan, simulated. Search kinds (mip, flexgen) go through ``_searched``.
    Baselines and candidates that are one simulation are run once by the simulator's own
    content-hash cache (memsim.sim.memo), not by a second cache here."""
    if preset.kind in SEARCH_KINDS and trace.kind in preset.applies_to:
        return _searched(preset, system, trace, time_limit, say, TOP, sim)
    plan_ = run_preset(preset, system, trace, time_limit)
    say(f"simulating {preset.name}")
    return Evaluated(preset.name, plan_, sim.simulate(system, trace, plan_))


def _searched(preset: Preset, system: System, trace: Trace, time_limit: float, say: Progress,
              top: int, sim: Simulator) -> Evaluated:
    """Simulate the ``top`` structures with the best estimates and keep the fastest that fits.

    A plan that overflows a tier in the simulator (a peak the model did not see) is re-solved in
    its structure with that tier cut by the overflow, up to ``REPAIRS`` times."""
    if preset.kind == "flexgen" and trace.kind != "inference":
        raise mip.NotApplicable("FlexGen's policy search is for offloaded inference")
    options = mip.search_options(preset.kind, preset.options)
    found = mip.search(system, trace, options, time_limit)
    score = sim.score(system, trace)
    solve_s = found.solve_s
    tried: list[tuple] = []
    for label, cand in _shortlist(found, top):
        say(f"simulating {preset.name}: {label}")
        plan_, result, cut, notes = cand.plan, score(cand.plan), {}, []
        for _ in range(REPAIRS):
            if result.feasible or result.oom is None:
                break
            oom = result.oom
            short = _overflow(result)[1]  # the tier's full demand over capacity, not the first OOM's
            # grow the cut faster than the overflow: a re-solved plan moves its peak a little
            cut[oom.tier] = 2 * cut.get(oom.tier, 0) + int(short * 1.1) + (64 << 20)
            say(f"re-solving {label}: {oom.tier} overflowed by {fmt_bytes(short)}")
            again = mip.search(system, trace, {**options, "_cut": dict(cut)}, time_limit, only=label)
            solve_s += again.solve_s
            if again.best is None:
                break
            cand, plan_ = again.best, again.best.plan
            notes = [f"re-solved {label} with {oom.tier} cut by {fmt_bytes(cut[oom.tier])}: the simulator "
                     f"found a peak the model did not count"]
            result = score(plan_)
        closed = nearmiss.close(mip.planning_view(system, trace), trace, plan_, result, score)
        if closed is not None:
            plan_, result, note = closed
            cand, notes = dataclasses.replace(cand, plan=plan_), [*notes, note]
        tried.append((cand, plan_, result, label, notes))
    if not tried:
        return Evaluated(preset.name, mip.finish(preset.name, found, None, solve_s), None,
                         "its search found nothing that fits")
    fits = [t for t in tried if t[2].feasible]
    if fits:
        cand, _, result, label, notes = min(fits, key=lambda t: t[2].step_time_s)
    else:  # none fits: the one that misses by the least
        cand, _, result, label, notes = min(tried, key=lambda t: _overflow(t[2])[1])
    plan_ = mip.finish(preset.name, found, cand, solve_s)
    plan_.notes.extend(notes)
    what = "structure" if len(tried) == 1 else "structures"
    if not fits:
        tier, short = _overflow(result)
        plan_.notes.append(f"none of the {len(tried)} {what} simulated fits; the closest, {label}, "
                           f"overflows {tier} by {fmt_bytes(short)}")
    elif top > 1:
        plan_.notes.append(f"simulated the {len(tried)} {what} with the best estimates; kept {label} "
                           f"(estimate {cand.estimate_s:.6g} s, simulated {result.step_time_s:.6g} s)")
    return Evaluated(preset.name, plan_, result, label=label)


def _overflow(result) -> tuple[str, float]:
    """(tier, bytes over capacity) of a simulated Result; ("", inf) when it says nothing."""
    return nearmiss.overflow(result) or ("", float("inf"))


def _shortlist(found: mip.Search, top: int) -> list[tuple[str, object]]:
    """The ``top`` candidates to simulate: the best estimate of each family first (optimizer
    device, CPU attention, offloaded activations or not: choices whose cost the simulator may see
    differently, through copy-queue backlogs the stage model averages away), then by estimate."""
    ranked = sorted(((lb, c) for lb, c in found.candidates if c.plan is not None),
                    key=lambda lc: lc[1].estimate_s)
    chosen: list[tuple[str, object]] = []
    families: set[tuple] = set()
    for label, cand in ranked:
        family = (cand.plan.optimizer_device, cand.plan.cpu_attention, cand.plan.activation_tier is None)
        if family not in families and len(chosen) < top:
            families.add(family)
            chosen.append((label, cand))
    for label, cand in ranked:
        if len(chosen) >= top:
            break
        if all(label != lb for lb, _ in chosen):
            chosen.append((label, cand))
    return sorted(chosen, key=lambda lc: lc[1].estimate_s)


def _baselines(chosen: Preset, trace: Trace) -> list[Preset]:
    return [p for p in list_presets() if p.baseline and p.name != chosen.name and trace.kind in p.applies_to]


def _evaluate(
    preset: Preset, system: System, trace: Trace, time_limit: float, say: Progress, sim: Simulator
) -> Evaluated | None:
    say(f"baseline {preset.name}")
    try:
        if preset.kind in SEARCH_KINDS:
            return _planned(preset, system, trace, time_limit, say, sim)
        plan_ = run_preset(preset, system, trace, time_limit)
    except mip.NotApplicable:
        return None
    if plan_.planner.status == "infeasible":
        return Evaluated(preset.name, plan_, None, "its search found nothing that fits")
    return Evaluated(preset.name, plan_, sim.simulate(system, trace, plan_))


def _fallback_doc(chosen: Evaluated, best: Evaluated) -> dict:
    """What ``plan --json`` says under ``fallback``: the planner's own best plan and why the
    baseline ``best`` is shown instead (it overflows a tier, or it simulates slower)."""
    est = chosen.plan.planner.estimate_s if chosen.plan else None
    doc = {"planner": chosen.name, "structure": chosen.label or None, "estimate_s": est,
           "feasible": chosen.feasible, "step_time_s": chosen.step_time_s,
           "overflow_tier": None, "overflow_bytes": None, "baseline": best.name,
           "baseline_step_time_s": best.result.step_time_s}
    where = f" ({chosen.label})" if chosen.label else ""
    if chosen.feasible:
        doc["summary"] = (f"best {chosen.name} plan{where} simulates at "
                          f"{chosen.result.step_time_s:.6g} s; fallback {best.name} at "
                          f"{best.result.step_time_s:.6g} s is faster and is shown")
        return doc
    tier, short = _overflow(chosen.result)
    then = f"fallback {best.name} (simulated {best.result.step_time_s:.6g} s) is shown"
    if tier:
        doc["overflow_tier"], doc["overflow_bytes"] = tier, int(short)
        at = f", estimate {est:.6g} s," if est else ""
        doc["summary"] = (f"best {chosen.name} plan{where}{at} overflows {tier} by "
                          f"{fmt_bytes(short)} in the simulator; {then}")
    else:
        doc["summary"] = f"the {chosen.name} search found no plan that fits; {then}"
    return doc


def _fall_back(chosen: Evaluated, best: Evaluated, why: str) -> Evaluated:
    """The baseline's plan under the planner's name, its notes the baseline's own and ``why``
    (the planner's notes described a plan that is not shown), no MIP estimate (it was not
    this plan's)."""
    plan_ = copy.deepcopy(best.plan)
    mine = chosen.plan.planner if chosen.plan else None
    plan_.notes = [why, *best.plan.notes]
    if mine is not None:
        plan_.planner = copy.deepcopy(mine)
        plan_.planner.status = f"baseline:{best.name}"
        plan_.planner.objective = plan_.planner.estimate_s = None
    return Evaluated(chosen.name, plan_, best.result)


DISAGREE = 0.25  # relative difference between the MIP's estimate and the simulation worth a note


def _flag_disagreement(chosen: Evaluated) -> None:
    """Say so when the search model and the simulator disagree by more than ``DISAGREE``: the
    plan may be good for the wrong reason (a cost one of them does not see)."""
    est = chosen.plan.planner.estimate_s
    sim = chosen.result.step_time_s if chosen.feasible else None
    if est and sim and abs(sim - est) > DISAGREE * sim:
        chosen.plan.notes.append(
            f"MIP estimate {est:.6g} s and simulation {sim:.6g} s differ by {(sim - est) / sim:+.0%}: "
            f"compare the simulator's breakdown and link_busy with the MIP's stage model (docs/planner.md)")


def _gib_up(nbytes: float) -> int:
    return max(1, -(-int(nbytes) // 2**30)) * 2**30


def _sim_shortfalls(result):
    """Every tier whose simulated demand (peak, counted past the first OOM) exceeds it."""
    from memsim.errors import Shortfall

    over = [Shortfall(t, int(p), int(result.capacity_bytes[t])) for t, p in sorted(result.peak_bytes.items())
            if t in result.capacity_bytes and p > result.capacity_bytes[t]]
    oom = result.oom
    return over or [Shortfall(oom.tier, oom.needed_bytes, oom.capacity_bytes)]
