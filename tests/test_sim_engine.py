"""Hand-checkable simulator cases: every expected time below is worked out from the spec numbers."""

from __future__ import annotations

import json

import pytest

from memsim.contracts.plan import Plan
from memsim.hardware.spec import System
from memsim.sim import diagnose, simulate, write_timeline
from memsim.sim.engine import Clock, StepEngine
from memsim.sim.flows import BOUNCE_CHUNK_BYTES, BOUNCE_CHUNKS
from memsim.sim.program import build_program
from memsim.sim.synthetic import inference_trace, training_trace
from memsim.workloads.trace import Block, Op, Tensor, Trace
from tests.conftest import FAST, GB, make_system


def copy_log(clock: Clock, copies: list[tuple[str, str, int]]) -> list[tuple[str, float]]:
    """Start every copy at t=0 and return (name, arrival time) in arrival order (SimPy style)."""
    log: list[tuple[str, float]] = []
    for i, (src, dst, n) in enumerate(copies):
        ev = clock.copier.copy(src, dst, n, f"c{i}", "test")
        ev.callbacks.append(lambda _e, i=i: log.append((f"c{i}", clock.env.now)))
    clock.run()
    return log


def test_one_copy_takes_latency_plus_bytes_over_bandwidth():
    clock = Clock(make_system(), timeline=False)
    assert copy_log(clock, [("dram", "hbm", 4 * GB)]) == [("c0", pytest.approx(5e-6 + 0.4))]


def test_two_copies_on_one_link_queue_fifo():
    clock = Clock(make_system(), timeline=False)
    one = 5e-6 + 0.4
    assert copy_log(clock, [("dram", "hbm", 4 * GB), ("dram", "hbm", 4 * GB)]) == [
        ("c0", pytest.approx(one)), ("c1", pytest.approx(2 * one))]
    assert clock.copier.engines["pcie:dram->hbm"].busy_s == pytest.approx(2 * one)


def test_opposite_directions_do_not_share():
    clock = Clock(make_system(), timeline=False)
    log = copy_log(clock, [("dram", "hbm", 4 * GB), ("hbm", "dram", 4 * GB)])
    assert [t for _, t in log] == [pytest.approx(5e-6 + 0.4)] * 2


def test_two_links_on_a_shared_port_each_take_twice_as_long():
    sys_ = make_system(
        tiers__hbm2={"kind": "hbm", "capacity": "80GB", "read_bw": FAST, "write_bw": FAST},
        ports={"switch": {"bandwidth": "10GB/s"}},
        links=[{"name": "pcie0", "kind": "pcie", "ends": ["hbm", "dram"], "bandwidth": "10GB/s",
                "port": "switch"},
               {"name": "pcie1", "kind": "pcie", "ends": ["hbm2", "dram"], "bandwidth": "10GB/s",
                "port": "switch"},
               {"name": "nvme", "kind": "nvme", "ends": ["dram", "ssd"], "bandwidth": "2GB/s"}])
    alone = copy_log(Clock(sys_, False), [("dram", "hbm", 4 * GB)])
    both = copy_log(Clock(sys_, False), [("dram", "hbm", 4 * GB), ("dram", "hbm2", 4 * GB)])
    assert alone == [("c0", pytest.approx(0.4))]
    assert [t for _, t in both] == [pytest.approx(0.8), pytest.approx(0.8)]


def test_port_sharing_ends_when_one_copy_finishes():
    """Processor sharing: 1 GB and 4 GB at once on a 10 GB/s port — the small one ends at 0.2 s,
    the big one then runs alone: 0.2 + 3 GB / 10 GB/s = 0.5 s."""
    sys_ = make_system(
        tiers__hbm2={"kind": "hbm", "capacity": "80GB", "read_bw": FAST, "write_bw": FAST},
        ports={"switch": {"bandwidth": "10GB/s"}},
        links=[{"name": "pcie0", "kind": "pcie", "ends": ["hbm", "dram"], "bandwidth": "10GB/s",
                "port": "switch"},
               {"name": "pcie1", "kind": "pcie", "ends": ["hbm2", "dram"], "bandwidth": "10GB/s",
                "port": "switch"},
               {"name": "nvme", "kind": "nvme", "ends": ["dram", "ssd"], "bandwidth": "2GB/s"}])
    log = copy_log(Clock(sys_, False), [("dram", "hbm", 1 * GB), ("dram", "hbm2", 4 * GB)])
    assert log == [("c0", pytest.approx(0.2)), ("c1", pytest.approx(0.5))]


