"""Prefix-caching serving speed: a 100,000-request multi-turn chat trace on Llama-2-70B (prints;
never asserts).

    python bench/bench_prefix.py [-n REQUESTS] [--eviction lru|lfu|ttl|predict]

Target (issue 18): the whole run — drawing the seeded sessions, building the trace and the
simulation with prefix caching over HBM and a 256 GiB DRAM tier — in under 60 s on one core of
this machine. The case is ``workloads/llama2-70b-serve-chat.yaml`` on one H200 with its session
rate scaled so the server stays under its capacity (0.2 sessions/s of ~5 turns). Wall times are
of a shared machine: noisy.
"""

from __future__ import annotations

import argparse
import time

from memsim.hardware import load_system
from memsim.sim import simulate
from memsim.workloads import load_trace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=100_000, help="requests")
    ap.add_argument("--eviction", default="lru")
    args = ap.parse_args()
    overrides = [f"serving.num_requests={args.n}", f"serving.kv_cache.eviction={args.eviction}"]
    if args.eviction == "ttl":
        overrides.append("serving.kv_cache.ttl_s=30")
    t0 = time.perf_counter()
    system = load_system("h200", overrides)
    trace = load_trace("llama2-70b-serve-chat", overrides)
    t1 = time.perf_counter()
    result = simulate(system, trace)
    t2 = time.perf_counter()
    sv = result.serving
    print(f"llama2-70b multi-turn chat on h200, {sv.requests:,} requests, eviction {args.eviction}")
    print(f"  trace {t1 - t0:6.2f} s   simulate {t2 - t1:6.2f} s   total {t2 - t0:6.2f} s "
          f"(target < 60 s)")
    print(f"  simulated {result.step_time_s:,.0f} s of serving, {result.events:,} events; completed "
          f"{sv.completed:,}, prefix hit rate {sv.prefix_hit_rate:.3f}, hits by tier "
          f"{sv.prefix_hits_by_tier}")
    print(f"  TTFT p50 {sv.ttft_s['p50']:.3f} s p99 {sv.ttft_s['p99']:.3f} s; TBT p99 "
          f"{sv.tbt_s['p99'] * 1e3:.1f} ms; preemptions {sv.preemptions}")


if __name__ == "__main__":
    main()
