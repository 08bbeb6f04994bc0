"""How fast studies run: points per second on the local pool (1 and N workers), on Ray, and a
fully cached re-run. Prints its figures; asserts nothing (machines are shared and noisy).

    python bench/bench_study.py [--points 12] [--jobs 2] [--ray]

The points are real: Llama-2-7B decoding a few tokens on h100-sxm, simulated with everything
resident (``run: simulate``), batch size varied so every point is distinct.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--ray", action="store_true", help="also time the Ray backend (slow start-up)")
    args = parser.parse_args()
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
