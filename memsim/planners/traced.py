"""The MILP for traced graphs (``memsim trace --train``): keep, recompute or offload per stage.

Checkmate (Jain et al., "Checkmate: Breaking the Memory Wall with Optimal Tensor
Rematerialization", MLSys 2020) solves, for a graph of n ops, binaries R[t, i] (recompute op i in
stage t) and S[t, i] (keep i's output from stage t to t + 1) with memory accounted at every
(stage, op): O(n²) binaries. A traced 70B decoder has ~10⁴ ops, so that model would have ~10⁸
binaries. What memsim can execute is coarser anyway: the Plan's ``layer_policy`` gives each
*stage* of the staged graph (``memsim/workloads/stages.py``: a decoder block, a child of an
``nn.Sequential``) one of keep, offload (copied to a host tier after its forward, prefetched
``prefetch_depth`` stages before its backward) or recompute (its forward re-run right before its
backward from the tensors it reads from earlier stages). So the model aggregates Checkmate's
per-op decisions to per-stage ones, with memory checked at Checkmate's stage boundaries:

* binaries ``keep[k] + recompute[k] + offload[k] = 1`` for each of the S stages, and two
  fractions: of the weights and of the gradients homed on the host (the Plan's ``placement``,
  each tensor split alike; the simulator streams a stage's share in ``prefetch_depth`` stages
  ahead and copies its gradients out after its backward);
* what stage k holds on the compute tier between its forward and its backward:
  keep: its saved activations and the tensors later stages read (``|A ∪ C|``); recompute: the
  tensors later stages' forward or backward read (``|C ∪ X|``, its checkpoints, which the
  simulator keeps alive until they are read again); offload: those later stages read that are
  not saved (``|C \\ A|``);
* memory at the forward of stage i: resident state (the weights' GPU share with the allocator's
  allowance, the staging ring of ``prefetch_depth + 1`` stages' streamed weights and two of
  gradients) + Σ_{j<i} held_j + stage i's own forward peak (from its tensors' lifetimes) + the
  write-back buffer of an offloaded stage i-1; at the backward of stage i: resident state + the
  GPU share of the gradients of stages > i + stage i's own + Σ_{j<i} held_j + the larger of its
  recompute peak (when recomputed) and its backward's peak (its saved tensors and the backward's
  temporaries alive at once, from their lifetimes) + the prefetch buffer of an offloaded stage
  i-1. Each ≤ the compute tier's capacity less the runtime's reserved bytes (``space.caps``), as
  the simulator holds them.
* time: forward ≥ Σ its op times and ≥ the load of the offload copies and streamed weights on
  every link and tier they cross (``flows.Flows``); backward ≥ Σ its op times + the recomputed
  forwards and ≥ the load of the prefetches, streamed weights and gradients copied out; plus per
  stage the part of its prefetch that the previous stage's backward cannot hide, and for a stage
  whose saved tensors the next forward reads, the write-back and the fetch back it waits for.
  Op times are the simulator's roofline (``profile.op_seconds``).

Approximations, each erring towards more memory: a recomputed or kept stage's cross-stage
tensors are held until its own backward (the simulator frees some earlier); every gradient of
stages > i is counted at stage i's backward (they live to the end of the step); the streamed
weights' first stage is assumed prefetched (its load is in the link's total, not a stall). The
simulator checks every plan; an overflow it finds cuts the capacity and the model is re-solved
(``report._searched``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pulp

from memsim.contracts.names import layer_of
from memsim.contracts.plan import Plan
from memsim.hardware.spec import System
from memsim.planners.flows import Flows
from memsim.planners.lp import (
    GIB,
    Candidate,
    cap_constraint,
    normalise,
    safe_name,
    slack_price,
    slack_tiers,
)
from memsim.planners.profile import op_seconds
from memsim.planners.solver import SolveInfo, solve, value
from memsim.planners.space import Space
from memsim.workloads.stages import stageable
from memsim.workloads.trace import PERSISTENT, Trace

POLICIES = ("keep", "recompute", "offload")


@dataclass
class Stages:
    """Per-stage bytes and seconds of a staged traced graph (index k: stage k)."""

    count: int
    fwd_s: list[float]
    bwd_s: list[float]
    saved: list[int]  # A: activations of the stage a backward op reads
    held_keep: list[int]  # |A ∪ C|
    held_recompute: list[int]  # |C ∪ X|
    held_offload: list[int]  # |C \ A|
    reread: list[int]  # |C ∩ A|: saved tensors a later stage's forward reads (fetched back when offloaded)
    fwd_peak: list[int]  # the stage's own tensors alive at once during its forward (or recompute)
    bwd_peak: list[int]  # its saved tensors and backward temporaries alive at once in its backward
    grads: list[int]  # gradients its backward produces
    resident: int  # weights, gradients of no stage, inputs: alive the whole step
    weights: int = 0  # of ``resident``, the weights (what a placement may home off the GPU)
    stage_weights: list[int] = field(default_factory=list)  # weights each stage's forward reads
    labels: list[str] = field(default_factory=list)


def stage_profile(system: System, trace: Trace) -> Stages:
    """Read the per-stage quantities of the model off a staged trace (one pass over its ops)."""
    S = int(trace.meta["layers"])
    fwd_s, bwd_s = [0.0] * S, [0.0] * S
    stage_of_op: list[tuple[str, int]] = []
    fwd_last = [0] * S  # index of each stage's last forward op
    read_by: list[set[str]] = [set() for _ in range(S)]  # names each stage's forward reads
    bwd_first = [0] * S  # and its first backward op
    for block in trace.blocks:
        k = block.first_layer
        for op in block.ops:
            sec = op_seconds(system, op)
            if op.phase == "forward":
                fwd_s[k] += sec
                read_by[k].update(op.inputs)
                fwd_last[k] = len(stage_of_op)
            else:
                if not bwd_s[k]:
                    bwd_first[k] = len(stage_of_op)
                bwd_s[k] += sec
            stage_of_op.append((op.phase, k))
    life = trace.lifetimes()
    readers: dict[str, list[int]] = {}
    writer: dict[str, int] = {}
    for x in trace.expand():
        for t in x.inputs:
            readers.setdefault(t, []).append(x.index)
        for t in x.outputs:
            writer.setdefault(t, x.index)

    saved, keep, rec, off, reread = ([0] * S for _ in range(5))
    fwd_delta: list[dict[int, int]] = [dict() for _ in range(S)]
    bwd_live: dict[int, int] = {}
    grads = [0] * S
    resident = 0
    for name, (born, dies) in life.items():
        t = trace.tensor(name)
        k = layer_of(name)
        if t.cls in PERSISTENT or (k is None and t.cls not in ("grad",) and name not in writer):
            resident += t.bytes  # weights, constants and the module's inputs
            continue
        if t.cls == "grad":
            w = writer.get(name)
            if w is None:
                resident += t.bytes
            else:
                grads[stage_of_op[w][1]] += t.bytes
            continue
        if k is None:  # a backward temporary: alive from its writer to its last reader
            for i in range(born, dies + 1):
                bwd_live[i] = bwd_live.get(i, 0) + t.bytes
            continue
        reads = [stage_of_op[i] for i in readers.get(name, [])]
        is_saved = t.cls == "activation" and any(p == "backward" for p, _ in reads)
        later_fwd = any(p == "forward" and j != k for p, j in reads)
        other_bwd = any(p == "backward" and j != k for p, j in reads)
        saved[k] += t.bytes if is_saved else 0
        if is_saved:  # alive in the stage's backward until its last reader there
            for i in range(bwd_first[k], dies + 1):
                if stage_of_op[i] == ("backward", k):
                    bwd_live[i] = bwd_live.get(i, 0) + t.bytes
        keep[k] += t.bytes if (is_saved or later_fwd) else 0
        rec[k] += t.bytes if (later_fwd or other_bwd) else 0
        off[k] += t.bytes if (later_fwd and not is_saved) else 0
        reread[k] += t.bytes if (later_fwd and is_saved) else 0
        # the stage's own forward peak: its tensors from birth to their last forward read (a
        # saved one to the stage's end: what it holds from then on is counted as held)
        fwd_reads = [i for i in readers.get(name, []) if stage_of_op[i][0] == "forward"]
        end = max([born, *fwd_reads]) if not is_saved else max(fwd_last[k], born)
        d = fwd_delta[k]
        d[born] = d.get(born, 0) + t.bytes
        d[end + 1] = d.get(end + 1, 0) - t.bytes
    fwd_peak = []
    for d in fwd_delta:
        live = peak = 0
        for i in sorted(d):
            live += d[i]
            peak = max(peak, live)
        fwd_peak.append(peak)
    bwd_peak = [0] * S
    for i, b in bwd_live.items():
        k = stage_of_op[i][1]
        bwd_peak[k] = max(bwd_peak[k], b)
    weight = {n: t.bytes for n, t in trace.tensors.items() if t.cls == "weight"}
    stage_weights = [sum(weight.get(n, 0) for n in names) for names in read_by]
    return Stages(S, fwd_s, bwd_s, saved, keep, rec, off, reread, fwd_peak, bwd_peak, grads, resident,
                  weights=sum(weight.values()), stage_weights=stage_weights,
                  labels=list(trace.meta.get("stages") or []))


def structures(system: System, space: Space) -> list[str | None]:
    """Activation tiers to solve for: ``None`` (keep or recompute only), then each host tier."""
    fast = system.fast_tier
    tiers: list[str | None] = [None]
    if "offload" in space.activations:
        tiers += [t for t in space.tiers["activation"] if t != fast]
    return tiers


def jobs(view: System, trace: Trace, space: Space, slack: bool | set[str], act_scale: float):
    """``mip.search``'s jobs for a module trace: one per activation tier."""
    if stageable(trace):  # the plan's stages would not exist in the trace the simulator runs
        from memsim.planners.mip import NotApplicable

        raise NotApplicable("a traced training graph is planned in stages: load it with "
                            "memsim.workloads.load_trace or stage it with memsim.workloads.stages.stage")
    if "stages" not in trace.meta:
        return [("forward only", lambda left: _forward_only(view, trace, space, slack))]
    st = stage_profile(view, trace)
    return [(f"traced activations→{tier or 'none'}",
             lambda left, tier=tier: solve_traced(view, st, space, tier, left, slack, act_scale))
            for tier in structures(view, space)]


