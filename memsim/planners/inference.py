"""The inference model: FlexGen's policy search, over any tiers and links.

FlexGen (Sheng et al., ICML 2023, §4.2) enumerates the GPU batch size and the number of GPU
batches outside its LP and solves an LP over the placement percentages for each. We do the same:
for each factorisation ``batch = gpu_batch_size × num_gpu_batches`` and each choice of CPU
attention, an LP over the fraction of weights and KV cache on each tier, with per-layer stage
times ≥ compute and ≥ every copy resource's load (weights loaded once per layer per block and
reused by every GPU batch; KV homed off the GPU streamed to it each decode step unless the CPU
computes attention next to it). Objective: total time of prefill + every decode step, i.e. max
tokens/s for the trace's fixed token count.
"""

from __future__ import annotations

import math

import pulp

from memsim.contracts.names import template
from memsim.contracts.plan import Plan
from memsim.hardware.spec import System
from memsim.planners.flows import Flows, slowness
from memsim.planners.lp import (
    GIB,
    Candidate,
    cap_constraint,
    normalise,
    safe_name,
    slack_price,
    slack_tiers,
)
from memsim.planners.profile import Profile, phase_split_times, tie_scale
from memsim.planners.solver import solve, value
from memsim.planners.space import Space
from memsim.workloads.trace import Trace


def batch_splits(batch: int, limit: int) -> list[int]:
    """Numbers of GPU batches to try: the divisors of the batch up to ``limit``."""
    return [n for n in range(1, min(batch, limit) + 1) if batch % n == 0]


def routed_weight_bytes(trace: Trace, layer_weight: float) -> dict[str, float]:
    """Weight bytes of one layer a prefill / decode pass streams: all, except that an MoE layer
    reads only the routed experts its tokens pick (``meta["routed_experts"]``, memsim.workloads.moe)."""
    routed = trace.meta.get("routed_experts")
    if not routed:
        return {"prefill": layer_weight, "decode": layer_weight}
    experts = trace.tensors[template(routed["tensor"])].bytes
    return {phase: layer_weight - experts * (1 - min(1.0, routed["read_fraction"].get(phase, 1.0)))
            for phase in ("prefill", "decode")}


def structures(system: System, trace: Trace, prof: Profile, space: Space) -> list[tuple[int, bool]]:
    host = system.cpu.memory if system.cpu else None
    attn = [
        a for a in space.cpu_attention if not a or (host in space.tiers["kv"] and host != system.fast_tier)
    ]
    return [(nb, ca) for nb in batch_splits(prof.batch, space.max_gpu_batches) for ca in attn or [False]]


