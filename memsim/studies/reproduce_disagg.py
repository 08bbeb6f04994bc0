"""Reproductions of disaggregated prefill/decode: goodput, the highest request rate a deployment
serves within a latency SLO, colocated and disaggregated (DistServe, OSDI'24).

``goodput`` runs, for each of the case's ``searches``, the workload at Poisson rates found by
bisection over ``setup.rates`` and keeps the highest rate whose per-request latencies meet the
search's ``limits`` at ``setup.quantile`` (DistServe's Figure 1 reads P90 TTFT and P90 TPOT). A
request's TTFT is its arrival to its first token (in a disaggregated run, the KV's arrival at
the decode instance: memsim.sim.disaggregated); its TPOT is DistServe's, (last token − first
token) / (tokens − 1). A search's figure is that rate divided by its ``gpus`` (per-GPU goodput);
``ratios`` divide two searches' figures. A search's ``overrides`` set its workload and, with
the ``hardware.`` prefix, its system (an engine's measured speed on the same GPU).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from memsim.contracts.plan import Plan
from memsim.errors import SpecError
from memsim.hardware.spec import System
from memsim.sim.disaggregated import Disaggregated
from memsim.sim.hostmem import pageable_view
from memsim.sim.serving import ServingEngine
from memsim.studies.reproduce_cases import SIM, Say, _need, system_of, trace_of
from memsim.studies.reproduce_spec import CaseResult, CaseSpec, Figure
from memsim.workloads.trace import Trace

LIMITS = ("ttft", "tpot")


def request_latencies(system: System, trace: Trace) -> tuple[list[float], list[float]]:
    """Each request's TTFT, and the TPOT of each that generated more than one token."""
    plan = Plan()
    view = system.rank_view(1)
    view = view if plan.pinned else pageable_view(view)
    arrival, output = trace.requests.arrival_s, trace.requests.output_len
    if trace.meta.get("disaggregated"):
        run = Disaggregated(view, trace, plan)
        run.run()
        ttft = [t - arrival[i] for i, t in run.first_at.items()]
        tpot = [(t - run.first_at[i]) / (output[i] - 1) for i, t in run.last_at.items() if output[i] > 1]
        return ttft, tpot
    eng = ServingEngine(view, trace, plan, False)
    eng.run()
    ttft = [r.first_t - r.arrival for r in eng.served if r.first_t >= 0]
    tpot = [(r.last_t - r.first_t) / (r.generated - 1) for r in eng.served
            if r.output > 1 and r.generated >= r.output]
    return ttft, tpot


def _quantile(values: list[float], q: float) -> float:
    """Nearest rank, as memsim's serving quantiles; no samples: infinite (nothing met)."""
    if not values:
        return math.inf
    ordered = np.sort(np.asarray(values, dtype=float))
    return float(ordered[max(1, math.ceil(q * len(ordered))) - 1])


def max_rate(meets, lo: float, hi: float, steps: int) -> float:
    """The highest rate in [lo, hi] that ``meets`` (bisection, ``steps`` halvings); 0 if lo fails."""
    if not meets(lo):
        return 0.0
    if meets(hi):
        return hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if meets(mid) else (lo, mid)
    return lo


