"""Published KV block-copy measurements against memsim's swap copies (memsim.sim.swap), simulated.

A case lists ``runs``: each one copy job between the case's two tiers — ``descriptors`` copies
of ``bytes`` each, how they are submitted (``submit``: call | batch | kernel) and grouped
(``run``: contiguous blocks merged into one copy, 1 = none) — and the published figure, a time
(``published_ms``) or a rate (``published_gbps``). memsim's figure is the simulated time of
that one swap on an idle machine: the same ``start_swaps`` the serving engine calls, with one
layer and the copies split into K and V planes, so the row checks the mechanism the serving
simulator prices preemptions with.
"""

from __future__ import annotations

from pathlib import Path

from memsim.errors import SpecError
from memsim.sim.engine import Clock
from memsim.sim.swap import KV_PLANES, SwapCost, SwapStats, start_swaps
from memsim.studies.reproduce_spec import CaseResult, CaseSpec, Figure
from memsim.units import fmt_bytes


def swap_seconds(system, src: str, dst: str, descriptors: int, nbytes: int, submit: str,
                 run: int = 1) -> tuple[float, int]:
    """(seconds, copies) of moving ``descriptors`` pieces of ``nbytes`` from ``src`` to ``dst``
    as one swap, merged into runs of ``run`` pieces."""
    if descriptors % (KV_PLANES * run):
        raise ValueError(f"descriptors must be a multiple of {KV_PLANES * run}")
    blocks = descriptors // KV_PLANES  # a block holds one piece of K and one of V
    granularity = "block" if run == 1 else "group"
    cost = SwapCost(layers=1, granularity=granularity, group_blocks=run, submit=submit)
    clock = Clock(system, False)
    stats = SwapStats()
    fast = system.fast_tier
    out_runs, in_runs = ([blocks], []) if src == fast else ([], [blocks])
    tier = dst if src == fast else src
    start_swaps(clock.env, clock.copier, cost, stats, fast, tier, KV_PLANES * nbytes, out_runs,
                in_runs, 0, 0)
    clock.env.run()
    return stats.seconds, stats.copies


def swap_submit(spec: CaseSpec, path: Path, say) -> CaseResult:
    from memsim.studies.reproduce_cases import system_of

    s = spec.setup
    system = system_of(s, path)
    src, dst = s.get("src", "dram"), s.get("dst", system.fast_tier)
    for key, tier in (("src", src), ("dst", dst)):
        if tier not in system.tiers:
            raise SpecError(f"no tier {tier!r} in {s['hardware']}", file=str(path),
                            key=f"setup.{key}")
    if not spec.runs:
        raise SpecError("a swap_submit case needs runs", file=str(path), key="runs")
    route = Clock(system, False).copier.topo.route(src, dst)
    hop = route.hops[0].link
    setup = [f"hardware `{s['hardware']}`, {src} → {dst} over `{hop.name}` "
             f"({route.hops[0].rate / 1e9:.1f} GB/s, latency {hop.latency * 1e6:g} us per call, "
             f"{(hop.descriptor_latency if hop.descriptor_latency is not None else hop.latency) * 1e6:g}"
             " us per further batch descriptor)"]
    figures = []
    for i, r in enumerate(spec.runs):
        where = f"runs[{i}]"
        try:
            n, size = int(r["descriptors"]), int(r["bytes"])
            submit, run = str(r.get("submit", "call")), int(r.get("run", 1))
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"a run needs descriptors, bytes (integers): {exc}", file=str(path),
                            key=where) from None
        if submit not in ("call", "batch", "kernel"):
            raise SpecError(f"submit {submit!r}: one of call, batch, kernel", file=str(path),
                            key=f"{where}.submit")
        say(f"simulating {r['label']}")
        try:
            seconds, copies = swap_seconds(system, src, dst, n, size, submit, run)
        except ValueError as exc:
            raise SpecError(str(exc), file=str(path), key=f"{where}.descriptors") from None
        total = n * size
        how = (f"{copies:,} copies of {fmt_bytes(total // copies)}, submit {submit}; "
               f"{seconds * 1e3:.3g} ms")
        if "published_ms" in r:
            figures.append(Figure(f"run{i}", f"{r['label']}: time", "ms", float(r["published_ms"]),
                                  seconds * 1e3, "simulated", how))
        elif "published_gbps" in r:
            figures.append(Figure(f"run{i}", f"{r['label']}: rate", "GB/s",
                                  float(r["published_gbps"]), total / seconds / 1e9, "simulated", how))
        else:
            raise SpecError("a run needs published_ms or published_gbps", file=str(path), key=where)
    notes = [spec.notes["case"]] if "case" in spec.notes else []
    return CaseResult(spec.name, spec.title, spec.source, setup, figures, notes)
