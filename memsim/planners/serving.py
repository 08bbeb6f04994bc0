"""The serving model: weight placement, KV pool, concurrency and swap budget for a batching server.

For each candidate ``max_num_seqs`` (outside the LP, like FlexGen's batch sizes), an LP chooses
the weight split over tiers, the KV pool on the GPU (≥ the concurrent sequences' mean context,
or the tokens ``serving.kv_budget`` keeps of it),
and the swap budget on the host (vLLM's ``swap_space``), minimising the decode iteration time
(roofline: weight + KV bytes through HBM, FLOPs, weights streamed over the links). The candidate
with the most tokens/s wins; the simulator then runs the real scheduler on the real requests.
"""

from __future__ import annotations

import math
import statistics

import pulp

from memsim.contracts.plan import Plan, ServingPolicy
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
from memsim.planners.profile import Profile
from memsim.planners.solver import solve, value
from memsim.planners.space import Space
from memsim.workloads.moe import weight_bytes_read
from memsim.workloads.trace import TokenCosts, Trace


def token_costs(trace: Trace) -> TokenCosts:
    raw = trace.meta.get("token_costs")
    if raw is None:
        raise ValueError(f"serving trace {trace.name!r} has no meta.token_costs")
    return raw if isinstance(raw, TokenCosts) else TokenCosts(**raw)


def _iterations(req, max_num_seqs: int, batched: int, output: float) -> float:
    """Scheduler iterations to serve every request: decode steps of ``max_num_seqs`` sequences at
    a time plus prefill chunks of ``max_num_batched_tokens``; each streams the weights once."""
    out_tokens = sum(req.output_len) if req else max_num_seqs * output
    prompt_tokens = sum(req.prompt_len) if req else 0
    return out_tokens / max_num_seqs + prompt_tokens / max(batched, 1)


def kept_tokens(req, cap: int, prompt: float, output: float) -> tuple[float, float]:
    """(tokens of KV a request holds at its end, mean tokens a decode step attends to) under a
    ``serving.kv_budget`` of ``cap`` tokens per request, averaged over the requests: the pool and
    the KV reads count the kept tokens only, as the simulator's scheduler does (``kv_cap``).
    Decode runs the context from p to p + o; its mean under the cap is the mean of
    min(p + t, cap) over t in [0, o] (p + o/2 where the cap does not bind)."""
    pairs = list(zip(req.prompt_len, req.output_len, strict=True)) if req and len(req) else [(prompt, output)]
    held = ctx = 0.0
    for p, o in pairs:
        held += min(p + o, cap)
        if p >= cap:
            ctx += cap
        elif p + o <= cap:
            ctx += p + o / 2
        else:  # the context grows to the cap, then stays there
            k = cap - p
            ctx += (k * (p + k / 2) + (o - k) * cap) / o
    return held / len(pairs), ctx / len(pairs)


def scheduler_defaults(trace: Trace) -> dict:
    return dict(trace.meta.get("scheduler") or {})


