"""One writer per folder: an ``flock`` on ``<folder>/.lock`` holding the holder's details.

``contrastive run`` holds the lock of its run directory and ``shards build``/``subset`` the lock of
their output folder while they write. A second process that asks for a held lock stops at once
with :class:`contrastive.errors.RunLockedError` naming the holder (pid, host, start time, command).

The kernel releases an ``flock`` when its holder dies, however it dies, so a lock file left by a
killed process blocks nothing: the next process takes it and writes its own details. A lock taken
on a file that its holder has just removed (the holder releases by unlinking, then closing) is
detected by comparing inodes and taken again.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from contrastive.errors import RunLockedError

LOCK_NAME = ".lock"


def holder_details(what: str) -> dict[str, Any]:
    """What a lock file records of its holder (``what``: its activity, e.g. ``"a run"``)."""
    return {
        "what": what,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }


def describe(details: dict[str, Any]) -> str:
    """``pid 123 on host node1 since 2024-01-01T10:00:00+00:00 (contrastive run ...)``."""
    if not details:
        return "another process (no details recorded yet)"
    pid, host, started = (details.get(key, "?") for key in ("pid", "host", "started"))
    text = f"pid {pid} on host {host} since {started}"
    command = details.get("command")
    return f"{text} ({command})" if command else text


def read_details(path: Path) -> dict[str, Any]:
    """The holder's details recorded in the lock file ``path`` ({} when unreadable)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def check_free(folder: Path) -> None:
    """Stop when another living process holds ``folder``'s lock; writes nothing (``--dry-run``).

    A missing folder or lock file is free. The lock file is opened read-only and its ``flock``
    tried and let go at once.

    Raises:
        RunLockedError: Another living process holds the lock.
    """
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file (or none readable): nobody runs there as far as we can tell
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _locked(path) from None
    finally:
        os.close(fd)  # closing releases a lock taken here


def _locked(path: Path) -> RunLockedError:
    details = read_details(path)
    what = details.get("what", "another process")
    return RunLockedError(
        f"{path.parent} is in use by {what} of {describe(details)}; wait for it to finish "
        "or stop it (a lock left by a process that died is taken over automatically)"
    )


class FolderLock:
    """An exclusive lock on ``folder`` (which must exist), held from :meth:`acquire` to :meth:`release`.

    Use as a context manager. ``what`` names this holder's activity (recorded, and shown to the
    process that is refused), e.g. ``"a run"``.
    """

    def __init__(self, folder: Path, what: str = "a run") -> None:
        self.path = Path(folder) / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        """Take the lock and record this process in it.

        Raises:
            RunLockedError: Another living process holds it.
        """
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _locked(self.path) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed the file we locked: lock the new one
        self._fd = fd
        data = (json.dumps(holder_details(self.what)) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        return self

    def release(self) -> None:
        """Remove the lock file and let go (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