def solve_traced(system: System, st: Stages, space: Space, act_tier: str | None, time_limit: float,
                 slack: bool | set[str] = False, act_scale: float = 1.0) -> Candidate:
    m = _Model(system, st, space, act_tier, slack, act_scale)
    info = solve(m.prob, time_limit, space.gap)
    if not info.ok:
        return Candidate(None, math.inf, info)
    short = {t: value(s) * GIB for t, s in m.slack.items()} if slack else None
    return Candidate(m.decode(), value(m.step), info, short)


def _fragmentation() -> float:
    from memsim.hardware.overheads import runtime_data

    return float(runtime_data()["allocator"]["fragmentation"])


class _Model:
    def __init__(self, system: System, st: Stages, space: Space, act_tier: str | None,
                 slack: bool | set[str], act_scale: float):
        self.system, self.st, self.space, self.act_tier = system, st, space, act_tier
        self.g = system.fast_tier
        self.scale = act_scale
        prob = self.prob = pulp.LpProblem("traced", pulp.LpMinimize)
        allowed = (set(space.activations) - (set() if act_tier else {"offload"})) or {"keep"}
        self.x = {p: [prob.add_variable(f"{p}_{k}", 0, 1 if p in allowed else 0, cat=pulp.LpInteger)
                      for k in range(st.count)] for p in POLICIES}
        self.slack = {t: prob.add_variable(f"s_{t}", 0) for t in slack_tiers(system, slack)}
        self.zero = prob.add_variable("zero", 0, 0)
        self.host = _state_host(system, space)
        # fractions of the weights and gradients homed on the host tier (streamed per stage)
        self.w = prob.add_variable("w_host", 0, 1 if self.host in space.tiers["weight"] else 0)
        self.r = prob.add_variable("g_host", 0, 1 if self.host in space.tiers["grad"] else 0)
        for k in range(st.count):
            prob += pulp.lpSum(self.x[p][k] for p in POLICIES) == 1, f"one_{k}"
        self._memory()
        self.step = self._time()
        tidy = pulp.lpSum(self.x["recompute"]) + 2 * pulp.lpSum(self.x["offload"])  # ties: keep
        total = sum(st.fwd_s) + sum(st.bwd_s)
        if self.slack:
            prob += pulp.lpSum(slack_price(system, t) * v for t, v in self.slack.items()) + 1e-6 * self.step
        else:
            prob += self.step + 1e-6 * max(total, 1e-9) / max(1, st.count) * tidy

    def _held(self, k: int):
        st, x, a = self.st, self.x, self.scale
        return a * (st.held_keep[k] * x["keep"][k] + st.held_recompute[k] * x["recompute"][k]
                    + st.held_offload[k] * x["offload"][k])

    def _memory(self) -> None:
        st, x, a, g = self.st, self.x, self.scale, self.g
        w, r = self.w, self.r
        # resident bytes (and the allocator's allowance on them), the staging ring of streamed
        # weights (prefetch_depth + 1 stages, the largest) and of gradients being copied out
        base = ((st.resident - st.weights + st.weights * (1 - w)) * (1 + _fragmentation())
                + (self.space.prefetch_depth + 1) * max(st.stage_weights, default=0) * w
                + 2 * max(st.grads, default=0) * r)
        grads_from = [sum(st.grads[k:]) for k in range(st.count + 1)]
        before = 0  # Σ_{j<i} held_j, built up as i grows
        for i in range(st.count):
            buf = a * st.saved[i - 1] * x["offload"][i - 1] if i > 0 else 0
            self._cap(g, base + before + a * st.fwd_peak[i] + buf, f"fwd_{i}")
            at_bwd = base + grads_from[i + 1] * (1 - r) + before + buf
            self._cap(g, at_bwd + a * st.fwd_peak[i] * x["recompute"][i], f"rec_{i}")
            self._cap(g, at_bwd + a * st.bwd_peak[i] + st.grads[i], f"bwd_{i}")
            before = before + self._held(i)
        homes: dict[str, list] = {}
        if self.act_tier:
            homes.setdefault(self.act_tier, []).append(
                pulp.lpSum(a * st.saved[k] * x["offload"][k] for k in range(st.count)))
        if self.host:
            homes.setdefault(self.host, []).append(st.weights * w + sum(st.grads) * r)
        for tier, use in homes.items():
            self._cap(tier, pulp.lpSum(use), "home")

    def _cap(self, tier: str, expr, label: str) -> None:
        expr = pulp.lpSum([expr, self.zero])  # a row without variables is still a row
        cap_constraint(self.prob, self.space.caps[tier], expr, self.slack.get(tier), f"cap_{tier}_{label}")

    def _time(self):
        st, x, prob, a, g = self.st, self.x, self.prob, self.scale, self.g
        fwd = prob.add_variable("T_fwd", 0)
        bwd = prob.add_variable("T_bwd", 0)
        prob += fwd >= sum(st.fwd_s), "compute_fwd"
        prob += bwd >= sum(st.bwd_s) + pulp.lpSum(st.fwd_s[k] * x["recompute"][k]
                                                  for k in range(st.count)), "compute_bwd"
        stalls = []
        out, back = Flows(self.system), Flows(self.system)
        if self.host:  # streamed weights load in forward and again in backward; gradients leave
            out.add(self.host, g, st.weights * self.w)
            back.add(self.host, g, st.weights * self.w)
            back.add(g, self.host, sum(st.grads) * self.r)
        if self.act_tier:
            for k in range(st.count):
                moved = a * st.saved[k] * x["offload"][k]
                out.add(g, self.act_tier, moved)
                back.add(self.act_tier, g, moved)
        for stage, fl in (("fwd", out), ("bwd", back)):
            var = fwd if stage == "fwd" else bwd
            for name, rate, terms in fl.loads():
                prob += var >= pulp.lpSum(terms) * (1.0 / rate), f"load_{stage}_{safe_name(name)}"
        if self.act_tier:
            # stage k's prefetch starts with stage k+1's backward (prefetch_depth 1) and must end
            # before its own: what that backward and its recompute do not hide is a stall
            rate = min(r for _, r in Flows(self.system).resources(self.act_tier, g))
            rate_out = min(r for _, r in Flows(self.system).resources(g, self.act_tier))
            for k in range(st.count):
                if not st.saved[k]:
                    continue
                if st.reread[k]:  # the next forward waits for the write-back, then fetches them back
                    wait = prob.add_variable(f"reread_{k}", 0)
                    prob += wait >= a * (st.saved[k] / rate_out + st.reread[k] / rate) * x["offload"][k], \
                        f"reread_{k}"
                    stalls.append(wait)
                hide = 0.0 if k + 1 >= st.count else st.bwd_s[k + 1]
                hide_rec = st.fwd_s[k + 1] * x["recompute"][k + 1] if k + 1 < st.count else 0
                stall = prob.add_variable(f"stall_{k}", 0)
                prob += stall >= a * st.saved[k] / rate * x["offload"][k] - hide - hide_rec, f"stall_{k}"
                stalls.append(stall)
        self.times = (fwd, bwd)
        return fwd + bwd + pulp.lpSum(stalls)

    def decode(self) -> Plan:
        st = self.st
        chosen = [next(p for p in POLICIES if value(self.x[p][k]) > 0.5) for k in range(st.count)]
        default = max(POLICIES, key=lambda p: (chosen.count(p), p == "keep"))
        policy = {k: p for k, p in enumerate(chosen) if p != default}
        offloads = "offload" in chosen
        counts = {p: chosen.count(p) for p in POLICIES if chosen.count(p)}
        notes = ["traced MILP over " + f"{st.count} stages: "
                 + ", ".join(f"{n} {p}" for p, n in counts.items())]
        placement = {}
        for cls, var in (("weight", self.w), ("grad", self.r)):
            off = round(value(var), 6)
            if off > 1e-6:
                placement[cls] = normalise({self.g: 1 - off, self.host: off})
                notes.append(f"{cls}: {off:.1%} homed on {self.host}, streamed per stage")
        return Plan(placement=placement, activations=default, layer_policy=policy,
                    activation_tier=self.act_tier if offloads else None,
                    prefetch_depth=self.space.prefetch_depth, notes=notes)


def _state_host(system: System, space: Space) -> str | None:
    """The host tier weights and gradients may live on: the CPU's memory, beside the GPU."""
    host = system.cpu.memory if system.cpu is not None else None
    if host is None or host == system.fast_tier or host not in space.caps:
        return None
    return host


def _forward_only(system: System, trace: Trace, space: Space, slack: bool | set[str]) -> Candidate:
    """A forward-only module has no saved activations to decide on: everything stays resident;
    check that it fits at the trace's peak and estimate its time."""
    need = int(trace.meta.get("peak_live_bytes") or 0)
    weights = trace.bytes_by_class()["weight"]
    need += int(weights * _fragmentation())
    cap = space.caps[system.fast_tier]
    seconds = sum(op_seconds(system, op) for b in trace.blocks for op in b.ops)
    short = {system.fast_tier: float(max(0, need - cap))} if slack else None
    if need > cap and not slack:
        return Candidate(None, math.inf, SolveInfo("infeasible", None, None, 0.0, "none"))
    plan = Plan(prefetch_depth=space.prefetch_depth,
                notes=["forward-only module: no activations are saved for a backward, all stay resident"])
    return Candidate(plan, seconds, SolveInfo("optimal", seconds, 0.0, 0.0, "none"), short)
