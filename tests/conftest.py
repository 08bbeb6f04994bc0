"""Hand-built systems several test files share: round numbers, so expected times and bytes can be
worked out by hand from the spec."""

from __future__ import annotations

from memsim.hardware.spec import System

GB = 10**9
FAST = "1000TB/s"  # tiers fast enough never to be the bottleneck


def make_system(**extra) -> System:
    """GPU (HBM) ↔ DRAM over one 10 GB/s link with 5 us latency; DRAM ↔ SSD at 2 GB/s."""
    spec = {
        "name": "hand",
        "overheads": False,  # idealised: exact tensor accounting, no runtime reservations
        "tiers": {
            "hbm": {"kind": "hbm", "capacity": "80GB", "read_bw": FAST, "write_bw": FAST},
            "dram": {"kind": "dram", "capacity": "1TB", "read_bw": FAST, "write_bw": FAST},
            "ssd": {"kind": "ssd", "capacity": "10TB", "read_bw": FAST, "write_bw": FAST},
        },
        "links": [
            {"name": "pcie", "kind": "pcie", "ends": ["hbm", "dram"], "bandwidth": "10GB/s",
             "latency": "5us"},
            {"name": "nvme", "kind": "nvme", "ends": ["dram", "ssd"], "bandwidth": "2GB/s"},
        ],
        "compute": {
            "gpu": {"kind": "gpu", "memory": "hbm", "peak_flops": {"bf16": "100TFLOP/s"},
                    "mem_bw": "1TB/s", "matmul_efficiency": 0.5, "launch_overhead": "10us"},
            "cpu": {"kind": "cpu", "memory": "dram", "peak_flops": {"fp32": "1TFLOP/s"},
                    "mem_bw": "100GB/s"},
        },
    }
    for path, value in extra.items():
        node = spec
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return System.model_validate(spec)


def small_system(hbm: str = "16GiB", dram: str = "64GiB", ssd: str | None = "1TiB") -> System:
    """One GPU, host DRAM and optionally an NVMe drive; round numbers so tests can reason."""
    tiers = {
        "hbm": {"kind": "hbm", "capacity": hbm, "read_bw": "1TB/s", "write_bw": "1TB/s"},
        "dram": {"kind": "dram", "capacity": dram, "read_bw": "100GB/s", "write_bw": "100GB/s"},
    }
    links = [{"name": "pcie", "kind": "pcie", "ends": ["hbm", "dram"], "bandwidth": "25GB/s"}]
    if ssd:
        tiers["nvme"] = {"kind": "ssd", "capacity": ssd, "read_bw": "7GB/s", "write_bw": "4GB/s"}
        links.append({"name": "nvme", "kind": "nvme", "ends": ["dram", "nvme"], "bandwidth": "8GB/s"})
    return System.model_validate({
        "name": "test-box", "tiers": tiers, "links": links,
        "overheads": False,  # idealised: exact tensor accounting, no runtime reservations
        "compute": {
            "gpu": {"kind": "gpu", "memory": "hbm", "peak_flops": {"bf16": "300TFLOP/s"}, "mem_bw": "1TB/s"},
            "cpu": {"kind": "cpu", "memory": "dram", "peak_flops": {"fp32": "3TFLOP/s", "bf16": "6TFLOP/s"},
                    "mem_bw": "100GB/s"},
        }})
