"""One "usable bytes of a tier" for the MIP's capacity rows and the baselines' budgets: capacity
less the runtime's fixed non-tensor lines, as the simulator's pools hold them."""

from __future__ import annotations

from memsim.hardware import load_system
from memsim.hardware.overheads import reserved_lines, resident_room, runtime_data, usable_bytes
from memsim.planners.space import build_space
from memsim.units import parse_bytes

MiB, GiB = 2**20, 2**30


def test_usable_bytes_is_capacity_less_the_fixed_lines():
    h100 = load_system("h100-sxm")
    fixed = 512 * MiB + 2 * 32 * MiB  # CUDA context, two Hopper cuBLAS workspaces
    assert usable_bytes(h100)["hbm"] == 80 * GiB - fixed
    assert usable_bytes(h100)["dram"] == h100.tiers["dram"].capacity  # host tiers hold none
    nccl = sum(reserved_lines(h100, {"data_parallel": 8})["hbm"].values()) - fixed
    assert nccl > 0 and usable_bytes(h100, {"data_parallel": 8})["hbm"] == 80 * GiB - fixed - nccl
    ideal = load_system("h100-sxm", ["hardware.overheads=false"])
    assert usable_bytes(ideal)["hbm"] == 80 * GiB


def test_the_mip_caps_are_the_usable_bytes():
    h100 = load_system("h100-sxm")
    space = build_space(h100, {"capacity_margin": 0.01, "_cut": {"hbm": 10 * MiB}})
    assert space.caps["hbm"] == usable_bytes(h100, None, 0.01)["hbm"] - 10 * MiB
    assert space.caps["nvme"] == int(h100.tiers["nvme"].capacity * 0.99)


def test_resident_room_takes_the_allocators_line_out():
    h100 = load_system("h100-sxm")
    alloc = runtime_data()["allocator"]
    frag, step = float(alloc["fragmentation"]), parse_bytes(alloc["round_large"])
    room = resident_room(h100, "hbm", 40 * GiB, pieces=82)
    assert room == int(40 * GiB / (1 + frag)) - 82 * step
    # what fits there, with its fragmentation allowance and worst-case rounding, stays in the room
    assert room * (1 + frag) + 82 * step <= 40 * GiB
    ideal = load_system("h100-sxm", ["hardware.overheads=false"])
    assert resident_room(ideal, "hbm", 40 * GiB, pieces=82) == 40 * GiB
