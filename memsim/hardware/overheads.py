"""GPU memory that holds no tensor: CUDA context, cuBLAS workspace, NCCL buffers, allocator waste.

A plan that "fits at 79 GB" of an 80 GB GPU by tensor accounting alone is an OOM in practice: the
process's CUDA context, library workspaces, communication buffers and the caching allocator's
rounding take their share first. The figures, with their sources, are data in
``hardware/overheads/gpu-runtime.yaml``; this module turns them into named lines per tier, which
the simulator's pools hold from t=0 and every result reports as ``reserved_bytes``.

Only the memory tier a GPU computes from, of a kind with ``gpu_runtime`` (``hbm``:
``hardware/kinds/tiers.yaml``), gets them: CPU-only systems, and systems
with ``overheads: false`` (idealised, pure-accounting comparisons), get none.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import yaml

from memsim import units
from memsim.catalog import catalog_dir
from memsim.hardware.spec import System
from memsim.kinds import tier_kind

LINES = ("cuda_context", "cublas_workspace", "nccl", "allocator")


@functools.cache
def runtime_data() -> dict:
    """The catalog's per-process figures (parsed once)."""
    with open(catalog_dir("hardware") / "overheads" / "gpu-runtime.yaml") as fh:
        return yaml.safe_load(fh)


def compute_capability(model: str | None, table: list) -> int | None:
    """The GPU's compute capability (major) from a substring of its model name, if known."""
    for needle, major in table:
        if model and needle.lower() in model.lower():
            return int(major)
    return None


def cublas_workspace(system: System, data: dict) -> int:
    """PyTorch's cuBLASLt workspace per stream for this GPU, times the streams a step uses."""
    gpu = system.gpu
    major = compute_capability(gpu.model, data["compute_capability"])
    capacity = system.tiers[gpu.memory].capacity
    if major is not None and major >= 9:
        per_stream = data["hopper"]
    elif major == 8 and capacity >= units.parse_bytes(data["large_memory"]):
        per_stream = data["ampere_large"]
    else:
        per_stream = data["other"]
    return int(data["streams"]) * units.parse_bytes(per_stream)


def rounding_waste(sizes: Iterable[int], data: dict) -> int:
    """Bytes the caching allocator adds to these requests by rounding each one up."""
    small = units.parse_bytes(data["small_limit"])
    block, large = units.parse_bytes(data["min_block"]), units.parse_bytes(data["round_large"])
    waste = 0
    for n in sizes:
        step = block if n < small else large
        waste += -n % step
    return waste


def reserved_lines(system: System, meta: dict | None = None,
                   resident: dict[str, list[int]] | None = None) -> dict[str, dict[str, int]]:
    """Non-tensor bytes per tier and line (cuda_context, cublas_workspace, nccl, allocator).

    ``meta``: the trace's meta (``data_parallel`` > 1, or a ``parallel`` group of several GPUs,
    brings NCCL's buffers); ``resident``: the
    sizes of the tensors resident on each tier from the step's start: the allocator line is their
    rounding plus the fragmentation allowance, a fraction of their bytes. Empty for systems
    without a GPU or with ``overheads: false``."""
    gpu = system.gpu
    if gpu is None or not system.overheads:
        return {}
    tier = system.tiers.get(gpu.memory)
    if tier is None or not tier_kind(tier.kind).gpu_runtime:
        return {}
    data = runtime_data()
    lines = {"cuda_context": units.parse_bytes(data["cuda_context"]["bytes"]),
             "cublas_workspace": cublas_workspace(system, data["cublas_workspace"])}
    # a process with peers holds NCCL's buffers: data-parallel ranks, or the GPUs of a serving
    # engine's tensor/pipeline group (vLLM's workers share one communicator)
    peers = int((meta or {}).get("data_parallel", 1) or 1) > 1 or int(
        ((meta or {}).get("parallel") or {}).get("gpus", 1) or 1) > 1
    if peers:
        nccl = data["nccl"]
        lines["nccl"] = units.parse_bytes(nccl["buffsize"]) * int(nccl["channels"]) * int(nccl["peers"])
    alloc = data["allocator"]
    sizes = (resident or {}).get(gpu.memory, [])
    lines["allocator"] = (rounding_waste(sizes, alloc)
                          + int(float(alloc["fragmentation"]) * sum(sizes)))
    return {gpu.memory: lines}


def usable_bytes(system: System, meta: dict | None = None, margin: float = 0.0) -> dict[str, int]:
    """Bytes of each tier that tensors may take, as the simulator leaves them: the capacity (less
    ``margin``, a fraction held back for rounding) less the fixed non-tensor lines its pools hold
    from t=0 (CUDA context, cuBLAS workspace, NCCL). The allocator's line grows with the resident
    tensors themselves: ``resident_room`` takes it out of a budget."""
    held = reserved_lines(system, meta)
    return {n: int(t.capacity * (1 - margin)) - sum(v for k, v in held.get(n, {}).items() if k != "allocator")
            for n, t in system.tiers.items()}


def resident_room(system: System, tier: str, room: int, pieces: int) -> int:
    """Bytes of resident tensors, in ``pieces`` allocations, that ``room`` holds once the allocator
    takes its line on them (``reserved_lines``): the fragmentation allowance, a fraction of their
    bytes, and the rounding, less than one ``round_large`` step per piece of a megabyte or more."""
    if not reserved_lines(system).get(tier):
        return room
    alloc = runtime_data()["allocator"]
    rounding = pieces * units.parse_bytes(alloc["round_large"])
    return int(room / (1 + float(alloc["fragmentation"]))) - rounding


def describe(reserved: dict[str, dict[str, int]]) -> str:
    """One phrase naming the lines, for diagnoses: 'hbm: cuda_context 512 MiB, ...'."""
    return "; ".join(f"{tier}: " + ", ".join(f"{k} {units.fmt_bytes(v)}" for k, v in lines.items())
                     for tier, lines in sorted(reserved.items()))
