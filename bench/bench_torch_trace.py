"""Trace Llama-2-70B-shaped and 7B modules on the meta device and print what it costs: wall time,
the process's peak RSS, and the trace's size. Issue 3's claim: a 70B model traces on a laptop.

    python bench/bench_torch_trace.py [--seq 4096] [--quick]

``flops / (6 N T)`` is the ratio of the traced training FLOPs to the 6 × parameters × tokens rule
(Kaplan et al. 2020); above 1 by the attention score FLOPs and the LM head's share.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from memsim.workloads.torch_trace import trace_factory

EX = "memsim.workloads.torch_examples"


def measure(factory: str, inputs: list[str], train: bool, attention: str) -> dict:
    start = time.perf_counter()
    trace = trace_factory(f"{EX}:{factory}", inputs, dtype="bf16", train=train, attention=attention)
    wall = time.perf_counter() - start
    meta = trace.meta
    tokens = meta["tokens_per_step"]
    return {
        "module": factory, "inputs": " ".join(inputs), "train": train, "attention": attention,
        "wall_s": round(wall, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "params": meta["params"], "ops": trace.num_ops, "tensors": trace.num_tensors,
        "tflops": round(trace.flops / 1e12, 1),
        "flops_over_6NT": round(trace.flops / (6 * meta["params"] * tokens), 3) if train else None,
        "weights_gib": round(meta["per_device_bytes"]["weights"] / 2**30, 1),
        "peak_activations_gib": round(meta["peak_activation_bytes"] / 2**30, 1),
        "json_mb": round(len(json.dumps(trace.to_dict())) / 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--quick", action="store_true", help="only the 7B stack and 70B flash")
    args = parser.parse_args()
    cases = [("linear_stack", ["1x4096"], True, "math"),
             ("gpt_70b", [f"1x{args.seq}:int64"], True, "flash")]
    if not args.quick:
        cases += [("gpt_70b", [f"1x{args.seq}:int64"], False, "flash"),
                  ("gpt_70b", [f"1x{args.seq}:int64"], True, "math")]
    for case in cases:
        print(json.dumps(measure(*case)), flush=True)


if __name__ == "__main__":
    main()
