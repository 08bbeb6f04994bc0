"""How swap copies are submitted (``serving.swap.submit``, memsim/sim/swap.py): one call each, one
batch of descriptors, one gather kernel. The hand system's link: 10 GB/s, 5 us per call, 1 us per
further descriptor of a batch."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from memsim.sim.engine import Clock
from memsim.sim.swap import SwapCost, SwapStats, start_swaps
from tests.conftest import make_system
from tests.test_cli_user_errors import memsim

LAT, DESC, BW = 5e-6, 1e-6, 10e9
BLOCK = 16 * 2 * 4 * 8 * 128 * 2  # 16 tokens of a 4-layer, 8 KV-head, head_dim 128 bf16 model


def hand(descriptor: str | None = "1us"):
    pcie = {"name": "pcie", "kind": "pcie", "ends": ["hbm", "dram"], "bandwidth": "10GB/s",
            "latency": "5us"}
    if descriptor is not None:
        pcie["descriptor_latency"] = descriptor
    return make_system(links=[pcie, {"name": "nvme", "kind": "nvme", "ends": ["dram", "ssd"],
                                     "bandwidth": "2GB/s"}])


def swapped(cost: SwapCost, out: list[int], back: list[int] = (), system=None) -> SwapStats:
    """One iteration's swaps (out: hbm → dram, back: dram → hbm), run to the last landing."""
    clock = Clock(system or hand(), False)
    stats = SwapStats()
    start_swaps(clock.env, clock.copier, cost, stats, "hbm", "dram", BLOCK, list(out), list(back),
                sum(out) * BLOCK, 0)
    clock.env.run()
    return stats


def test_each_submit_mode_costs_what_its_formula_says():
    layers, n = 4, 10
    copies, data = 2 * layers * n, n * BLOCK / BW  # 80 copies of 16 tokens of one layer's K or V
    call = swapped(SwapCost(layers=layers), [n])
    batch = swapped(SwapCost(layers=layers, submit="batch"), [n])
    kernel = swapped(SwapCost(layers=layers, submit="kernel"), [n])
    assert call.seconds == pytest.approx(copies * LAT + data)
    assert batch.seconds == pytest.approx(LAT + (copies - 1) * DESC + data)
    assert kernel.seconds == pytest.approx(LAT + data)
    assert call.copies == batch.copies == kernel.copies == copies  # same copies, other submission
    assert call.bytes == batch.bytes == kernel.bytes == n * BLOCK


def test_batch_of_groups_pays_one_descriptor_per_group():
    cost = SwapCost(layers=4, granularity="group", group_blocks=4, submit="batch")
    copies = 2 * 4 * (2 + 3)  # runs of 5 and 9 blocks: 2 and 3 groups, per layer and plane
    assert swapped(cost, [5, 9]).seconds == pytest.approx(LAT + (copies - 1) * DESC
                                                          + 14 * BLOCK / BW)


def test_each_direction_is_its_own_submission():
    cost = SwapCost(layers=4, granularity="request", submit="batch")
    stats = swapped(cost, [3], [2])  # out and back run on the link's two copy engines at once
    one_way = LAT + (2 * 4 - 1) * DESC
    assert stats.seconds == pytest.approx(one_way + 3 * BLOCK / BW)  # the longer direction
    assert stats.copies == 16 and stats.bytes == 5 * BLOCK


def test_overlap_splits_the_swap_into_two_submissions():
    layers, n = 4, 12
    cost = SwapCost(layers=layers, submit="batch", overlap=True)
    copies = 2 * layers * n
    head = 2 * n  # the first layer's share, submitted first; the rest is a second batch
    assert swapped(cost, [n]).seconds == pytest.approx(
        LAT + (head - 1) * DESC + LAT + (copies - head - 1) * DESC + n * BLOCK / BW)


def test_without_a_descriptor_cost_a_batch_costs_what_the_calls_do():
    system = hand(descriptor=None)
    call = swapped(SwapCost(layers=4), [7], system=system)
    batch = swapped(SwapCost(layers=4, submit="batch"), [7], system=system)
    assert batch.seconds == pytest.approx(call.seconds)


@settings(max_examples=60, deadline=None)
@given(out=st.lists(st.integers(1, 200), min_size=1, max_size=5),
       back=st.lists(st.integers(1, 200), max_size=3), layers=st.integers(1, 80),
       granularity=st.sampled_from(["block", "group", "request"]), group=st.integers(1, 32),
       overlap=st.booleans(), desc=st.floats(0.0, 5.0))
