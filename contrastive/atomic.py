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
import errno
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from contrastive.errors import FileSystemError

__all__ = [
    "atomic_file",
    "build_folder_once",
    "free_bytes",
    "temporary_name",
    "temporary_target",
    "tensor_bytes",
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
def atomic_file(path: Path | str, *, size_hint: int = 0) -> Iterator[IO[bytes]]:
    """A binary file whose content replaces ``path`` when the block ends without an exception.

    The destination's folder is created if missing. On any exception (including
    KeyboardInterrupt) the temporary file is removed, ``path`` is untouched and the exception
    propagates; an ``OSError`` becomes a :class:`~contrastive.errors.FileSystemError` naming
    ``path`` (and, for a full file system, the bytes needed and free).

    Args:
        path: The file to replace.
        size_hint: About how many bytes will be written (0: unknown). When the file system has
            less free space than this, nothing is written and the error says so.

    Yields:
        The open temporary file, to write the whole content to.
    """
    path = Path(path)
    directory = path.parent
    temp = temporary_name(path)
    created = False
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _check_space(directory, size_hint)
        # os.open with 0o666 lets the umask decide the final file's permissions (mkstemp forces 0o600).
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        created = True
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        if created:
            _remove_quietly(temp)
        if isinstance(exc, OSError):
            raise FileSystemError(_failure(path, exc, size_hint)) from exc
        raise
    _fsync_directory(directory)


def free_bytes(directory: Path) -> int | None:
    """Bytes an unprivileged writer may still use in ``directory``'s file system (None: unknown)."""
    try:
        stats = os.statvfs(directory)
    except (AttributeError, OSError):
        return None
    return stats.f_bavail * stats.f_frsize


def _check_space(directory: Path, needed: int) -> None:
    free = free_bytes(directory) if needed else None
    if free is not None and free < needed:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _failure(path: Path, error: OSError, needed: int) -> str:
    """``cannot write PATH: REASON``, with the bytes needed and free when the disk is full."""
    text = f"cannot write {path}: {error.strerror or error}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(path.parent)
        parts = [f"about {needed:,} bytes needed"] if needed else []
        if free is not None:
            parts.append(f"{free:,} bytes free")
        if parts:
            text += f" ({', '.join(parts)}); free some space and run the same command again"
    return text


def write_with(path: Path | str, write: Callable[[IO[bytes]], object], *, size_hint: int = 0) -> Path:
    """Atomically replace ``path`` with what ``write`` writes to the binary file it is given
    (``size_hint``: see :func:`atomic_file`)."""
    with atomic_file(path, size_hint=size_hint) as handle:
        write(handle)
    return Path(path)


def write_bytes(path: Path | str, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""
    return write_with(path, lambda handle: handle.write(data), size_hint=len(data))


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
    """Atomically replace ``path`` with ``torch.save(obj)`` (refused up front when the file system
    has less free space than the tensors in ``obj`` take)."""
    import torch

    return write_with(path, lambda handle: torch.save(obj, handle), size_hint=tensor_bytes(obj))


def build_folder_once(final: Path, write: Callable[[Path], None]) -> Path:
    """Make the folder ``final`` with ``write(tmp)`` into a private temporary folder (named as
    :func:`temporary_name` names files) renamed into place; the first rename wins.

    Safe when several processes call it at once: a reader sees no folder or a complete one, and a
    folder a killed process left half-written keeps a temporary name that
    :func:`temporary_target` recognises.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    try:
        write(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            logger.info("%s was built by another process meanwhile", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (nested dicts, lists and tuples), each storage once."""
    import torch

    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return total


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