def solve_inference(
    system: System,
    trace: Trace,
    prof: Profile,
    space: Space,
    num_batches: int,
    cpu_attention: bool,
    time_limit: float,
    slack: bool | set[str] = False,
) -> Candidate:
    g = system.fast_tier
    host = system.cpu.memory if system.cpu else g
    prob = pulp.LpProblem("inference", pulp.LpMinimize)
    x = {c: {t: prob.add_variable(f"x_{c}_{t}", 0, 1) for t in space.tiers[c]} for c in ("weight", "kv")}
    s = {t: prob.add_variable(f"s_{t}", 0, space.slack_cap.get(t)) for t in slack_tiers(system, slack)}
    for cls, split in x.items():
        prob += pulp.lpSum(split.values()) == 1, f"sum_{cls}"
    if cpu_attention:  # FlexGen's CPU attention: the KV cache stays next to the CPU
        prob += x["kv"].get(host, 0) == 1, "kv_on_host"

    def frac(cls: str, tier: str):
        return x[cls].get(tier, 0)

    total, layer, L = prof.total, prof.layer, prof.layers
    depth = space.prefetch_depth + 1
    # KV of the layers in flight for one GPU batch: written by prefill, streamed in by decode;
    # with one GPU batch the staging is a ring (memsim.sim.engine) that also holds the
    # prefetch_depth layers whose appends are being written behind
    behind = space.prefetch_depth if num_batches == 1 else 0
    kv_stream = (depth + behind) * layer["kv"] / num_batches * (1 - frac("kv", g))
    # per-layer scratch splits over GPU batches; non-layer scratch reused by every layer (act,
    # logits) is one buffer the GPU batches share at 1/n; state carried between layers (hidden)
    # has an instance of 1/n per GPU batch, the full bytes in all
    shared = prof.other_shared
    scratch = (prof.transient + prof.saved + prof.ckpt + shared) / num_batches + prof.other_total - shared
    gpu_use = (
        total["weight"] * frac("weight", g)
        + total["kv"] * frac("kv", g)
        + depth * layer["weight"] * (1 - frac("weight", g))
        + kv_stream
        + scratch
    )
    _cap(prob, space, g, gpu_use, s)
    for t in system.tiers:
        if t != g:
            _cap(prob, space, t, total["weight"] * frac("weight", t) + total["kv"] * frac("kv", t), s)

    times = phase_split_times(system, trace, num_batches, cpu_attention)
    tp, td = prob.add_variable("T_prefill", 0), prob.add_variable("T_decode", 0)
    prob += tp >= times["prefill_gpu"], "compute_prefill"
    prob += td >= times["decode_gpu"], "compute_decode"
    prob += td >= times["decode_cpu"], "cpu_decode"
    ctx = int(trace.meta.get("prompt_len") or 0) + int(trace.meta.get("gen_len") or 0)
    prompt_len, gen_len = int(trace.meta.get("prompt_len") or 0), int(trace.meta.get("gen_len") or 0)
    prompt_share = prompt_len / ctx if ctx else 1.0
    decode_share = (prompt_len + gen_len / 2) / ctx if ctx else 1.0
    chunks = max(prof.prefill_iters, 1)
    fp, fd = Flows(system), Flows(system)
    streamed = routed_weight_bytes(trace, layer["weight"])
    for t in system.tiers:
        if t == g:
            continue
        fp.add(t, g, streamed["prefill"] * frac("weight", t))
        fd.add(t, g, streamed["decode"] * frac("weight", t))
        # each prompt chunk writes its share of the prompt's KV and, after the first, reads the
        # context so far (half the prompt on average) back for its attention
        fp.add(g, t, layer["kv"] * prompt_share / chunks * frac("kv", t))
        if chunks > 1:
            fp.add(t, g, layer["kv"] * prompt_share / 2 * frac("kv", t))
        if not cpu_attention:  # a decode step reads the context so far: prompt + gen/2 on average
            fd.add(t, g, layer["kv"] * decode_share * frac("kv", t))
        fd.add(g, t, (layer["kv"] / ctx if ctx else 0) * frac("kv", t))
    for stage, fl in ((tp, fp), (td, fd)):
        for name, rate, terms in fl.loads():
            prob += stage >= pulp.lpSum(terms) * (1.0 / rate), f"load_{stage.name}_{safe_name(name)}"
    other = prof.time.get("prefill_other", 0) + prof.time.get("decode_other", 0)
    step = L * chunks * tp + L * max(prof.decode_iters, 0) * td + other
    if space.max_step is not None:
        prob += step <= space.max_step, "target"
    if slack:
        prob += pulp.lpSum(slack_price(system, t) * v for t, v in s.items()) + 1e-6 * step
    else:
        tidy = pulp.lpSum(slowness(fp, t, g) * v for c in x for t, v in x[c].items() if t != g)
        prob += step + 1e-5 * tie_scale(prof) * tidy
    info = solve(prob, time_limit, space.gap)
    if not info.ok:
        return Candidate(None, math.inf, info)
    placement = {
        c: normalise({t: value(v) for t, v in split.items() if value(v) > 1e-6}) for c, split in x.items()
    }
    placement = {c: sp for c, sp in placement.items() if sp != {g: 1.0}}
    plan = Plan(
        placement=placement,
        prefetch_depth=space.prefetch_depth,
        gpu_batch_size=prof.batch // num_batches,
        num_gpu_batches=num_batches,
        cpu_attention=cpu_attention,
    )
    est = L * chunks * value(tp) + L * max(prof.decode_iters, 0) * value(td) + other
    return Candidate(plan, est, info, {t: value(v) * GIB for t, v in s.items()} if slack else None)


def _cap(prob, space: Space, tier: str, expr, slack: dict) -> None:
    cap_constraint(prob, space.caps[tier], expr, slack.get(tier), f"cap_{tier}")