def test_cxl_bandwidth_follows_its_concurrency_curve():
    """Curve: 1 stream 20 GB/s, 2 streams 24 GB/s in all → two copies get 12 GB/s each."""
    sys_ = make_system(
        tiers__cxl={"kind": "cxl", "capacity": "256GB", "read_bw": "20GB/s", "write_bw": "20GB/s",
                    "concurrency_curve": [[1, "20GB/s"], [2, "24GB/s"]]},
        links=[{"name": "pcie", "kind": "pcie", "ends": ["hbm", "dram"], "bandwidth": "100GB/s"},
               {"name": "cxl0", "kind": "cxl", "ends": ["cxl", "dram"], "bandwidth": "64GB/s"},
               {"name": "nvme", "kind": "nvme", "ends": ["dram", "ssd"], "bandwidth": "2GB/s"}])
    assert copy_log(Clock(sys_, False), [("cxl", "dram", 12 * GB)]) == [("c0", pytest.approx(0.6))]
    two = copy_log(Clock(sys_, False), [("cxl", "dram", 12 * GB), ("dram", "cxl", 12 * GB)])
    assert [t for _, t in two] == [pytest.approx(1.0), pytest.approx(1.0)]


def test_ssd_reads_follow_the_read_size_curve():
    """A 4 KiB read runs at the curve's 4 KiB rate (0.4 GB/s), a 1 GB one at full speed."""
    sys_ = make_system(tiers__ssd={"kind": "ssd", "capacity": "10TB", "read_bw": "2GB/s",
                                   "write_bw": "2GB/s",
                                   "read_size_curve": [["4KiB", "0.4GB/s"], ["1MiB", "2GB/s"]]})
    assert copy_log(Clock(sys_, False), [("ssd", "dram", 4096)]) == [
        ("c0", pytest.approx(4096 / 0.4e9))]
    assert copy_log(Clock(sys_, False), [("ssd", "dram", GB)]) == [("c0", pytest.approx(0.5))]


def test_multi_hop_copy_bounces_through_the_middle_tier():
    """SSD → HBM has no direct link: it crosses DRAM, pipelined, at the slowest hop (2 GB/s),
    holding a double-buffered bounce buffer in DRAM while in flight."""
    clock = Clock(make_system(), False)
    assert copy_log(clock, [("ssd", "hbm", 2 * GB)]) == [("c0", pytest.approx(5e-6 + 1.0))]
    assert clock.pools["dram"].peak == BOUNCE_CHUNK_BYTES * BOUNCE_CHUNKS
    assert clock.pools["dram"].used == 0 and clock.pools["hbm"].used == 2 * GB


def one_op_trace(flops: float, nbytes: int, weight: int = 1000) -> Trace:
    tensors = {"w": Tensor("w", weight, "weight"), "y": Tensor("y", 10, "activation")}
    ops = [Op("mm", "matmul", "forward", flops, nbytes, 0, ("w",), ("y",))]
    return Trace("one-op", "inference", tensors, [Block("b", ops)], {"data_parallel": 1})


def test_compute_bound_op_takes_flops_over_rate_plus_launch():
    r = simulate(make_system(), one_op_trace(1e12, 1000))
    assert r.step_time_s == pytest.approx(1e12 / (100e12 * 0.5) + 10e-6)
    assert r.breakdown["compute"] == pytest.approx(r.step_time_s)


def test_a_gemm_runs_at_its_rows_rate_and_flexgen_batches_split_the_rows():
    """With a rate curve by rows (what calibrate measures), a matmul with a shape runs at its
    token count's rate; FlexGen's GPU batches each multiply 1/n of the rows."""
    sys_ = make_system(compute__gpu__achieved_flops_by_rows={
        "matmul/forward": [[64, "10TFLOP/s"], [256, "40TFLOP/s"]]})
    mm = Op("mm", "matmul", "forward", 1e12, 0, 0, ("x",), ("y",), shape=(256, 1024, 1024))
    tensors = {"x": Tensor("x", 10, "activation"), "y": Tensor("y", 10, "activation")}
    trace = Trace("g", "inference", tensors, [Block("fwd", [mm])], {"data_parallel": 1})
    assert simulate(sys_, trace).step_time_s == pytest.approx(1e12 / 40e12 + 10e-6)
    split = Plan(num_gpu_batches=4, gpu_batch_size=64)  # 4 x (1/4 the FLOPs at 64 rows)
    assert simulate(sys_, trace, split).step_time_s == pytest.approx(4 * (0.25e12 / 10e12 + 10e-6))
    shapeless = Trace("g", "inference", tensors, [Block("fwd", [Op("mm", "matmul", "forward", 1e12, 0,
                                                                    0, ("x",), ("y",))])],
                      {"data_parallel": 1})
    assert simulate(sys_, shapeless).step_time_s == pytest.approx(1e12 / 50e12 + 10e-6)


