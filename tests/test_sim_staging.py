"""Serial staging (Plan.staging, memsim.sim.staging): DeepSpeed's NVMe swapper reads a parameter
into a pinned buffer and only then copies it to the GPU, where memsim's default pipelines the two
hops. On the test box: NVMe reads at 7 GB/s, PCIe at 25 GB/s."""

from __future__ import annotations

import copy

import pytest

from memsim.planners import load_preset, run_preset
from memsim.sim import simulate
from memsim.sim.engine import Clock
from memsim.workloads import build_trace, load_workload
from tests.conftest import small_system

GB = 1e9
READ, PCIE = 7 * GB, 25 * GB  # small_system(): the drive's read limit and the PCIe link


def _copies(serial: bool, n: int, nbytes: int = int(2 * GB)) -> tuple[float, list[float], Clock]:
    """Time ``n`` copies NVMe → HBM issued at once take, and when each arrived."""
    clock = Clock(small_system(), timeline=False)
    clock.copier.serial = serial
    env = clock.env
    arrived: list[float] = []
    events = [clock.copier.copy("nvme", "hbm", nbytes, f"w{i}", "test") for i in range(n)]
    for ev in events:
        ev.callbacks.append(lambda _e: arrived.append(env.now))
    env.run()
    return env.now, arrived, clock


def test_serial_copy_takes_both_hops_in_turn():
    """One copy: B/r_read + B/r_pcie serially, against B/min(r) pipelined."""
    b = 2 * GB
    pipelined, _, _ = _copies(False, 1)
    serial, _, _ = _copies(True, 1)
    assert pipelined == pytest.approx(b / READ, rel=1e-3)
    assert serial == pytest.approx(b / READ + b / PCIE, rel=1e-3)
    assert serial / pipelined == pytest.approx(1 + READ / PCIE, rel=1e-3)  # 28% slower


def test_serial_copies_do_not_overlap_the_next_read():
    """The swapper reads synchronously: the next read starts once the last copy has delivered,
    so n copies take n times one copy, not n reads plus one PCIe hop."""
    b = 2 * GB
    total, arrived, clock = _copies(True, 3)
    one = b / READ + b / PCIE
    assert total == pytest.approx(3 * one, rel=1e-3)
    assert arrived == pytest.approx([one, 2 * one, 3 * one], rel=1e-3)
    # the PCIe engine was busy only for its hop, free for other copies during the reads
    pcie = next(e for name, e in clock.copier.engines.items() if name.startswith("pcie"))
    assert pcie.busy_s == pytest.approx(3 * b / PCIE, rel=1e-3)


def test_serial_copy_holds_the_whole_copy_in_the_bounce_buffer():
    """Pipelined copies hold two 64 MiB chunks in DRAM; a serial one the whole parameter."""
    b = int(2 * GB)
    _, _, pipelined = _copies(False, 1, b)
    _, _, serial = _copies(True, 1, b)
    assert pipelined.pools["dram"].peak == 128 << 20
    assert serial.pools["dram"].peak == b


@pytest.mark.slow
def test_serial_staging_is_slower_than_pipelined():
    """A copy-bound NVMe step staged serially is slower than pipelined, by no more than the PCIe
    hop's share (1 + r_read / r_pcie). (ZeRO-Inference pipelines: its NVMe swap-in runs ahead.)"""
    system = small_system(hbm="8GiB")
    trace = build_trace(load_workload("llama3-8b-infer", ["inference.batch_size=4",
                                                          "inference.prompt_len=128",
                                                          "inference.gen_len=4"]))
    preset = load_preset("zero-inference")
    preset = preset.model_copy(update={"options": {**preset.options, "offload_param": "nvme"}})
    plan = run_preset(preset, system, trace)
    assert plan.staging == "pipelined"  # prefetch_nvme: the next parameters read meanwhile
    serial = copy.deepcopy(plan)
    serial.staging = "serial"
    slow, fast = simulate(system, trace, serial), simulate(system, trace, plan)
    assert slow.feasible and fast.feasible
    ratio = slow.step_time_s / fast.step_time_s
    assert 1.05 < ratio <= 1 + READ / PCIE + 0.01


def test_plan_refuses_an_unknown_staging():
    from memsim.contracts.plan import Plan
    from memsim.errors import SpecError

    assert Plan.from_dict({"staging": "serial"}).staging == "serial"
    with pytest.raises(SpecError, match="pipelined or serial") as err:
        Plan.from_dict({"staging": "overlapped"}, file="p.yaml")
    assert err.value.key == "staging"
