"""What a replay does, in order: the Plan's semantics applied to a Trace, without touching torch.

The trace's ops are cut into *windows* (consecutive ops of one block, iteration and layer: a
layer's forward, a layer's backward, the loss, the optimizer step). Per the Plan docstring:

* a tensor homed (partly) off the compute tier that a window reads is fetched into the compute
  tier before it, issued ``prefetch_depth`` windows ahead, and dropped after the window;
* a tensor homed off-tier that a window writes (updated weights, gradients, appended KV) is
  written back to its home after the window;
* activations a layer's forward saves for its backward are kept, offloaded (stored after the
  forward, fetched back ``prefetch_depth`` windows before the backward) or recomputed (dropped
  after the forward; the forward's ops run again at the start of the backward window), keeping
  the tensors the next window reads (the layer's output = the next layer's input).

Pure data, so the order can be tested without torch and read beside the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memsim.planners.plan import Plan
from memsim.workloads.trace import ExpandedOp, Trace


@dataclass(frozen=True)
class Transfer:
    """``nbytes`` of ``tensor`` moved from tier ``src`` to tier ``dst``."""

    tensor: str
    nbytes: int
    src: str
    dst: str


@dataclass
class Window:
    index: int
    key: tuple  # (block, iteration, layer)
    phase: str
    layer: int | None
    ops: list[tuple[ExpandedOp, bool]] = field(default_factory=list)  # (op, is_recompute)
    fetch: list[Transfer] = field(default_factory=list)  # needed before the window starts
    store: list[Transfer] = field(default_factory=list)  # written to a slow tier after the window
    drop: list[str] = field(default_factory=list)  # activations dropped after (recompute policy)
    issue_at: int = 0  # index of the window at whose start the fetches are issued


@dataclass
class Schedule:
    compute_tier: str
    windows: list[Window]
    lifetimes: dict[str, tuple[int, int]]
    homes: dict[str, dict[str, float]]  # concrete tensor → {tier: fraction}
    sizes: dict[str, int]  # concrete tensor → bytes
    classes: dict[str, str]

    def resident_bytes(self, name: str) -> int:
        """Bytes of ``name`` whose home is the compute tier."""
        return round(self.sizes[name] * self.homes[name].get(self.compute_tier, 0.0))

    def off_tier(self, name: str) -> list[tuple[str, int]]:
        """(tier, bytes) of the parts of ``name`` homed off the compute tier."""
        return [(t, round(self.sizes[name] * f)) for t, f in self.homes[name].items()
                if t != self.compute_tier and f > 0]


def build_schedule(trace: Trace, plan: Plan, compute_tier: str) -> Schedule:
    ops = list(trace.expand())
    windows = _windows(ops)
    names = {n for x in ops for n in (*x.inputs, *x.outputs)}
    classes = {n: trace.tensor(n).cls for n in names}
    sizes = {n: trace.tensor(n).bytes for n in names}
    homes = {n: _home(plan, classes[n], compute_tier) for n in names}
    sched = Schedule(compute_tier, windows, trace.lifetimes(), homes, sizes, classes)
    _placed_traffic(sched)
    _activation_policy(sched, plan)
    for w in windows:
        w.issue_at = max(0, w.index - max(1, plan.prefetch_depth))
    return sched


def _home(plan: Plan, cls: str, compute_tier: str) -> dict[str, float]:
    if cls in ("activation", "workspace"):
        return {compute_tier: 1.0}  # activations move by the activation policy, not by placement
    return dict(plan.home(cls, compute_tier))


def _windows(ops: list[ExpandedOp]) -> list[Window]:
    out: list[Window] = []
    for x in ops:
        key = (x.block, x.iteration, x.layer)
        if not out or out[-1].key != key:
            out.append(Window(len(out), key, x.op.phase, x.layer))
        out[-1].ops.append((x, False))
    return out


def _placed_traffic(sched: Schedule) -> None:
    """Fetch what a window reads from off-tier homes; store back what it writes there."""
    for w in sched.windows:
        produced: set[str] = set()
        fetched: set[str] = set()
        for x, _ in w.ops:
            for name in x.inputs:
                if name in produced or name in fetched or sched.classes[name] == "activation":
                    continue
                fetched.add(name)
                w.fetch += [Transfer(name, b, t, sched.compute_tier) for t, b in sched.off_tier(name)]
            produced.update(x.outputs)
        for name in sorted(produced):
            if sched.classes[name] != "activation":
                w.store += [Transfer(name, b, sched.compute_tier, t) for t, b in sched.off_tier(name)]


def _activation_policy(sched: Schedule, plan: Plan) -> None:
    forward = {w.layer: w for w in sched.windows if w.phase == "forward" and w.layer is not None}
    backward = {}
    for w in sched.windows:
        if w.phase == "backward" and w.layer is not None:
            backward.setdefault(w.layer, w)
    for layer, fw in forward.items():
        bw = backward.get(layer)
        policy = plan.policy(layer)
        if bw is None or policy == "keep":
            continue
        saved = _saved_for_backward(sched, fw, bw)
        if policy == "recompute":
            fw.drop += saved
            bw.ops[:0] = [(x, True) for x, _ in fw.ops]
        elif policy == "offload":
            tier = plan.activation_tier
            if tier is None:
                continue
            fw.store += [Transfer(n, sched.sizes[n], sched.compute_tier, tier) for n in saved]
            bw.fetch += [Transfer(n, sched.sizes[n], tier, sched.compute_tier) for n in saved]


def _saved_for_backward(sched: Schedule, fw: Window, bw: Window) -> list[str]:
    """Activations the forward window produces that live past it, minus what the next window
    reads (the layer's output, which checkpointing keeps as the next layer's input)."""
    nxt = sched.windows[fw.index + 1] if fw.index + 1 < len(sched.windows) else None
    next_reads = {n for x, _ in nxt.ops for n in x.inputs} if nxt else set()
    last = fw.ops[-1][0].index
    out = []
    for x, _ in fw.ops:
        for name in x.outputs:
            if (sched.classes[name] == "activation" and sched.lifetimes[name][1] > last
                    and name not in next_reads and name not in out):
                out.append(name)
    return out
