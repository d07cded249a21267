"""Progress of long steps (shard builds, feature passes, linear evaluation) for a person to follow.

Library functions take a :class:`Progress` and never import rich: the rich bar lives in
:mod:`contrastive.console` (:class:`contrastive.console.ProgressReporter`, which the command line
uses on a terminal); here are the no-op default (:class:`NullProgress`) and plain lines
(:class:`LineProgress`, e.g. into :mod:`logging`).

A step opens a task with :meth:`Progress.start`, counts finished units with
:meth:`Progress.advance` and closes it with :meth:`Progress.finish`. Tasks nest: a task started
while another is open belongs to it, and ``advance``/``finish`` always apply to the innermost open
task (a benchmark's runs, and inside each run its feature passes). :func:`tracked` pairs start and
finish around a block.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Protocol, runtime_checkable

import attrs

__all__ = [
    "LineProgress",
    "NullProgress",
    "Progress",
    "as_progress",
    "clock_text",
    "tracked",
]


@runtime_checkable
class Progress(Protocol):
    """Where a long step reports how far it got.

    ``advance`` may be called from worker threads.
    """

    def start(self, total: int | None, label: str) -> None:
        """Open a (nested) task of ``total`` units (None: unknown), shown as ``label``."""
        ...

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more finished units of the innermost open task."""
        ...

    def finish(self) -> None:
        """Close the innermost open task."""
        ...


class NullProgress:
    """Reports nothing (the default of library functions)."""

    def start(self, total: int | None, label: str) -> None:
        """Ignore."""

    def advance(self, n: int = 1) -> None:
        """Ignore."""

    def finish(self) -> None:
        """Ignore."""


@attrs.define
class _Callback:
    """A bare ``fn(n)`` counter as a :class:`Progress` (start and finish ignored)."""

    fn: Callable[[int], None]

    def start(self, total: int | None, label: str) -> None:
        """Ignore."""

    def advance(self, n: int = 1) -> None:
        """Pass ``n`` on."""
        self.fn(n)

    def finish(self) -> None:
        """Ignore."""


def as_progress(progress: Progress | Callable[[int], None] | None) -> Progress:
    """``progress`` itself, a plain ``fn(n)`` counter wrapped, or a :class:`NullProgress` for None."""
    if progress is None:
        return NullProgress()
    if isinstance(progress, Progress):
        return progress
    return _Callback(progress)


@contextlib.contextmanager
def tracked(progress: Progress | None, total: int | None, label: str) -> Iterator[Callable[[int], None]]:
    """Open a task on ``progress`` (None: nothing) for the block; yield its ``advance``.

    The task is finished however the block ends.
    """
    chosen = progress if progress is not None else NullProgress()
    chosen.start(total, label)
    try:
        yield chosen.advance
    finally:
        chosen.finish()


def clock_text(seconds: float) -> str:
    """``H:MM:SS`` of a duration, as rich writes it."""
    return str(timedelta(seconds=max(int(seconds), 0)))


@attrs.define
class _Task:
    label: str
    total: int | None
    started: float
    done: int = 0
    next_line: int = 0


@attrs.define
class LineProgress:
    """Plain progress lines: one when a task starts, one each time another ``every`` share of its
    total is done (with counts, elapsed time and ETA), one when it finishes.

    Attributes:
        write: Where lines go; default: ``logging.getLogger("contrastive.progress").info``.
        every: Share of the total between lines, in ``(0, 1]``.
        clock: Seconds of a monotonic clock (tests replace it).
    """

    write: Callable[[str], None] | None = None
    every: float = 0.1
    clock: Callable[[], float] = time.monotonic
    _tasks: list[_Task] = attrs.field(factory=list, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def _emit(self, line: str) -> None:
        if self.write is None:
            logging.getLogger("contrastive.progress").info("%s", line)
        else:
            self.write(line)

    def start(self, total: int | None, label: str) -> None:
        """Write ``LABEL: 0/TOTAL`` (or ``LABEL: started``)."""
        with self._lock:
            task = _Task(label, total, self.clock())
            task.next_line = self._step(task)
            self._tasks.append(task)
        self._emit(f"{label}: 0/{total}" if total is not None else f"{label}: started")

    def advance(self, n: int = 1) -> None:
        """Count ``n``; write a line when another ``every`` share is done."""
        with self._lock:
            if not self._tasks:
                return
            task = self._tasks[-1]
            task.done += n
            if task.total is None or task.done < task.next_line or task.done >= task.total:
                return  # the last line is finish's
            while task.next_line <= task.done:
                task.next_line += self._step(task)
            line = self._line(task)
        self._emit(line)

    def finish(self) -> None:
        """Write ``LABEL: DONE/TOTAL done in H:MM:SS``."""
        with self._lock:
            if not self._tasks:
                return
            task = self._tasks.pop()
        counts = f"{task.done}/{task.total}" if task.total is not None else str(task.done)
        self._emit(f"{task.label}: {counts} done in {clock_text(self.clock() - task.started)}")

    def _step(self, task: _Task) -> int:
        return max(1, round((task.total or 0) * self.every))

    def _line(self, task: _Task) -> str:
        assert task.total is not None
        elapsed = self.clock() - task.started
        share = task.done / task.total if task.total else 1.0
        eta = elapsed / task.done * (task.total - task.done) if task.done else None
        eta_text = clock_text(eta) if eta is not None else "-:--:--"
        return (
            f"{task.label}: {task.done}/{task.total} ({share:.0%}), "
            f"{clock_text(elapsed)} elapsed, ETA {eta_text}"
        )
