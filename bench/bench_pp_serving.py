"""Pipeline-parallel serving with vLLM's virtual engines against one batch at a time (prints; never
asserts).

    python bench/bench_pp_serving.py [-n REQUESTS]

Llama-2-70B at TP4 on A100 80GB, ``-n`` requests (default 512) of 256 prompt and 256 output
tokens all arriving at t=0, max_num_seqs 32 so batches are capped by the scheduler and not the
KV pool: a saturated server. For PP = 1, 2, 4 it prints the tokens per second, the median time
between tokens and the wall time of the simulation, for one batch at a time through the stages
(``ServingEngine``) and for p virtual engines (memsim.sim.virtual_engines). Balanced stages and
saturated engines should give about p× the tokens per second at about the same TBT (each batch
still passes every stage). Wall times are of a possibly shared machine.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from memsim.contracts.plan import Plan
from memsim.hardware import load_system
from memsim.sim.serving import ServingEngine
from memsim.sim.virtual_engines import serve_virtual_engines
from memsim.workloads import load_trace
from memsim.workloads.trace import Requests


def main(argv: list[str]) -> None:
    n = int(argv[argv.index("-n") + 1]) if "-n" in argv else 512
    system = load_system("a100-80gb-sxm")
    print(f"Llama-2-70B TP4 on A100 80GB, {n} requests of 256 + 256 tokens at t=0, max_num_seqs 32")
    print(f"{'PP':>3} {'engine':<22} {'tok/s':>9} {'TBT p50 ms':>11} {'vs one batch':>13} {'wall s':>7}")
    for pp in (1, 2, 4):
        trace = load_trace("llama2-70b-serve", ["serving.num_requests=1", "serving.parallel.tensor=4",
                                                f"serving.parallel.pipeline={pp}",
                                                "serving.scheduler.max_num_seqs=32"])
        trace = dataclasses.replace(trace, requests=Requests([0.0] * n, [256] * n, [256] * n))
        t0 = time.perf_counter()
        one = ServingEngine(system, trace, Plan(), False).run().serving
        t1 = time.perf_counter()
        rows = [("one batch at a time", one, t1 - t0)]
        if pp > 1:
            ve = serve_virtual_engines(system, trace, Plan()).serving
            rows.append((f"{pp} virtual engines", ve, time.perf_counter() - t1))
        for label, s, wall in rows:
            gain = s.throughput_tokens_per_s / one.throughput_tokens_per_s
            print(f"{pp:>3} {label:<22} {s.throughput_tokens_per_s:>9.1f} {s.tbt_s['p50'] * 1e3:>11.2f} "
                  f"{gain:>12.2f}x {wall:>7.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
