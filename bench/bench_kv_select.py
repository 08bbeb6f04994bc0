"""Kept and fetched KV on InfiniGen's Figure 14 setup (prints; never asserts).

    python bench/bench_kv_select.py

The setup is InfiniGen's artifact (snu-comparch/InfiniGen, speedup/scripts/figure14/run.sh and
speedup/README.md): OPT-13B in fp16 on one RTX A6000 48 GB, PCIe 3.0 x16, FlexGen with the
weights on the GPU and the KV cache in host memory (``--percent 100 0 0 100 100 0``), no
overlap of copies and compute (``--overlap false``: prefetch_depth 0), batch 20, prompt 1920,
128 new tokens. Schemes, as the script runs them:

* FlexGen: every decode step copies each layer's whole KV from the CPU;
* FlexGen int4 (``--compress-cache``): the same at 4 bits (group-wise scales not counted);
* H2O (``--max-num-kv 415 --hh-ratio 0.1``): a budget of 415 kept tokens, still on the CPU;
* InfiniGen (``--alpha 4 --partial-weight-ratio 0.2 --max-num-kv 400``): at most 400 tokens
  fetched per head, chosen on an on-GPU copy of 20% of the key channels in fp16.

memsim's a6000-workstation is the ZeRO-Inference machine (PCIe Gen4); the link is set to Gen3
here as InfiniGen's machine has it. The paper's headline is "up to 3.00x" over prior KV-cache
management (arXiv 2406.19707, abstract); the per-scheme latencies of its Figure 14 are not in
memsim's reference, so this prints memsim's figures only.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import yaml

from memsim.hardware import load_system
from memsim.planners import Plan
from memsim.sim import simulate
from memsim.workloads import load_trace

ROOT = Path(__file__).resolve().parents[1]
BASE = {"batch_size": 20, "prompt_len": 1920, "gen_len": 128, "dtype": "fp16"}
SCHEMES = {
    "flexgen": {},
    "flexgen-int4": {"kv_bits": 4},
    "h2o-415": {"kv_budget": {"sink": 0, "window": 0, "budget": 415}},
    "infinigen-400": {"kv_prefetch": {"top_k": 400, "selector_bits": 16, "selector_channels": 0.2}},
}


def main() -> None:
    system = load_system("a6000-workstation", ["hardware.links.0.pcie_gen=3"])
    plan = Plan(placement={"kv": {"dram": 1.0}}, prefetch_depth=0)
    times = {}
    print("OPT-13B, batch 20, 1920 + 128 tokens, A6000 over PCIe 3.0, KV in DRAM, no overlap")
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in SCHEMES.items():
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(yaml.safe_dump({
                "name": name, "model": str(ROOT / "studies/reproductions/opt-13b.json"),
                "inference": {**BASE, **extra}}))
            t0 = time.perf_counter()
            r = simulate(system, load_trace(path), plan)
            times[name] = r.step_time_s
            print(f"  {name:14s} latency {r.step_time_s:8.2f} s  peak hbm {r.peak_bytes['hbm'] / 2**30:6.2f}"
                  f" GiB  exposed transfer {r.breakdown['exposed_transfer']:7.2f} s  "
                  f"(simulated in {time.perf_counter() - t0:.1f} s)")
    for name in ("flexgen", "flexgen-int4", "h2o-415"):
        print(f"  infinigen-400 speed-up over {name}: {times[name] / times['infinigen-400']:.2f}x")


if __name__ == "__main__":
    main()
