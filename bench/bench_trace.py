"""Build the 10,000-request Llama-2-70B serving trace and print its cost: wall time, peak Python
heap (tracemalloc) and JSON size. Target (issue 3): a few seconds and under 100 MB.

    python bench/bench_trace.py [workload ...]
"""

from __future__ import annotations

import json
import sys
import time
import tracemalloc

from memsim.workloads import build_trace, load_workload


def measure(name: str) -> dict:
    tracemalloc.start()
    start = time.perf_counter()
    trace = build_trace(load_workload(name))
    build_s = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    start = time.perf_counter()
    text = json.dumps(trace.to_dict(), sort_keys=True)
    json_s = time.perf_counter() - start
    return {"workload": name, "build_s": round(build_s, 3), "tracemalloc_peak_mb": round(peak / 1e6, 2),
            "json_mb": round(len(text) / 1e6, 3), "json_s": round(json_s, 3),
            "requests": len(trace.requests) if trace.requests else 0, "op_templates":
            sum(len(b.ops) for b in trace.blocks), "ops": trace.num_ops}


def main(names: list[str]) -> None:
    for name in names or ["llama2-70b-serve"]:
        row = measure(name)
        print(" ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
