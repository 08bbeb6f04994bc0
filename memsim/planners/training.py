"""The training MIP: placement of weights, grads and optimizer states, per-layer activation policy.

One model per discrete structure (optimizer device × activation tier), each a small MIP:

* continuous ``x[c][t]``: fraction of class ``c`` (weight, grad, optimizer) homed on tier ``t``;
* integers ``keep``, ``offload``, ``recompute``: how many of the ``L`` identical layers get each
  activation policy (they sum to ``L``; which layers get which is decided afterwards);
* stage times ``TF``, ``TB``, ``TO`` (forward, backward, optimizer), each ≥ its compute
  (+ one forward per recomputed layer) and ≥ the load of every copy resource (``flows.py``).

Capacity of the compute tier is checked at its two peak points: the forward/backward turn
(kept activations and checkpoints) and the end of the backward (all gradients), each with the
streaming buffers of ``prefetch_depth + 1`` layers and the largest layer in flight. Host tiers
hold their share of every class plus offloaded activations. Objective: TF + TB + TO.
"""

from __future__ import annotations

import math

import pulp

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
from memsim.planners.profile import Profile, tie_scale
from memsim.planners.solver import solve, value
from memsim.planners.space import Space

STATE = ("weight", "grad", "optimizer")


def structures(system: System, space: Space) -> list[tuple[str, str | None]]:
    """(optimizer device, activation tier) pairs to solve; ``None``: no offloaded activations."""
    fast = system.fast_tier
    act_tiers: list[str | None] = [None]
    if "offload" in space.activations:
        act_tiers += [t for t in space.tiers["activation"] if t != fast]
    return [(dev, at) for dev in space.optimizer_devices for at in act_tiers]


def solve_training(
    system: System,
    prof: Profile,
    space: Space,
    opt_dev: str,
    act_tier: str | None,
    time_limit: float,
    slack: bool | set[str] = False,
    act_scale: float = 1.0,
) -> Candidate:
    m = _Model(system, prof, space, opt_dev, act_tier, slack, act_scale)
    info = solve(m.prob, time_limit, space.gap)
    if not info.ok:
        return Candidate(None, math.inf, info)
    plan = m.decode()
    short = {t: value(s) * GIB for t, s in m.slack.items()} if slack else None
    return Candidate(plan, value(m.step), info, short)


