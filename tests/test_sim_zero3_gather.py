"""ZeRO-3's all-gathers run at most ``prefetch_depth`` layers ahead of the compute (DeepSpeed's
prefetch, FSDP's ``limit_all_gathers``), so a few layers' gathered weights are live, not all."""

from __future__ import annotations

import memsim
from memsim.planners.registry import load_preset, run_preset


def test_gathered_weights_of_a_few_layers_only():
    # HBM made roomy so the peak is the demand; weights resident (sharded), so the gathers'
    # inputs are always ready and only the engine's window keeps them from racing ahead
    system = memsim.load_system("h100-sxm", ["hardware.tiers.hbm.capacity=2TiB"])
    trace = memsim.build_trace(memsim.load_workload(
        "llama2-70b-train", ["training.data_parallel=8", "training.zero_stage=3"]))
    plan = run_preset(load_preset("checkpoint-full"), system, trace)
    result = memsim.simulate(system, trace, plan)
    by_class = trace.bytes_by_class()
    states = by_class["weight"] + by_class["grad"] + by_class["optimizer"]
    checkpoints = trace.meta["activation_bytes_per_layer"]["input"] * trace.meta["layers"]
    gathered = trace.tensors["L{layer}.gathered"].bytes
    # was 68 layers' gathered weights at once (242 GiB of demand on 80 GiB)
    assert result.peak_bytes["hbm"] - states - checkpoints < 6 * gathered