def test_kernel_never_slower_than_batch_never_slower_than_calls(out, back, layers, granularity,
                                                                group, overlap, desc):
    system = hand(descriptor=f"{desc}us")
    times = {}
    for submit in ("call", "batch", "kernel"):
        cost = SwapCost(layers=layers, granularity=granularity,
                        group_blocks=group if granularity == "group" else 8, overlap=overlap,
                        submit=submit)
        times[submit] = swapped(cost, out, back, system).seconds
    assert times["kernel"] <= times["batch"] * (1 + 1e-12) + 1e-15
    assert times["batch"] <= times["call"] * (1 + 1e-12) + 1e-15


def test_a_descriptor_dearer_than_a_call_is_refused():
    with pytest.raises(ValidationError, match="descriptor_latency"):
        hand(descriptor="6us")


def test_the_h100_catalog_prices_vllm_pr_48434s_unmerged_batch():
    """8,192 descriptors of 8 KiB (4,096 blocks, K and V apart) in one batch over h100-sxm's PCIe 5
    link: latency once (5 us + DRAM's 0.1 us), 1.1 us per further descriptor, 64 MiB at
    3.938 GB/s × 16 lanes × 0.8; vLLM PR #48434 measured 10.3 ms."""
    from memsim.hardware import load_system

    system = load_system("h100-sxm")
    clock = Clock(system, False)
    stats = SwapStats()
    start_swaps(clock.env, clock.copier, SwapCost(layers=1, submit="batch"), stats, "hbm", "dram",
                16 * 1024, [], [4096], 0, 0)
    clock.env.run()
    expect = 5.1e-6 + 8191 * 1.1e-6 + 8192 * 8192 / (3.938e9 * 16 * 0.8)
    assert stats.seconds == pytest.approx(expect, rel=1e-9)
    assert stats.seconds == pytest.approx(10.3e-3, rel=0.05)


def test_the_reproduction_case_rows_come_from_the_simulated_swaps():
    from memsim.studies.reproduce import run_case

    res = run_case("swap-submit")
    rows = {f.key: f for f in res.figures}
    assert len(rows) == 4 and all(f.memsim and f.memsim > 0 for f in rows.values())
    assert abs(rows["run0"].diff) < 0.05 and abs(rows["run1"].diff) < 0.10
    assert rows["run2"].memsim < rows["run0"].memsim / 4  # merging 16 descriptors into one


SWAP_WORKLOAD = """name: swap-submit-test
model: llama-3-8b
serving:
  arrival: {process: poisson, rate_per_s: 50.0, seed: 1}
  num_requests: 60
  prompt_len: {dist: uniform, low: 1024, high: 2048}
  output_len: {dist: fixed, value: 256}
  scheduler: {preempt: swap, swap_space: 16, max_num_seqs: 64}
"""


@pytest.mark.slow
def test_cli_swap_seconds_fall_call_batch_kernel_and_a_bad_mode_exits_2(tmp_path):
    path = tmp_path / "swap.yaml"
    path.write_text(SWAP_WORKLOAD)
    base = ["simulate", "--hardware", "h100-sxm", "--workload", str(path),
            "--set", "hardware.tiers.hbm.capacity=20GiB"]  # Llama-3-8B leaves ~4 GB of KV
    docs = {}
    for submit in ("call", "batch", "kernel"):
        code, doc = memsim(*base, "--set", f"serving.swap.submit={submit}")
        assert code == 0
        docs[submit] = doc["serving"]
    assert docs["call"]["preemptions"] > 0
    assert docs["call"]["swap_copies"] == docs["batch"]["swap_copies"] == docs["kernel"]["swap_copies"]
    assert docs["call"]["swap_bytes"] == docs["kernel"]["swap_bytes"] > 0
    assert docs["call"]["swap_seconds"] > docs["batch"]["swap_seconds"] > docs["kernel"]["swap_seconds"] > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(SWAP_WORKLOAD + "  swap: {submit: dma}\n")
    code, err = memsim("simulate", "--hardware", "h100-sxm", "--workload", str(bad))
    assert code == 2 and err["key"] == "serving.swap.submit" and "bad.yaml" in err["file"]
