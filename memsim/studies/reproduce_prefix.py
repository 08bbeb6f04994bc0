"""Reproductions of prefix-caching results: hit rates of published request traces, and what the
cache buys a multi-turn service (throughput, time to first token) in the serving simulator.

``prefix_trace`` replays each trace's ``hash_ids`` through ``memsim.sim.kvstore.PrefixStore``
one request at a time in arrival order with no capacity limit, the setting of Mooncake's
"theoretical" hit rate (FAST'25, Fig. 9: "we consider only the sequence of requests").
``prefix_serving`` simulates one workload twice, without and with the cache (the case's two
override lists), and compares throughput or TTFT.
"""

from __future__ import annotations

from pathlib import Path

from memsim.errors import SpecError
from memsim.sim import simulate
from memsim.sim.kvstore import PrefixStore
from memsim.studies.reproduce_cases import SIM, Say, _need, system_of, trace_of
from memsim.studies.reproduce_spec import CaseResult, CaseSpec, Figure
from memsim.workloads.serving import jsonl_requests

REPLAY = "prefix store replay (unbounded)"


def trace_hit_rate(path: Path, block_tokens: int = 512) -> tuple[float, int]:
    """Prompt tokens an unbounded prefix cache serves / prompt tokens, and the request count."""
    requests = jsonl_requests(path, 10**9, str(path))
    store = PrefixStore(block_tokens, block_tokens, "hbm")
    for p, hashes in zip(requests.prompt_len, requests.hash_ids, strict=True):
        hit, tokens = store.lookup(hashes, p)
        store.count(store.acquire(hashes[:hit], tokens), p)
        store.register(hashes[hit:])
        store.release(hashes)
    return store.hit_rate, len(requests)


def prefix_trace(spec: CaseSpec, path: Path, say: Say) -> CaseResult:
    traces = _need(spec.setup, "traces", path)
    out = CaseResult(spec.name, spec.title, spec.source, [], [])
    for i, t in enumerate(traces):
        for key in ("key", "label", "jsonl"):
            if key not in t:
                raise SpecError("required key is missing", file=str(path), key=f"setup.traces[{i}].{key}")
        file = path.parent / t["jsonl"]
        say(f"replaying {file.name}")
        rate, n = trace_hit_rate(file, int(t.get("block_tokens", 512)))
        out.figures.append(Figure(t["key"], t["label"], "%", spec.published.get(t["key"]), rate, REPLAY))
        out.setup.append(f"`{t['jsonl']}`: {n:,} requests, {t.get('block_tokens', 512)}-token blocks")
    return out


def prefix_serving(spec: CaseSpec, path: Path, say: Say) -> CaseResult:
    """The workload without and with prefix caching; ``setup.metric``: ``throughput_ratio``
    (with / without) or ``ttft_reduction`` (1 − with / without, of ``setup.ttft``, default mean)."""
    s = spec.setup
    metric = _need(s, "metric", path)
    if metric not in ("throughput_ratio", "ttft_reduction"):
        raise SpecError(f"metric {metric!r} is not throughput_ratio or ttft_reduction", file=str(path),
                        key="setup.metric")
    runs = {}
    for side in ("baseline", "cached"):
        extra = list(s.get(side, []))
        say(f"simulating {side}")
        result = simulate(system_of(s, path, extra), trace_of(s, path, extra))
        if not result.feasible or result.serving is None:
            raise SpecError(f"the {side} run does not fit or serve: {result.oom}", file=str(path),
                            key=f"setup.{side}")
        runs[side] = result
    base, cached = runs["baseline"].serving, runs["cached"].serving
    stat = s.get("ttft", "mean")
    if metric == "throughput_ratio":
        value = cached.throughput_tokens_per_s / base.throughput_tokens_per_s
        label, unit = "throughput with the cache / without (vLLM, history recomputed)", "x"
    else:
        value = 1 - cached.ttft_s[stat] / base.ttft_s[stat]
        label, unit = f"TTFT {stat} reduction by the cache", "%"
    key = s.get("key", metric)
    published = spec.published.get(key)
    if isinstance(published, list):
        published = tuple(published)
    figures = [Figure(key, label, unit, published, value, SIM),
               Figure("hit_rate", "prefix hit rate (cached run)", "%", None, cached.prefix_hit_rate, SIM),
               Figure("ttft_base", f"TTFT {stat} without the cache", "s", None, base.ttft_s[stat], SIM),
               Figure("ttft_cached", f"TTFT {stat} with the cache", "s", None, cached.ttft_s[stat], SIM),
               Figure("tps_base", "throughput without the cache", "tokens/s", None,
                      base.throughput_tokens_per_s, SIM),
               Figure("tps_cached", "throughput with the cache", "tokens/s", None,
                      cached.throughput_tokens_per_s, SIM)]
    setup = [f"hardware `{s['hardware']}`; workload `{_name(s['workload'])}`",
             f"without: {', '.join(s.get('baseline', [])) or 'as given'}; with: "
             f"{', '.join(s.get('cached', [])) or 'as given'}",
             f"hits by tier (cached run): {cached.prefix_hits_by_tier}"]
    return CaseResult(spec.name, spec.title, spec.source, setup, figures)


def _name(workload) -> str:
    return workload if isinstance(workload, str) else workload.get("name", "inline")
