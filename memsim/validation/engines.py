"""Copy engines for a replay: one thread per direction, FIFO, like a GPU's copy engines.

A job is a callable that moves bytes for real (an O_DIRECT read into a buffer, a pinned
host→device copy on the engine's own CUDA stream). The compute thread waits for a job only where
the plan says the data must be there, so copies overlap compute exactly as much as the plan lets
them. On the CPU the wait is a ``threading.Event``; on CUDA the compute stream also waits on the
CUDA event the job recorded on its stream, so the GPU, not the host, enforces the order.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Job:
    """One copy: what it moves and when it ran (perf_counter_ns, relative to nothing yet)."""

    name: str
    nbytes: int
    run: Callable[[Any], Any]  # called with the engine's CUDA stream (None on the CPU)
    done: threading.Event = field(default_factory=threading.Event)
    cuda_event: Any = None
    start_ns: int = 0
    end_ns: int = 0
    error: BaseException | None = None
    then: list[tuple[Engine, Job]] = field(default_factory=list)  # queued when this one is done
    ready: Any = None  # CUDA: an event on the compute stream the copy must wait for (its source)
    # called on the engine's thread the moment the copy has landed, before anyone waiting sees
    # it done: a written-back buffer is given back then, as the simulator gives it back, not
    # whenever the compute thread next looks
    landed: Callable[[], None] | None = None


_DEPENDENTS = threading.Lock()


class Engine:
    """A FIFO copy engine on its own thread (and, on CUDA, its own stream)."""

    def __init__(self, name: str, torch=None, cuda: bool = False):
        self.name = name
        self.torch = torch
        self.stream = torch.cuda.Stream() if cuda else None
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.history: list[Job] = []
        self.thread = threading.Thread(target=self._loop, name=f"memsim-copy-{name}", daemon=True)
        self.thread.start()

    def submit(self, job: Job, after: Job | None = None) -> Job:
        """Queue ``job``; with ``after``, queue it only once ``after`` is done, so a copy waiting
        for its data never holds the engine (the simulator's copies wait before acquiring it)."""
        if after is not None:
            with _DEPENDENTS:
                if not after.done.is_set():
                    after.then.append((self, job))
                    return job
        self.history.append(job)
        self.jobs.put(job)
        return job

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            job.start_ns = time.perf_counter_ns()
            try:
                if self.stream is not None:
                    with self.torch.cuda.stream(self.stream):
                        if job.ready is not None:
                            self.stream.wait_event(job.ready)
                        job.run(self.stream)
                        job.cuda_event = self.torch.cuda.Event()
                        job.cuda_event.record(self.stream)
                else:
                    job.run(None)
            except BaseException as exc:  # surfaced to the compute thread by wait()
                job.error = exc
            job.end_ns = time.perf_counter_ns()
            if job.landed is not None and job.error is None:
                try:
                    job.landed()
                except BaseException as exc:  # surfaced to the compute thread by wait()
                    job.error = exc
            with _DEPENDENTS:
                job.done.set()
                waiting, job.then = job.then, []
            for engine, dependent in waiting:
                engine.submit(dependent)

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()

    def busy_s(self) -> float:
        return sum(j.end_ns - j.start_ns for j in self.history) / 1e9


def wait(job: Job, torch=None) -> None:
    """Block the compute side until ``job`` is done (on CUDA: make the compute stream wait)."""
    job.done.wait()
    if job.error is not None:
        raise job.error
    if job.cuda_event is not None and torch is not None:
        torch.cuda.current_stream().wait_event(job.cuda_event)