def solve_serving(
    system: System,
    trace: Trace,
    prof: Profile,
    space: Space,
    max_num_seqs: int,
    time_limit: float,
    slack: bool | set[str] = False,
) -> Candidate:
    tc = token_costs(trace)
    g, gpu = system.fast_tier, system.gpu or system.cpu
    req = trace.requests
    prompt = statistics.fmean(req.prompt_len) if req and len(req) else 512
    output = statistics.fmean(req.output_len) if req and len(req) else 128
    sched = scheduler_defaults(trace)
    batched = int(sched.get("max_num_batched_tokens") or 8192)
    prob = pulp.LpProblem("serving", pulp.LpMinimize)
    w = {t: prob.add_variable(f"w_{t}", 0, 1) for t in space.tiers["weight"]}
    s = {t: prob.add_variable(f"s_{t}", 0, space.slack_cap.get(t)) for t in slack_tiers(system, slack)}
    prob += pulp.lpSum(w.values()) == 1, "sum_weight"
    held, ctx = prompt + output, prompt + output / 2
    budget = trace.meta.get("kv_budget")
    if budget:  # serving.kv_budget: a request keeps at most cap tokens (memsim.sim.scheduler)
        held, ctx = kept_tokens(req, int(budget["cap"]), prompt, output)
    kv_need = max_num_seqs * held * tc.kv_bytes_per_token
    depth = space.prefetch_depth + 1
    per_layer_w = tc.weight_bytes / max(tc.layers, 1)
    gpu_use = (
        tc.weight_bytes * w.get(g, 0)
        + depth * per_layer_w * (1 - w.get(g, 0))
        + kv_need
        + tc.activation_bytes_per_token * batched
    )
    _cap(prob, space, g, gpu_use, s)
    host = system.cpu.memory if system.cpu else None
    swap = prob.add_variable("swap_bytes", 0, kv_need) if host and host != g else None
    for t in system.tiers:
        if t == g:
            continue
        use = tc.weight_bytes * w.get(t, 0) + (swap if swap is not None and t == host else 0)
        _cap(prob, space, t, use, s)
    it = prob.add_variable("T_iter", 0)
    hbm_bw = gpu.mem_bw * gpu.memory_efficiency
    read_w = weight_bytes_read(tc, max_num_seqs)  # MoE: the experts a decode batch routes to
    prob += it >= (read_w * w.get(g, 0) + max_num_seqs * ctx * tc.kv_bytes_per_token) / hbm_bw
    flops = max_num_seqs * (tc.flops_per_token + tc.attn_flops_per_token_ctx * ctx)
    prob += it >= flops / gpu.rate("matmul", "decode", str(trace.meta.get("dtype", "bf16")))
    iterations = _iterations(req, max_num_seqs, batched, output)
    if space.max_step is not None:  # the estimate below: iterations × iteration time, and tails
        prob += it * iterations <= space.max_step, "target"
        if req and len(req):
            prob += it <= min((space.max_step - a) / max(o, 1) for a, o in zip(req.arrival_s, req.output_len,
                                                                             strict=True)), "target_tail"
    fl = Flows(system)
    for t in system.tiers:
        if t != g:
            fl.add(t, g, read_w * w.get(t, 0))
    for name, rate, terms in fl.loads():
        prob += it >= pulp.lpSum(terms) * (1.0 / rate), f"load_{safe_name(name)}"
    if slack:
        prob += pulp.lpSum(slack_price(system, t) * v for t, v in s.items()) + 1e-6 * it
    else:
        # tie-breaks, far below the solver's tolerance on ``it``: slower tiers last, a larger swap budget
        tidy = pulp.lpSum(slowness(fl, t, g) * v for t, v in w.items() if t != g)
        prob += it + 1e-4 * (tc.weight_bytes / hbm_bw) * tidy - (1e-15 * swap if swap is not None else 0)
    info = solve(prob, time_limit, space.gap)
    if not info.ok:
        return Candidate(None, math.inf, info)
    placement = {"weight": normalise({t: value(v) for t, v in w.items() if value(v) > 1e-6})}
    placement = {c: sp for c, sp in placement.items() if sp != {g: 1.0}}
    swap_bytes = int(value(swap)) if swap is not None else 0
    policy = ServingPolicy(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=batched,
        block_size=int(sched.get("block_size") or 16),
        preempt="swap" if swap_bytes > 0 else "recompute",
        swap_tier=host if swap_bytes > 0 else None,
        swap_bytes=swap_bytes,
    )
    plan = Plan(placement=placement, serving=policy, prefetch_depth=space.prefetch_depth)
    est = iterations * value(it)
    if req and len(req):  # no request finishes before its output_len iterations after it arrives
        est = max(est, max(a + o * value(it) for a, o in zip(req.arrival_s, req.output_len, strict=True)))
    return Candidate(plan, est, info, {t: value(v) * GIB for t, v in s.items()} if slack else None)


def _cap(prob, space: Space, tier: str, expr, slack: dict) -> None:
    cap_constraint(prob, space.caps[tier], expr, slack.get(tier), f"cap_{tier}")