def test_memory_bound_op_takes_bytes_over_bandwidth_plus_launch():
    r = simulate(make_system(), one_op_trace(1.0, 8 * 10**9))
    assert r.step_time_s == pytest.approx(8e9 / (1e12 * 0.8) + 10e-6)


def two_layer_trace(flops: float, weight: int) -> Trace:
    tensors = {"L{layer}.weight": Tensor("L{layer}.weight", weight, "weight"),
               "x": Tensor("x", 10, "activation")}
    ops = [Op("L{layer}.mm", "matmul", "forward", flops, 0, 0, ("L{layer}.weight", "x"), ("x",))]
    return Trace("two", "inference", tensors, [Block("fwd", ops, repeat=2)], {"data_parallel": 1})


def test_prefetch_overlapped_with_a_longer_op_adds_no_time():
    """Weights on DRAM, prefetch depth 1: layer 0's fetch is exposed, layer 1's hides under
    layer 0's compute (0.5 s > 0.4 s): step = fetch + 2 ops."""
    fetch, op = 5e-6 + 0.4, 25e12 / 50e12 + 10e-6
    r = simulate(make_system(), two_layer_trace(25e12, 4 * GB), Plan(placement={"weight": {"dram": 1.0}}))
    assert r.step_time_s == pytest.approx(fetch + 2 * op)
    assert r.breakdown["exposed_transfer"] == pytest.approx(fetch)
    assert r.peak_bytes["hbm"] == 2 * 4 * GB + 10  # two layers in flight at most, plus x
    depth0 = simulate(make_system(), two_layer_trace(25e12, 4 * GB),
                      Plan(placement={"weight": {"dram": 1.0}}, prefetch_depth=0))
    assert depth0.step_time_s == pytest.approx(2 * fetch + 2 * op)
    assert depth0.peak_bytes["hbm"] == 4 * GB + 10


