"""Calibrate this machine, run a validation suite on it, print the accuracy figures.

    python bench/bench_validation.py                       # calibrate + validation/cpu-disk.yaml
    python bench/bench_validation.py --record              # also write validation/results/ (+ history.md)
    python bench/bench_validation.py --hardware m.yaml     # reuse a calibration

Timing on a shared machine is noisy: the load average before and after is printed and recorded
beside the figures, so a result can be read in its context.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default=str(ROOT / "validation" / "cpu-disk.yaml"))
    ap.add_argument("--hardware", help="a System YAML from `memsim calibrate` (default: calibrate now)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per case (default: the suite's)")
    ap.add_argument("--rounds", type=int, default=None, help="replays of every case (default: the suite's)")
    ap.add_argument("--quick", action="store_true", help="quick calibration")
    ap.add_argument("--record", action="store_true", help="write the result under validation/results/")
    ap.add_argument("--probe", action="store_true", help="bracket every round with rate probes and "
                    "predict it at them (memsim.validation.drift)")
    args = ap.parse_args()

    from memsim.hardware import load_system
    from memsim.validation.calibrate import calibrate, write_system
    from memsim.validation.compare import validate

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M")
    host = platform.node() or "machine"
    out = ROOT / "validation" / "results" if args.record else Path("/tmp")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    if args.hardware:
        system = load_system(args.hardware)
    else:
        system = calibrate(args.device, quick=args.quick, name=f"{host}-{args.device}")
        write_system(system, out / f"{host}-{args.device}-{stamp}.machine.yaml")
    t1 = time.perf_counter()
    report = validate(system, suite=args.suite, device=args.device, repeats=args.repeats, warmup=args.warmup,
                      rounds=args.rounds, probe=args.probe,
                      plot=out / f"{host}-{args.device}-{stamp}.png",
                      progress=lambda name: print(f"  measured a step of {name}", file=sys.stderr))
    t2 = time.perf_counter()
    load_after = os.getloadavg()
    cpu = system.cpu or system.gpu
    print(f"calibration ({t1 - t0:.0f} s): matmul {cpu.achieved_flops.get('matmul', 0) / 1e9:.1f} GFLOP/s, "
          f"mem {cpu.mem_bw / 1e9:.1f} GB/s, disk read {system.tiers['disk'].read_bw / 1e9:.2f} GB/s, "
          f"write {system.tiers['disk'].write_bw / 1e9:.2f} GB/s, copy_slowdown {cpu.copy_slowdown:.1%}")
    tio = (system.calibration or {}).get("disk_tensor_io_Bps", {})
    if "mixed_read" in tio:  # a reader and a writer at once: their sum is the 2-stream aggregate
        print(f"disk reads+writes at once: read {tio['mixed_read'] / 1e9:.2f}, write "
              f"{tio['mixed_write'] / 1e9:.2f} GB/s (alone: {tio['read'] / 1e9:.2f}, "
              f"{tio['write'] / 1e9:.2f})")
    print(f"{'case':34s} {'simulated':>10s} {'measured':>10s} {'error':>8s}  peak errors; copy engines busy "
          "s simulated/measured (measured GB/s)")
    for c in report.cases:
        peaks = ", ".join(f"{t} {p['error']:+.1%}" + _spread(p) for t, p in c.peak_bytes.items())
        busy = ", ".join(f"{d} {b['predicted_s']:.2f}/{b['measured_s']:.2f} ({b['measured_Bps'] / 1e9:.2f})"
                         for d, b in c.copy_busy.items())
        print(f"{c.name:34s} {c.predicted_s:10.3f} {c.measured_s:10.3f} {c.error:+8.1%}  {peaks}"
              f"{'; ' + busy if busy else ''}")
    if report.probed:  # each round predicted at the rates probed after it (memsim.validation.drift)
        print("per round: measured s, predicted s at its probed rates; drift compute/read/write")
        for c in report.cases:
            print(f"  {c.name:32s} " + "   ".join(
                f"{m:.3f} {p:.3f} ({d['compute']:.2f}/{d['read']:.2f}/{d['write']:.2f})"
                for m, p, d in zip(c.rounds_s, c.rounds_predicted_s, c.drift, strict=True))
                  + f"   at calibration's rates {c.predicted_calibrated_s:.3f} ({c.calibrated_error:+.1%})")
    print("steps, s (untimed warm-up | timed), per round:")
    for c in report.cases:
        n, w = len(c.rounds_s), len(c.warmup_s) // max(1, len(c.rounds_s))
        t = len(c.steps_s) // max(1, n)
        print(f"  {c.name:32s} " + "   ".join(
            f"{' '.join(f'{s:.3f}' for s in c.warmup_s[r * w:(r + 1) * w])} | "
            f"{' '.join(f'{s:.3f}' for s in c.steps_s[r * t:(r + 1) * t])}" for r in range(n)))
    print(f"suite {report.suite} ({t2 - t1:.0f} s): median |error| {report.median_abs_error:.1%}, "
          f"worst {report.max_abs_error:.1%}, worst peak-bytes error {report.max_peak_error:.1%}")
    if report.probed:
        print(f"at calibration's rates (no probe): median |error| {report.median_abs_error_calibrated:.1%}, "
              f"worst {report.max_abs_error_calibrated:.1%}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"({os.cpu_count()} cores)")
    doc = {**report.to_dict(), "load_average": {"before": load_before, "after": load_after}}
    path = out / f"{host}-{args.device}-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path}")
    if args.record:  # the recorded-runs table is generated from the result JSONs, never kept by hand
        from memsim.validation.history import write_history
        print(f"wrote {write_history(out)}")
    return 0


def _spread(peak: dict) -> str:
    """Where the measured peak moved between timed steps, its range (a race between copies)."""
    low, high = peak.get("measured_min"), peak.get("measured_max")
    if low is None or low == high:
        return ""
    return f" (steps {low / 1e6:.0f}-{high / 1e6:.0f} MB, predicted {peak['predicted'] / 1e6:.0f})"


if __name__ == "__main__":
    sys.exit(main())
