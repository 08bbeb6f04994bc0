"""The machine's rates at the moment a case runs: a short probe beside every replayed round.

A calibration is a snapshot. On a shared VM the rates it measured drift by more than the
simulator's error budget while a suite runs: on a 2-vCPU AMD EPYC VM one compute-only case's
rounds ran 2.40, 1.86 and 2.01 s (each round's two warm-up steps agreeing with its timed one, so
the machine, not the case, changed between rounds), and whole-tensor disk reads ran 0.85-1.45
GB/s across one calibration and 1.66-1.74 GB/s in the replays that followed. A prediction at the
calibration's rates then measures the drift, not the model. So every round is bracketed by
probes, each one cold GEMM of calibration's copy/compute-overlap shape (compute) and one round of
``TensorIO`` (disk reads and writes of whole tensors, as a replay moves them). Calibration takes
the same probe at the same moments it samples the disk, and the ratio of a round's probe to
calibration's median is how much faster or slower the machine was then (``Drift``); a round's
drift is the geometric mean of the probes before and after it. The round is predicted on the
System scaled by those ratios (``scaled``): compute FLOP rates by the GEMM's,
disk rates per direction by the reads' and writes'.

What the probe does not see: memory-bound kernels (a small share of a training step; their rate
is not scaled). Its buffers and the replay's are on the same huge pages (diskio.aligned_buffer),
so both see the same disk, not two draws of page order (docs/validation.md).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from memsim.hardware.spec import System
from memsim.validation import microbench as mb
from memsim.validation.backend import Backend

PROBE_TENSOR_BYTES, PROBE_TENSORS = 32 << 20, 8  # as calibration's TensorIO: the same measurement
PROBE_REPEATS = 11  # cold GEMM runs per probe (median): 5 left one probe 20-40% off its round


@dataclass(frozen=True)
class Drift:
    """This moment's rate / calibration's, per probed figure (1.0: as calibrated)."""

    compute: float = 1.0
    read: float = 1.0
    write: float = 1.0

    def between(self, other: Drift) -> Drift:
        """The geometric mean of two probes: a round's rates, from the probes either side of it
        (one probe alone is a fraction of a second of a machine whose neighbours come and go)."""
        return Drift(*(math.sqrt(a * b) for a, b in ((self.compute, other.compute),
                                                      (self.read, other.read),
                                                      (self.write, other.write))))

    def to_dict(self) -> dict[str, float]:
        return {"compute": round(self.compute, 4), "read": round(self.read, 4),
                "write": round(self.write, 4)}


class GemmProbe:
    """Cold FLOP/s of one GEMM (the shape calibration times copy/compute overlap at), caches
    flushed before every timed run as calibration's GEMMs are."""

    def __init__(self, backend: Backend, shape: tuple[int, int, int], dtype: str,
                 flush: mb.CacheFlush | None = None, repeats: int = PROBE_REPEATS):
        self.backend, self.shape, self.dtype, self.repeats = backend, shape, dtype, repeats
        self.fn = mb.GemmOperands(backend, [shape], dtype).forward(*shape)
        self.flush = flush or mb.CacheFlush(backend)
        self.samples: list[float] = []

    def sample(self) -> float:
        m, k, n = self.shape
        rate = 2 * m * k * n / self.backend.median_time(self.fn, self.repeats, before=self.flush)
        self.samples.append(rate)
        return rate

    def describe(self) -> str:
        return f"{'x'.join(map(str, self.shape))} {self.dtype}"


class RateProbe:
    """The probe a validation takes after every round: ``GemmProbe`` plus one ``TensorIO`` round
    (reads and writes alone; no mixed phase) through the replay's own disk tier code."""

    def __init__(self, backend: Backend, folder: Path, mode: str, reference: dict):
        self.reference = reference
        if "gemm_shape" in reference:
            shape, dtype = tuple(reference["gemm_shape"]), reference["gemm_dtype"]
        else:  # recorded before the structured fields: the description "MxKxN dtype"
            text, dtype = reference["gemm"].split()
            shape = tuple(int(x) for x in text.split("x"))
        self.gemm = GemmProbe(backend, shape, dtype)  # type: ignore[arg-type]
        self.tio = mb.TensorIO(folder, mode, int(reference["tensor_bytes"]),
                               int(reference["tensors"]), mixed_s=0.0)

    def sample(self) -> Drift:
        flops = self.gemm.sample()
        self.tio.sample()
        read, write = self.tio.samples[-1][:2]
        ref = self.reference
        return Drift(flops / ref["gemm_flops_per_s"], read / ref["read_Bps"], write / ref["write_Bps"])

    def close(self) -> None:
        self.tio.close()

    def __enter__(self) -> RateProbe:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def reference(gemm: GemmProbe, tio: mb.TensorIO) -> dict:
    """What calibration records as the probe's level (``calibration.probe``): the GEMM's median
    over its samples, and TensorIO's read and write levels (the same measurement the probe's disk
    part repeats, with the same tensors)."""
    rates = tio.rates()
    return {"gemm": gemm.describe(), "gemm_shape": list(gemm.shape), "gemm_dtype": gemm.dtype,
            "gemm_flops_per_s": statistics.median(gemm.samples),
            "gemm_samples_flops_per_s": list(gemm.samples),
            "read_Bps": rates["read"], "write_Bps": rates["write"],
            "tensor_bytes": tio.nbytes, "tensors": tio.count}


def scaled(system: System, drift: Drift) -> System:
    """``system`` as it was at the moment ``drift`` was probed: every FLOP rate of its compute
    units × ``drift.compute``; each disk tier's (kind ssd or flash) read rates (``read_bw``,
    ``read_size_curve``) × ``drift.read``, ``write_bw`` × ``drift.write``, its two-stream
    aggregate × their mean, and the links to it per direction."""
    if drift == Drift():
        return system
    doc = system.model_dump()
    disk_tiers = {name for name, t in system.tiers.items() if t.kind in ("ssd", "flash")}
    for unit in doc["compute"].values():
        unit["peak_flops"] = {k: v * drift.compute for k, v in unit["peak_flops"].items()}
        unit["achieved_flops"] = {k: v * drift.compute for k, v in unit["achieved_flops"].items()}
        for curve in unit["achieved_flops_by_rows"].values():
            curve["points"] = [(x, y * drift.compute) for x, y in curve["points"]]
    for name in sorted(disk_tiers):
        tier = doc["tiers"][name]
        tier["read_bw"] *= drift.read
        tier["write_bw"] *= drift.write
        if tier.get("read_size_curve"):
            tier["read_size_curve"]["points"] = [(x, y * drift.read)
                                                 for x, y in tier["read_size_curve"]["points"]]
        if tier.get("concurrency_curve"):
            both = (drift.read + drift.write) / 2
            tier["concurrency_curve"]["points"] = [(x, y * both)
                                                   for x, y in tier["concurrency_curve"]["points"]]
    for link in doc["links"]:
        if link["ends"][1] in disk_tiers:  # bandwidth: ends[0] → ends[1], a write into the disk
            forward, reverse = drift.write, drift.read
        elif link["ends"][0] in disk_tiers:
            forward, reverse = drift.read, drift.write
        else:
            continue
        if link.get("bandwidth"):
            link["bandwidth"] *= forward
        if link.get("bandwidth_reverse"):
            link["bandwidth_reverse"] *= reverse
    return System.model_validate(doc)
