"""Atomic file writes: the one way this project replaces a file.

Every writer puts the whole content into a temporary file in the destination's folder, flushes
and fsyncs it, then renames it over the destination (``os.replace``) and fsyncs the folder. A
crash at any point leaves either the previous file or the complete new one under the final name,
never a partial one; a write that fails (or is interrupted) removes its temporary file and leaves
the destination untouched.

Temporary names are ``.<name>.<12 hex digits>.tmp`` (see :func:`temporary_name`), so a folder
can recognise and remove temporaries a killed process left behind (:func:`temporary_target`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from contrastive.errors import RunError

__all__ = [
    "atomic_file",
    "temporary_name",
    "temporary_target",
    "write_bytes",
    "write_json",
    "write_text",
    "write_torch",
    "write_with",
]

logger = logging.getLogger(__name__)

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.tmp$")


def temporary_name(path: Path) -> Path:
    """A fresh temporary file name beside ``path``: ``.<name>.<12 hex digits>.tmp``."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def temporary_target(name: str) -> str | None:
    """The file name a temporary named ``name`` was to replace; None if ``name`` is no temporary."""
    match = _TEMPORARY.match(name)
    return match["name"] if match else None


@contextlib.contextmanager
def atomic_file(path: Path | str) -> Iterator[IO[bytes]]:
    """A binary file whose content replaces ``path`` when the block ends without an exception.

    The destination's folder is created if missing. On any exception (including
    KeyboardInterrupt) the temporary file is removed, ``path`` is untouched and the exception
    propagates; an ``OSError`` becomes a :class:`~contrastive.errors.RunError` naming ``path``.

    Yields:
        The open temporary file, to write the whole content to.
    """
    path = Path(path)
    directory = path.parent
    temp = temporary_name(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # os.open with 0o666 lets the umask decide the final file's permissions (mkstemp forces 0o600).
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        _remove_quietly(temp)
        if isinstance(exc, OSError):
            raise RunError(f"cannot write {path}: {exc}") from exc
        raise
    _fsync_directory(directory)


def write_with(path: Path | str, write: Callable[[IO[bytes]], object]) -> Path:
    """Atomically replace ``path`` with what ``write`` writes to the binary file it is given."""
    with atomic_file(path) as handle:
        write(handle)
    return Path(path)


def write_bytes(path: Path | str, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""
    return write_with(path, lambda handle: handle.write(data))


def write_text(path: Path | str, text: str) -> Path:
    """Atomically replace ``path`` with ``text`` encoded as UTF-8."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj: Any, *, indent: int | None = 2) -> Path:
    """Atomically replace ``path`` with ``obj`` as UTF-8 JSON and a trailing newline.

    Raises:
        TypeError: ``obj`` is not JSON-serialisable (found before anything is written).
    """
    return write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_torch(path: Path | str, obj: Any) -> Path:
    """Atomically replace ``path`` with ``torch.save(obj)``."""
    import torch

    return write_with(path, lambda handle: torch.save(obj, handle))


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable, where the platform allows opening a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    """Delete ``path`` if it exists, ignoring errors."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        logger.warning("could not remove temporary file %s", path)
