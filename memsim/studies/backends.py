"""Where the points run: a local process pool (default) or Ray tasks, with the same results.

Each backend takes ``(key, inputs)`` tasks and calls ``on_done(key, record)`` in the calling
process as each finishes, in completion order, so the runner can store every result the moment it
exists: an interrupted study keeps all points finished before the interruption.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from memsim.errors import SpecError
from memsim.studies.points import run_point

Task = tuple[str, dict]
OnDone = Callable[[str, dict], None]
BACKENDS = ("local", "ray")


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def run_local(tasks: Sequence[Task], on_done: OnDone, jobs: int | None = None) -> None:
    """A ``ProcessPoolExecutor`` of ``jobs`` workers (spawned, so no state leaks in from the parent);
    ``jobs=1`` runs in this process, which is what a debugger wants."""
    jobs = jobs or default_jobs()
    if jobs == 1 or len(tasks) <= 1:
        for key, inputs in tasks:
            on_done(key, run_point(inputs))
        return
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(tasks)),
                               mp_context=multiprocessing.get_context("spawn"))
    try:
        futures: dict[Future, str] = {pool.submit(run_point, inputs): key for key, inputs in tasks}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: futures[f]):
                on_done(futures[future], _outcome(future, futures[future], tasks))
    except BaseException:
        # Interrupted: drop queued points and stop the running ones now. Ctrl-C reaches the
        # workers too, but a worker inside HiGHS (C code) only sees it when its solve returns,
        # seconds later, and the interpreter's exit would wait for it: so the workers are
        # terminated. Every point finished so far is already stored; a re-run resumes from them.
        running = list((getattr(pool, "_processes", None) or {}).values())  # shutdown clears it
        pool.shutdown(wait=False, cancel_futures=True)
        for process in running:
            process.terminate()
        raise
    pool.shutdown(wait=True)


def _outcome(future: Future, key: str, tasks: Sequence[Task]) -> dict:
    """The record, or an ``error`` record when the worker itself died (killed, out of memory)."""
    try:
        return future.result()
    except Exception as exc:
        inputs = dict(tasks)[key]
        return {"inputs": inputs, "status": "error", "reason": f"worker failed: {type(exc).__name__}: {exc}",
                "result": None, "diagnosis": None, "system": None, "timing": {}}


def run_ray(tasks: Sequence[Task], on_done: OnDone, jobs: int | None = None,
            address: str | None = None) -> None:
    """The same points as Ray tasks: on the cluster at ``address``, or a local one of ``jobs`` CPUs.

    Ray is imported only here; a Ray this process started is shut down at the end."""
    try:
        import ray
    except ImportError:
        raise SpecError("the ray backend needs Ray: pip install 'memsim[ray]'") from None
    started = not ray.is_initialized()
    if started:
        options = {"address": address} if address else {"num_cpus": jobs or default_jobs()}
        try:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:  # no cluster at that address
            raise SpecError(f"cannot reach a Ray cluster at {address!r}: {exc}".splitlines()[0]
                            if address else f"cannot start a local Ray: {exc}".splitlines()[0],
                            key="--ray-address" if address else "--backend") from None
    remote = ray.remote(num_cpus=1, max_retries=0)(run_point)
    refs = {}
    try:
        refs = {remote.remote(inputs): key for key, inputs in tasks}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                key = refs.pop(ref)
                try:
                    record = ray.get(ref)
                except Exception as exc:  # the task's worker died; run_point itself never raises
                    record = {"inputs": dict(tasks)[key], "status": "error",
                              "reason": f"ray task failed: {type(exc).__name__}: {exc}", "result": None,
                              "diagnosis": None, "system": None, "timing": {}}
                on_done(key, record)
    finally:
        for ref in refs:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def run_tasks(backend: str, tasks: Sequence[Task], on_done: OnDone, jobs: int | None = None,
              address: str | None = None) -> None:
    if backend == "local":
        run_local(tasks, on_done, jobs)
    elif backend == "ray":
        run_ray(tasks, on_done, jobs, address)
    else:
        raise SpecError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