def test_recompute_adds_the_forward_again():
    sys_ = make_system()
    trace = training_trace(layers=3, weight=GB // 4, optim=GB // 2, act=GB // 4, saved=GB, flops=1e13)
    keep = simulate(sys_, trace)
    again = simulate(sys_, trace, Plan(activations="recompute"))
    gpu = sys_.gpu
    fwd = sum(gpu.op_time(op.flops, op.bytes_read + op.bytes_written, op.dtype, op.kind, op.phase)
              for op in trace.blocks[1].ops) * 3
    assert again.breakdown["recompute"] == pytest.approx(fwd)
    assert again.step_time_s - keep.step_time_s == pytest.approx(fwd)
    assert again.peak_bytes["hbm"] < keep.peak_bytes["hbm"]
    assert again.mfu < keep.mfu  # recompute is not useful work


def test_activation_offload_moves_saved_activations_and_back():
    sys_ = make_system()
    trace = training_trace(layers=3, weight=GB // 4, optim=GB // 2, act=GB // 4, saved=GB, flops=1e13)
    keep = simulate(sys_, trace)
    off = simulate(sys_, trace, Plan(activations="offload", activation_tier="dram"))
    assert off.peak_bytes["dram"] > 0
    assert off.peak_bytes["hbm"] < keep.peak_bytes["hbm"]
    assert off.link_busy["pcie:hbm->dram"] > 0 and off.link_busy["pcie:dram->hbm"] > 0


def test_zero_offload_runs_the_optimizer_on_the_cpu():
    sys_ = make_system()
    trace = training_trace(layers=2, weight=GB, optim=4 * GB, act=GB // 4, saved=GB // 2, flops=1e13)
    plan = Plan(placement={"optimizer": {"dram": 1.0}, "grad": {"dram": 1.0}}, optimizer_device="cpu")
    r = simulate(sys_, trace, plan, timeline=True)
    cpu_tid = next(e["tid"] for e in r.timeline if e["ph"] == "M" and e["args"]["name"] == "cpu")
    on_cpu = {e["name"] for e in r.timeline if e["ph"] == "X" and e["tid"] == cpu_tid}
    assert on_cpu == {"L0.adam", "L1.adam"}
    assert r.peak_bytes["dram"] >= 2 * 4 * GB + 2 * GB  # optimizer states + gradients
    resident = simulate(sys_, trace)
    assert r.peak_bytes["hbm"] < resident.peak_bytes["hbm"]


def test_flexgen_loads_weights_once_per_layer_per_block():
    sys_ = make_system()
    trace = inference_trace(layers=2, weight=GB, kv=GB // 8, act=10**6, flops=1e11, gen=3)
    plan = Plan(placement={"weight": {"dram": 1.0}}, num_gpu_batches=4, gpu_batch_size=2)
    engine = StepEngine(sys_, build_program(trace, sys_, plan), plan.prefetch_depth, False, trace.meta)
    engine.run()
    weight_copies = [c for c in engine.clock.copier.log if c[0] == "dram" and c[2] == GB]
    blocks = 1 + 2  # prefill + (gen - 1) decode iterations
    assert len(weight_copies) == 2 * blocks


def test_kv_offload_fetches_the_context_and_writes_back_one_token():
    sys_ = make_system()
    trace = inference_trace(layers=1, weight=10**6, kv=516 * 1000, act=1000, flops=1e9, prompt=512, gen=4)
    plan = Plan(placement={"kv": {"dram": 1.0}})
    engine = StepEngine(sys_, build_program(trace, sys_, plan), 1, False, trace.meta)
    engine.run()
    out = sorted(c[2] for c in engine.clock.copier.log if c[0] == "hbm")
    into = sorted(c[2] for c in engine.clock.copier.log if c[0] == "dram")
    assert out == [1000, 1000, 1000, 512 * 1000]  # prefill writes 512 tokens, each decode one
    # prefill attention reads its prompt's KV; decode iteration i reads prompt + i + 1 tokens
    assert into == [512 * 1000, 513 * 1000, 514 * 1000, 515 * 1000]


def test_oom_names_the_tier_and_keeps_going_for_the_full_demand():
    sys_ = make_system(tiers__hbm={"kind": "hbm", "capacity": "5GB", "read_bw": FAST, "write_bw": FAST})
    trace = training_trace(layers=2, weight=GB, optim=4 * GB, act=GB // 4, saved=GB // 2, flops=1e12)
    r = simulate(sys_, trace)
    assert not r.feasible
    assert r.oom.tier == "hbm" and r.oom.needed_bytes > 5 * GB
    assert r.peak_bytes["hbm"] == simulate(make_system(), trace).peak_bytes["hbm"]
    d = diagnose(r)
    assert d.shortfalls[0].tier == "hbm" and d.shortfalls[0].short_bytes == r.peak_bytes["hbm"] - 5 * GB
    assert "hbm" in d.summary


def cpu_only() -> System:
    return System.model_validate({
        "name": "cpu-box",
        "tiers": {"dram": {"kind": "dram", "capacity": "4GB", "read_bw": "20GB/s", "write_bw": "20GB/s"},
                  "ssd": {"kind": "ssd", "capacity": "100GB", "read_bw": "2GB/s", "write_bw": "1GB/s",
                          "latency": "80us"}},
        "links": [{"name": "nvme", "kind": "nvme", "ends": ["dram", "ssd"], "bandwidth": "3.5GB/s"}],
        "compute": {"cpu": {"kind": "cpu", "memory": "dram", "peak_flops": {"fp32": "1TFLOP/s"},
                            "mem_bw": "20GB/s", "launch_overhead": "10us"}}})


def test_cpu_only_system_runs_on_dram_and_streams_from_ssd():
    sys_ = cpu_only()
    trace = inference_trace(layers=4, weight=GB // 2, kv=GB // 16, act=10**6, flops=1e9, gen=3)
    resident = simulate(sys_, trace)
    assert resident.feasible and resident.peak_bytes["ssd"] == 0
    assert resident.peak_bytes["dram"] >= 4 * GB // 2
    offload = simulate(sys_, trace, Plan(placement={"weight": {"ssd": 1.0}}))
    assert offload.feasible
    assert offload.peak_bytes["dram"] < resident.peak_bytes["dram"]
    assert offload.link_busy["nvme:ssd->dram"] > 0
    assert offload.step_time_s > resident.step_time_s
    assert offload.mfu > 0


def test_comm_ops_use_the_network_link_or_take_no_time():
    """A comm op's bytes are what a rank sends plus receives: a full-duplex link moves both
    halves at once. A one-GPU machine with no fabric at all prices them at nothing, and says so."""
    tensors = {"g": Tensor("g", GB, "workspace")}
    ops = [Op("allreduce", "comm", "backward", 0, 2 * GB, 0, (), ("g",)),
           Op("use", "elementwise", "backward", 0, 0, 0, ("g",), ())]
    trace = Trace("comm", "training", tensors, [Block("b", ops)], {"data_parallel": 1})
    none = simulate(make_system(), trace)
    assert any("collective (comm) ops take no time" in n for n in none.notes)
    with_net = simulate(make_system(links=[
        {"name": "pcie", "kind": "pcie", "ends": ["hbm", "dram"], "bandwidth": "10GB/s"},
        {"name": "nic", "kind": "network", "ends": ["dram", "ssd"], "bandwidth": "20GB/s"}]), trace)
    assert with_net.step_time_s == pytest.approx(GB / 20e9 + 10e-6)
    assert with_net.breakdown["exposed_transfer"] == pytest.approx(0.05)


def test_timeline_is_chrome_trace_json(tmp_path):
    trace = training_trace(layers=2, weight=GB, optim=4 * GB, act=GB // 4, saved=GB // 2, flops=1e12)
    r = simulate(make_system(), trace, Plan(placement={"weight": {"dram": 1.0}}), timeline=True)
    path = tmp_path / "t.json"
    write_timeline(r.timeline, path)
    doc = json.loads(path.read_text())
    assert doc["displayTimeUnit"] == "ms"
    tracks = {e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"gpu", "pcie:dram->hbm"} <= tracks
    spans = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert all(e["dur"] >= 0 and {"name", "ts", "pid", "tid"} <= set(e) for e in spans)
    counters = {e["name"] for e in doc["traceEvents"] if e["ph"] == "C"}
    assert "hbm bytes" in counters
    assert max(e["ts"] + e["dur"] for e in spans) == pytest.approx(r.step_time_s * 1e6)


def test_plan_for_another_workload_or_unknown_tier_is_a_spec_error():
    from memsim.errors import SpecError

    trace = one_op_trace(1e9, 0)
    with pytest.raises(SpecError, match="fingerprint"):
        simulate(make_system(), trace, Plan(fingerprint="0123456789abcdef", workload="other"))
    with pytest.raises(SpecError, match="unknown tier"):
        simulate(make_system(), trace, Plan(placement={"weight": {"cxl": 1.0}}))


def test_copy_slowdown_stretches_an_op_only_while_the_copy_runs():
    """Layer 1's 0.4 s prefetch runs during layer 0's 0.5 s op; with copy_slowdown 0.5 the op
    progresses at 1/1.5 for those 0.4 s: it ends 0.4 − 0.4/1.5 = 0.1333 s later."""
    sys_ = make_system(compute__gpu__copy_slowdown=0.5)
    fetch, op = 5e-6 + 0.4, 25e12 / 50e12 + 10e-6
    r = simulate(sys_, two_layer_trace(25e12, 4 * GB), Plan(placement={"weight": {"dram": 1.0}}))
    assert r.step_time_s == pytest.approx(fetch + 2 * op + 0.4 - 0.4 / 1.5)


def test_slow_write_backs_hold_the_next_segment_back():
    """Each layer writes 4 GB homed in DRAM (0.4 s over the link) after a 0.2 s op. Depth 0: a
    layer starts only when the previous one's write-back is done; depth 1: one may be pending."""
    tensors = {"L{layer}.kv": Tensor("L{layer}.kv", 4 * GB, "kv")}
    ops = [Op("L{layer}.write", "matmul", "prefill", 1e13, 0, 0, (), ("L{layer}.kv",))]
    trace = Trace("wb", "inference", tensors, [Block("layers", ops, repeat=3)], {"data_parallel": 1})
    d, c = 1e13 / 50e12 + 10e-6, 5e-6 + 0.4
    plan = Plan(placement={"kv": {"dram": 1.0}}, prefetch_depth=0)
    r = simulate(make_system(), trace, plan)
    assert r.step_time_s == pytest.approx(3 * (d + c))
    assert r.breakdown["memory_wait"] == pytest.approx(2 * c)
    assert r.peak_bytes["hbm"] == 4 * GB  # one layer's working copy at a time
    r1 = simulate(make_system(), trace, Plan(placement={"kv": {"dram": 1.0}}, prefetch_depth=1))
    assert r1.step_time_s == pytest.approx(d + 3 * c)
    assert r1.breakdown["memory_wait"] == pytest.approx(c - d)