class _Model:
    def __init__(
        self,
        system: System,
        prof: Profile,
        space: Space,
        opt_dev: str,
        act_tier: str | None,
        slack: bool | set[str],
        act_scale: float,
    ):
        self.system, self.prof, self.space = system, prof, space
        self.opt_dev, self.act_tier = opt_dev, act_tier
        self.g = system.fast_tier
        self.prob = pulp.LpProblem("training", pulp.LpMinimize)
        self.x = {c: {t: self.prob.add_variable(f"x_{c}_{t}", 0, 1) for t in space.tiers[c]} for c in STATE}
        layers = prof.layers
        pol = space.activations
        self.n = {
            p: self.prob.add_variable(f"n_{p}", 0, layers if p in pol else 0, cat=pulp.LpInteger)
            for p in ("keep", "offload", "recompute")
        }
        if act_tier is None:
            self.n["offload"].upBound = 0
        self.slack = {t: self.prob.add_variable(f"s_{t}", 0, space.slack_cap.get(t))
                      for t in slack_tiers(system, slack)}
        self.act = (prof.saved + prof.ckpt) * act_scale
        self.ckpt = prof.ckpt * act_scale
        self.act_scale = act_scale
        self.flows = Flows(system)  # the stages' Flows share its routes
        self._constrain()

    def _frac(self, cls: str, tier: str):
        return self.x[cls].get(tier, 0)

    def _constrain(self) -> None:
        p, prob, g, n = self.prof, self.prob, self.g, self.n
        for cls in STATE:
            prob += pulp.lpSum(self.x[cls].values()) == 1, f"sum_{cls}"
        prob += pulp.lpSum(n.values()) == p.layers, "layers"
        if self.opt_dev == "cpu":  # ZeRO-Offload: gradients and states leave the GPU
            for cls in ("grad", "optimizer"):
                if g in self.x[cls]:
                    prob += self.x[cls][g] == 0, f"offload_{cls}"
        self._capacity()
        self.step = self._times()
        if self.space.max_step is not None:
            prob += self.step <= self.space.max_step, "target"
        fl = self.flows
        tidy = (pulp.lpSum(slowness(fl, t, g) * v for c in STATE for t, v in self.x[c].items() if t != g)
                + n["recompute"] / p.layers)
        if self.slack:
            cost = pulp.lpSum(slack_price(self.system, t) * v for t, v in self.slack.items())
            prob += cost + 1e-6 * self.step
        else:
            prob += self.step + 1e-5 * tie_scale(p) * tidy

    def _capacity(self) -> None:
        p, g, n, sp = self.prof, self.g, self.n, self.space
        total, layer = p.total, p.layer
        depth = sp.prefetch_depth + 1
        resident = {c: total[c] * self._frac(c, g) for c in STATE}
        buf_w = depth * layer["weight"] * (1 - self._frac("weight", g))
        buf_g = 2 * layer["grad"] * (1 - self._frac("grad", g))
        # the largest layer being worked on (activations scale with the micro-batch, as act_scale)
        in_flight = (p.saved + p.transient + p.other_transient) * self.act_scale
        act_buf = 2 * self.act if self.act_tier else 0
        turn = (
            resident["weight"]
            + resident["optimizer"]
            + n["keep"] * self.act
            + n["recompute"] * self.ckpt
            + buf_w
            + act_buf
            + in_flight
        )
        end = (
            resident["weight"]
            + resident["optimizer"]
            + resident["grad"]
            + buf_w
            + buf_g
            + self.act
            + in_flight
        )
        self._cap(g, turn, "turn")
        self._cap(g, end, "end_backward")
        # the staging ring (memsim.sim.engine) also holds the prefetch_depth layers whose updated
        # states are being written behind
        behind = sp.prefetch_depth
        if self.opt_dev == "gpu":
            buf_o = (depth + behind) * layer["optimizer"] * (1 - self._frac("optimizer", g))
            opt = (
                resident["weight"]
                + resident["optimizer"]
                + resident["grad"]
                + buf_w
                + behind * layer["weight"] * (1 - self._frac("weight", g))
                + buf_o
                + depth * layer["grad"] * (1 - self._frac("grad", g))
            )
            self._cap(g, opt, "optimizer")
        host = self.system.cpu.memory if self.system.cpu else None
        for t in self.system.tiers:
            if t == g:
                continue
            use = pulp.lpSum(total[c] * self._frac(c, t) for c in STATE)
            if t == self.act_tier:
                use += n["offload"] * self.act
            if t == host and self.opt_dev == "cpu":  # staging buffers for states streamed from below
                use += (depth + behind) * layer["optimizer"] * (1 - self._frac("optimizer", t))
            self._cap(t, use, "home")

    def _cap(self, tier: str, expr, label: str) -> None:
        cap_constraint(self.prob, self.space.caps[tier], expr, self.slack.get(tier), f"cap_{tier}_{label}")

    def _times(self):
        p, g, n, prob, t = self.prof, self.g, self.n, self.prob, self.prof.time
        L = p.layers
        total = p.total
        stages = {s: self.prob.add_variable(f"T_{s}", 0) for s in ("fwd", "bwd", "opt")}
        compute = {
            "fwd": L * t.get("forward_layer", 0) + t.get("forward_other", 0),
            "bwd": L * t.get("backward_layer", 0)
            + t.get("backward_other", 0)
            + n["recompute"] * t.get("forward_layer", 0),
        }
        comm = {
            "fwd": L * t.get("comm_forward_layer", 0) + t.get("comm_forward_other", 0),
            "bwd": L * t.get("comm_backward_layer", 0) + t.get("comm_backward_other", 0),
        }
        flows = {s: Flows(self.system, like=self.flows) for s in stages}
        for tier in self.system.tiers:
            if tier == g:
                continue
            w = total["weight"] * self._frac("weight", tier)
            flows["fwd"].add(tier, g, w)
            flows["bwd"].add(tier, g, w)
            flows["bwd"].add(g, tier, total["grad"] * self._frac("grad", tier))
        if self.act_tier:
            flows["fwd"].add(g, self.act_tier, n["offload"] * self.act)
            flows["bwd"].add(self.act_tier, g, n["offload"] * self.act)
        opt_compute = self._optimizer_flows(flows["opt"])
        for s in ("fwd", "bwd"):
            prob += stages[s] >= compute[s], f"compute_{s}"
            prob += stages[s] >= comm[s], f"comm_{s}"
        prob += stages["opt"] >= opt_compute, "compute_opt"
        for s, fl in flows.items():
            for name, rate, terms in fl.loads():  # (rate is 1.0: the terms are seconds)
                load = pulp.lpSum(terms) if rate == 1.0 else pulp.lpSum(terms) * (1.0 / rate)
                prob += stages[s] >= load, f"load_{s}_{safe_name(name)}"
        self.stages = stages
        return pulp.lpSum(stages.values())

    def _optimizer_flows(self, fl: Flows) -> float:
        p, g, t, total = self.prof, self.g, self.prof.time, self.prof.total
        L = p.layers
        if self.opt_dev == "gpu":
            for tier in self.system.tiers:
                if tier == g:
                    continue
                o = total["optimizer"] * self._frac("optimizer", tier)
                w = total["weight"] * self._frac("weight", tier)
                fl.add(tier, g, o + w + total["grad"] * self._frac("grad", tier))
                fl.add(g, tier, o + w)
            return L * t.get("optimizer_layer", 0) + t.get("optimizer_other", 0)
        host = self.system.cpu.memory
        for tier in self.system.tiers:
            if tier == host:
                continue
            o = total["optimizer"] * self._frac("optimizer", tier)
            fl.add(tier, host, o + total["grad"] * self._frac("grad", tier))
            fl.add(host, tier, o + total["weight"] * self._frac("weight", tier))
        return L * t.get("optimizer_cpu_layer", 0) + t.get("optimizer_cpu_other", 0)

    def decode(self) -> Plan:
        g, L = self.g, self.prof.layers
        placement = {}
        for cls in STATE:
            split = {t: round(value(v), 6) for t, v in self.x[cls].items() if value(v) > 1e-6}
            placement[cls] = normalise(split)
        counts = {k: round(value(v)) for k, v in self.n.items()}
        counts["keep"] = L - counts["offload"] - counts["recompute"]
        default, layer_policy = assign_layers(L, counts)
        if counts["offload"] and self.act_tier:
            placement["activation"] = {self.act_tier: 1.0}
        placement = {c: s for c, s in placement.items() if s != {g: 1.0}}
        return Plan(
            placement=placement,
            activations=default,
            layer_policy=layer_policy,
            activation_tier=self.act_tier if counts["offload"] else None,
            optimizer_device=self.opt_dev,
            prefetch_depth=self.space.prefetch_depth,
        )


def assign_layers(layers: int, counts: dict[str, int]) -> tuple[str, dict[int, str]]:
    """Which layers get which policy. Early layers wait longest between forward and backward, so
    they are offloaded (the copy has the most time to hide) or recomputed; the last layers, whose
    backward comes first, are kept. The most common policy becomes the plan's default."""
    order: list[str] = (
        ["offload"] * counts.get("offload", 0)
        + ["recompute"] * counts.get("recompute", 0)
        + ["keep"] * counts.get("keep", 0)
    )
    order = (order + ["keep"] * layers)[:layers]
    default = max(("keep", "recompute", "offload"), key=lambda k: (order.count(k), k == "keep"))
    return default, {i: pol for i, pol in enumerate(order) if pol != default}
