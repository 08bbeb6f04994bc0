"""Close a near-miss: a plan the simulator finds overflowing a tier by a little is edited to free
exactly that many bytes, the cheapest way, and simulated again.

Why: the MIP's re-solve after an overflow (``report._searched``) cuts the tier's capacity and
solves again, but a re-solved plan moves its peak, and four re-solves can still end a few hundred
MiB over (Llama-3-70B, ZeRO-3 on 8 ranks: 125 MiB over 80 GiB, and then a 6× slower baseline
was returned). The overflow is known in bytes, so free that many directly: move that many bytes
of a placed class (weights, optimizer states, gradients, KV) to a slower tier with room, or
recompute (or offload) the activations of just enough more layers. Each edit is simulated; the
fastest that fits wins. Every figure still comes from the simulator.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

from memsim.contracts.plan import Plan
from memsim.hardware.spec import System
from memsim.planners.lp import normalise
from memsim.units import fmt_bytes
from memsim.workloads.trace import Trace

NEAR = 0.10  # an overflow up to this fraction of the tier's capacity counts as a near miss
ROUNDS = 3  # edit, simulate, edit again from the closest: a freed byte can move the peak too
MARGIN = 1.02  # free 2% more than the overflow (plus SLACK): the edit itself shifts the peak a little
SLACK = 16 << 20
MOVABLE = ("weight", "optimizer", "grad", "kv")  # persistent first: they free at every instant


def overflow(result) -> tuple[str, int] | None:
    """The tier that overflowed and its full shortfall (demand past the first OOM counted)."""
    oom = getattr(result, "oom", None)
    if result is None or result.feasible or oom is None:
        return None
    tier = oom.tier
    over = result.peak_bytes.get(tier, 0) - result.capacity_bytes.get(tier, 0)
    return tier, max(int(over), int(oom.short_bytes))


def close(view: System, trace: Trace, plan: Plan, result,
          simulate: Callable[[Plan], object]) -> tuple[Plan, object, str] | None:
    """A fitting edit of ``plan`` (its Result and a note saying what was freed), or None.
    ``view`` is the system as one rank sees it (the simulator's view)."""
    for _ in range(ROUNDS):
        miss = overflow(result)
        if miss is None:
            break
        tier, short = miss
        if short > NEAR * result.capacity_bytes.get(tier, 0):
            break
        need = int(short * MARGIN) + SLACK
        tried = [(edited, simulate(edited), what)
                 for edited, what in _edits(view, trace, plan, result, tier, need)]
        fits = [t for t in tried if t[1].feasible]
        if fits:
            edited, res, what = min(fits, key=lambda t: t[1].step_time_s)
            note = (f"closed a near miss: {tier} overflowed by {fmt_bytes(short)}; {what} "
                    f"(simulated {res.step_time_s:.6g} s)")
            return edited, res, note
        closer = [t for t in tried if (overflow(t[1]) or (tier, math.inf))[1] < short]
        if not closer:
            break
        plan, result, _ = min(closer, key=lambda t: overflow(t[1])[1])
    return None


def _edits(view: System, trace: Trace, plan: Plan, result, tier: str, need: int):
    """Each edit that frees ``need`` bytes of ``tier``, with a phrase saying what it does."""
    fast = view.fast_tier
    totals = trace.bytes_by_class()
    # tiers with room, fastest first: moved bytes cost least where they stream in fastest
    spare = {t: result.capacity_bytes[t] - result.peak_bytes.get(t, 0)
             for t in sorted(view.tiers, key=lambda t: -view.tiers[t].read_bw)
             if t in result.capacity_bytes}
    for cls in MOVABLE:
        total = totals.get(cls, 0)
        home = plan.home(cls, fast)
        here = home.get(tier, 0.0) * total
        if total <= 0 or here < need:
            continue
        to = _spill_tier(home, spare, tier, need)
        if to is None:
            continue
        moved = need / total
        split = dict(home)
        split[tier] = max(0.0, split[tier] - moved)
        split[to] = split.get(to, 0.0) + moved
        edited = copy.deepcopy(plan)
        edited.placement[cls] = normalise(split)
        yield edited, f"moved {fmt_bytes(need)} of {cls} from {tier} to {to}"
    if tier != fast or trace.kind != "training":
        return
    acts = trace.meta.get("activation_bytes_per_layer") or {}
    freed = (acts.get("total") or 0) - (acts.get("input") or 0)  # recompute keeps the input
    layers = int(trace.meta.get("layers") or 0)
    kept = [layer for layer in range(layers) if plan.policy(layer) == "keep"]
    if freed <= 0 or not kept:
        return
    count = min(len(kept), -(-need // freed))
    policies = [("recompute", "recomputed")]
    if plan.activation_tier is not None:
        policies.append(("offload", f"offloaded to {plan.activation_tier}"))
    for policy, verb in policies:
        edited = copy.deepcopy(plan)
        for layer in kept[:count]:  # the earliest: their activations live longest
            edited.layer_policy[layer] = policy
        yield edited, f"{verb} the activations of {count} more layer{'s' * (count != 1)}"


def _spill_tier(home: dict[str, float], spare: dict[str, int], tier: str, need: int) -> str | None:
    """Where the moved bytes go: a tier the class already uses, else any other with room."""
    options = [t for t in spare if t != tier and spare[t] >= need]
    used = [t for t in options if home.get(t, 0) > 0]
    return (used or options or [None])[0]