def goodput(spec: CaseSpec, path: Path, say: Say) -> CaseResult:
    s = spec.setup
    searches = _need(s, "searches", path)
    q = float(s.get("quantile", 0.9))
    lo, hi = (float(x) for x in s.get("rates", (0.25, 32.0)))
    steps = int(s.get("steps", 10))
    out = CaseResult(spec.name, spec.title, spec.source, [], [])
    per_gpu: dict[str, float] = {}
    for i, search in enumerate(searches):
        where = f"setup.searches[{i}]"
        for key in ("key", "label", "limits"):
            if key not in search:
                raise SpecError("required key is missing", file=str(path), key=f"{where}.{key}")
        limits = search["limits"]
        bad = sorted(set(limits) - set(LIMITS))
        if bad:
            raise SpecError(f"{bad[0]!r} is not a latency limit ({', '.join(LIMITS)})", file=str(path),
                            key=f"{where}.limits.{bad[0]}")
        overrides = list(search.get("overrides", []))  # hardware.* ones set this search's system
        system = system_of(s, path, overrides)

        def meets(rate: float, overrides=overrides, limits=limits, system=system) -> bool:
            trace = trace_of(s, path, [*overrides, f"serving.arrival.rate_per_s={rate!r}"])
            ttft, tpot = request_latencies(system, trace)
            got = {"ttft": _quantile(ttft, q), "tpot": _quantile(tpot, q)}
            return all(got[k] <= float(v) for k, v in limits.items())

        say(f"searching {search['key']}")
        gpus = int(search.get("gpus", 1))
        rate = max_rate(meets, lo, hi, steps)
        per_gpu[search["key"]] = rate / gpus
        out.figures.append(Figure(search["key"], search["label"], "req/s", _published(spec, search["key"]),
                                  rate / gpus, SIM))
        what = ", ".join(f"P{q * 100:g} {k.upper()} ≤ {float(v) * 1e3:g} ms" for k, v in limits.items())
        out.setup.append(f"{search['key']}: {gpus} GPU{'s' if gpus > 1 else ''}, {what}; "
                         f"{', '.join(overrides) or 'colocated'}")
    for r in s.get("ratios", []):
        value = per_gpu[r["of"]] / per_gpu[r["over"]] if per_gpu.get(r["over"]) else None
        out.figures.append(Figure(r["key"], r["label"], "x", _published(spec, r["key"]), value, SIM))
    out.setup.insert(0, f"hardware `{s['hardware']}`; Poisson rates bisected over [{lo:g}, {hi:g}] req/s "
                        f"({steps} steps); TPOT = (last token − first token) / (tokens − 1)")
    return out


def _published(spec: CaseSpec, key: str):
    value = spec.published.get(key)
    return tuple(value) if isinstance(value, list) else value


def kv_transfer(spec: CaseSpec, path: Path, say: Say) -> CaseResult:
    """A disaggregated run's KV transfer against the requests' latency: ``transfer_share``
    (Σ transfer delay / Σ request latency, arrival to last token) and ``transfer_p95`` (the 95th
    percentile of the per-request delay, prefill end to KV at the decode instance)."""
    s = spec.setup
    system = system_of(s, path)
    trace = trace_of(s, path)
    if not trace.meta.get("disaggregated"):
        raise SpecError("the workload needs serving.disaggregated", file=str(path), key="setup.workload")
    say("simulating")
    view = system.rank_view(1)
    run = Disaggregated(view if Plan().pinned else pageable_view(view), trace, Plan())
    result = run.run()
    arrival = trace.requests.arrival_s
    total = sum(run.last_at[i] - arrival[i] for i in run.last_at)
    share = sum(run.transfer.values()) / total if total > 0 else None
    p95 = _quantile(list(run.transfer.values()), 0.95)
    sv = result.serving
    figures = [
        Figure("transfer_share", "KV transfer / request latency (Σ over requests)", "%",
               _published(spec, "transfer_share"), share, SIM),
        Figure("transfer_p95", "KV transfer delay, 95th percentile", "s", _published(spec, "transfer_p95"),
               p95, SIM),
        Figure("ttft_p90", "TTFT P90 (transfer included)", "s", None, sv.ttft_s["p90"], SIM),
        Figure("tbt_p90", "TBT P90", "s", None, sv.tbt_s["p90"], SIM)]
    d = trace.meta["disaggregated"]
    pools = "; ".join(f"{role}: {d[role]['instances']} × TP{d[role]['tensor']} PP{d[role]['pipeline']}"
                      for role in ("prefill", "decode"))
    setup = [f"hardware `{s['hardware']}`; {len(trace.requests):,} requests; {pools}; "
             f"KV over {run.link_name}",
             f"sent {sv.kv_transfer_bytes / 1e9:,.1f} GB in all; completed {sv.completed:,}"]
    return CaseResult(spec.name, spec.title, spec.source, setup, figures)
