"""Progress on stderr that also reaches a log file.

rich draws a live bar only on a terminal; with stderr redirected (CI, ``2> log``, a job
scheduler) it prints nothing, and calibrate or a long plan looked hung for minutes. This
Progress keeps rich's bar on a terminal and otherwise writes plain lines: one per new stage
(description) and one per tenth of the work done.
"""

from __future__ import annotations

import time

from rich import progress as rich_progress


class Progress(rich_progress.Progress):
    """rich's Progress, plus plain log lines when its console is not a terminal."""

    def __init__(self, *columns, **kwargs):
        super().__init__(*columns, **kwargs)
        self._plain = not kwargs.get("disable", False) and not self.console.is_terminal
        self._said: dict = {}
        self._start = time.monotonic()

    def add_task(self, description: str, *args, **kwargs):
        task = super().add_task(description, *args, **kwargs)
        self._log(task)
        return task

    def update(self, task_id, *args, **kwargs) -> None:
        super().update(task_id, *args, **kwargs)
        self._log(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def _log(self, task_id) -> None:
        if not self._plain:
            return
        task = self._tasks[task_id]
        tenth = int(10 * task.completed / task.total) if task.total else None
        said = (task.description, tenth)
        if self._said.get(task_id) == said:
            return
        self._said[task_id] = said
        done = f" {task.completed:g}/{task.total:g}" if task.total else ""
        self.console.file.write(f"[{time.monotonic() - self._start:6.1f}s] {task.description}{done}\n")
        self.console.file.flush()
