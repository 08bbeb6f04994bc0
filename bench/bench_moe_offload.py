"""MoE offload by batch: experts a decode step reads and what it costs (prints; never asserts).

    python bench/bench_moe_offload.py

Mixtral-8x7B (E=8, top-2) and DeepSeek-V3 (E=256, top-8): the expected distinct experts per
MoE layer for a decode batch, E·(1-(1-k/E)^b) under independent uniform routing, then Mixtral's
simulated step on an H100 node with half its weights homed in DRAM (a fixed plan, so only the
routing changes): bytes moved over PCIe per decode step and the decode time per token.
"""

from __future__ import annotations

import memsim
from memsim.contracts.plan import Plan
from memsim.workloads import build_trace, load_model, load_workload
from memsim.workloads.moe import touched_experts

BATCHES = (1, 2, 4, 8, 16, 64)


def routed() -> None:
    print("expected distinct experts per MoE layer, by decode batch")
    print(f"  {'model':<14}" + "".join(f"{b:>8}" for b in BATCHES))
    for name in ("mixtral-8x7b", "deepseek-v3"):
        arch = load_model(name)
        row = "".join(f"{touched_experts(arch.experts, arch.experts_per_token, b):>8.2f}" for b in BATCHES)
        print(f"  {name:<14}{row}   of {arch.experts}")


def simulated() -> None:
    system = memsim.load_system("h100-sxm")
    plan = Plan(placement={"weight": {"hbm": 0.5, "dram": 0.5}})
    print("\nMixtral-8x7B on h100-sxm, weights 50% in DRAM, prompt 128, 16 decode steps")
    print(f"  {'batch':>5} {'decode GB/step':>15} {'decode ms/step':>15}")
    for b in BATCHES:
        over = [f"inference.batch_size={b}", "inference.prompt_len=128", "inference.gen_len=17"]
        trace = build_trace(load_workload("mixtral-8x7b-infer", over))
        short = build_trace(load_workload("mixtral-8x7b-infer", [*over[:2], "inference.gen_len=1"]))
        full, base = (memsim.simulate(system, t, plan) for t in (trace, short))
        link = max(full.link_busy, key=full.link_busy.get)
        rate = next(lk for lk in system.links if lk.name in link).rate("dram")
        moved = (full.link_busy[link] * full.step_time_s - base.link_busy[link] * base.step_time_s) * rate
        per_step = (full.step_time_s - base.step_time_s) / 16
        print(f"  {b:>5} {moved / 16 / 1e9:>15.2f} {per_step * 1e3:>15.1f}")


if __name__ == "__main__":
    routed()
    simulated()
