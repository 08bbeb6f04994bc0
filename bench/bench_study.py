"""How fast studies run: points per second on the local pool (1 and N workers), on Ray, and a
fully cached re-run; with ``--shipped``, every study in ``studies/`` from a cold process. Prints
its figures; asserts nothing (machines are shared and noisy).

    python bench/bench_study.py [--points 12] [--jobs 2] [--ray]
    python bench/bench_study.py --shipped [NAME ...] [--keep DIR]

``--shipped`` runs each study in a fresh ``python -m memsim study`` process with one worker
(``-j 1``), so no simulation cache carries over, and prints its wall and CPU seconds (CPU time
is the steadier figure on a loaded machine). ``--keep DIR`` leaves each study's results there,
to compare ``results.csv`` before and after a change.

The points are real: Llama-2-7B decoding a few tokens on h100-sxm, simulated with everything
resident (``run: simulate``), batch size varied so every point is distinct.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memsim.studies import run_study

WORKLOAD = """\
name: bench-decode
model: llama-2-7b
inference: {batch_size: 1, prompt_len: 128, gen_len: 4, dtype: fp16}
"""


def write_study(folder: Path, points: int) -> Path:
    (folder / "bench-decode.yaml").write_text(WORKLOAD)
    path = folder / "bench.yaml"
    path.write_text("name: bench\nrun: simulate\n"
                    "base: {hardware: h100-sxm, workload: bench-decode.yaml}\n"
                    f"axes: [{{key: inference.batch_size, range: {{start: 1, stop: {points}, step: 1}}}}]\n")
    return path


def timed(label: str, path: Path, out: Path, **kwargs) -> None:
    start = time.perf_counter()
    run = run_study(path, out, **kwargs)
    seconds = time.perf_counter() - start
    print(f"{label:<28} {len(run.rows):>4} points  computed {run.computed:>4}  {seconds:8.2f} s  "
          f"{len(run.rows) / seconds:8.2f} points/s")


STUDIES = Path(__file__).resolve().parents[1] / "studies"


def shipped(names: list[str], keep: Path | None) -> None:
    """Each shipped study in a cold process, one worker: wall and CPU seconds."""
    paths = [STUDIES / f"{n}.yaml" for n in names] if names else sorted(STUDIES.glob("*.yaml"))
    total_wall = total_cpu = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            out = (keep or Path(tmp)) / path.stem
            shutil.rmtree(out, ignore_errors=True)  # cached points would skip the work
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "memsim", "study", str(path), "-j", "1", "-o", str(out),
                            "--json"], check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            total_wall += wall
            total_cpu += cpu
            print(f"{path.stem:<24} wall {wall:8.2f} s  cpu {cpu:8.2f} s", flush=True)
    print(f"{'all shipped studies':<24} wall {total_wall:8.2f} s  cpu {total_cpu:8.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--ray", action="store_true", help="also time the Ray backend (slow start-up)")
    parser.add_argument("--shipped", nargs="*", metavar="NAME",
                        help="time the studies in studies/ (all, or those named) instead")
    parser.add_argument("--keep", type=Path, help="with --shipped: leave each study's results here")
    args = parser.parse_args()
    if args.shipped is not None:
        shipped(args.shipped, args.keep)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = write_study(folder, args.points)
        timed("local, 1 worker (in-process)", path, folder / "j1", jobs=1)
        timed(f"local, {args.jobs} workers (spawned)", path, folder / "jn", jobs=args.jobs)
        timed("re-run, all cached", path, folder / "jn", jobs=args.jobs)
        if args.ray:
            timed(f"ray, {args.jobs} CPUs (incl. start-up)", path, folder / "ray",
                  backend="ray", jobs=args.jobs)


if __name__ == "__main__":
    main()
