"""Swap preemption's cost by mechanism (memsim/sim/swap.py, ``serving.swap``); prints, never asserts.

    python bench/bench_swap.py

1. One Llama-3-8B request of 2,048 tokens (128 blocks of 16) swapped out over an H100 SXM's
   PCIe 5 link (h100-sxm.yaml: 5 us per copy plus the HBM's 0.6 us, 1.1 us per further
   descriptor of a batch), per granularity and submission (call, batch, kernel): copies,
   seconds and the rate the swap achieves.
2. A serving run that preempts (Llama-3-8B on an L4, 60 Poisson requests at 50/s, prompts of
   1,024-2,048 tokens, 256 out, swap space 16 GiB) under vLLM's swap and FastSwitch's three
   changes one by one: TTFT/TBT p99, switch seconds, copies.
3. The same run on an h100-sxm whose HBM is cut to 20 GiB (its link has a batch descriptor
   cost; the L4's does not), per ``serving.swap.submit``.
4. The same run with ``serving.kv_budget`` (4 sinks + a 508-token window: StreamingLLM serving):
   each request holds at most 32 blocks, so more requests fit the pool.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from memsim.hardware import load_system
from memsim.sim import simulate
from memsim.sim.engine import Clock
from memsim.sim.swap import SwapCost, SwapStats, start_swaps
from memsim.workloads import load_trace

WORKLOAD = """name: swap-bench
model: llama-3-8b
serving:
  arrival: {process: poisson, rate_per_s: 50.0, seed: 1}
  num_requests: 60
  prompt_len: {dist: uniform, low: 1024, high: 2048}
  output_len: {dist: fixed, value: 256}
  scheduler: {preempt: swap, swap_space: 16, max_num_seqs: 64}
"""

VARIANTS = [
    ("vllm (block, blocking)", None),
    ("group of 8 blocks", {"granularity": "group", "group_blocks": 8}),
    ("request", {"granularity": "request"}),
    ("group 8 + overlap", {"granularity": "group", "group_blocks": 8, "overlap": True}),
    ("group 8 + overlap + reuse", {"granularity": "group", "group_blocks": 8, "overlap": True,
                                   "reuse": True}),
]


def one_request() -> None:
    system = load_system("h100-sxm")
    layers, block_bytes, blocks = 32, 16 * 2 * 8 * 128 * 2 * 32, 128  # Llama-3-8B, bf16
    print(f"== one 2,048-token Llama-3-8B swap-out on h100-sxm ({blocks} blocks, "
          f"{block_bytes // 2**10} KiB each over all layers, {block_bytes // (2 * layers) // 2**10} "
          "KiB per layer and K/V) ==")
    for name, gran, group in (("block", "block", 8), ("group 8", "group", 8), ("request", "request", 8)):
        for submit in ("call", "batch", "kernel"):
            cost = SwapCost(layers=layers, granularity=gran, group_blocks=group, submit=submit)
            clock = Clock(system, False)
            stats = SwapStats()
            start_swaps(clock.env, clock.copier, cost, stats, "hbm", "dram", block_bytes, [blocks],
                        [], blocks * block_bytes, 0)
            clock.env.run()
            print(f"  {name:8s} {submit:6s} {stats.copies:6d} copies  {stats.seconds * 1e3:7.3f} ms  "
                  f"{stats.bytes / stats.seconds / 1e9:6.1f} GB/s")


def serving_runs() -> None:
    system = load_system("l4")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "swap-bench.yaml"
        path.write_text(WORKLOAD)
        print("== Llama-3-8B on l4, 60 requests at 50/s, preempt: swap ==")
        print(f"  {'serving.swap':28s} {'preempt':>7s} {'TTFT p99':>9s} {'TBT p99':>9s} "
              f"{'switch s':>9s} {'copies':>8s} {'GB swapped':>10s} {'sim s':>6s}")
        for name, swap in VARIANTS:
            trace = load_trace(str(path))
            if swap is not None:
                trace.meta["swap"] = swap
            t0 = time.perf_counter()
            s = simulate(system, trace).serving
            wall = time.perf_counter() - t0
            print(f"  {name:28s} {s.preemptions:7d} {s.ttft_s['p99']:8.2f}s {s.tbt_s['p99'] * 1e3:7.1f}ms "
                  f"{s.swap_seconds:9.3f} {s.swap_copies:8d} {s.swap_bytes / 1e9:10.2f} {wall:6.1f}")


def submit_runs() -> None:
    system = load_system("h100-sxm", ["hardware.tiers.hbm.capacity=20GiB"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "swap-bench.yaml"
        path.write_text(WORKLOAD)
        print("== the same run on h100-sxm with 20 GiB of HBM, per serving.swap.submit ==")
        for submit in ("call", "batch", "kernel"):
            trace = load_trace(str(path))
            trace.meta["swap"] = {"submit": submit}
            s = simulate(system, trace).serving
            print(f"  {submit:6s} preemptions {s.preemptions:3d}  TTFT p99 {s.ttft_s['p99']:6.2f}s  "
                  f"switch {s.swap_seconds:6.3f} s  copies {s.swap_copies:7d}")


def budget_runs() -> None:
    system = load_system("l4")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "swap-bench.yaml"
        print("== the same run, every token's KV kept vs serving.kv_budget {sink: 4, window: 508} ==")
        for name, extra in (("all KV kept", ""), ("kv_budget 512", "  kv_budget: {sink: 4, window: 508}\n")):
            path.write_text(WORKLOAD + extra)
            r = simulate(system, load_trace(str(path)))
            s = r.serving
            print(f"  {name:14s} preemptions {s.preemptions:3d}  TTFT p99 {s.ttft_s['p99']:6.2f}s  "
                  f"throughput {s.throughput_tokens_per_s:6.1f} tok/s  KV pool used {s.kv_utilization:.0%}")


if __name__ == "__main__":
    one_request()
    serving_runs()
    submit_runs()
    budget_runs()
