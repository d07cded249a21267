"""Reading and writing WebDataset tar shards.

A sample is a run of consecutive tar members sharing a key: ``000123.jpg``, ``000123.cls``,
``000123.json``. The key is the member name up to the first dot of its base name, the extension
(lower-cased) the rest, as in WebDataset. Only keys with an image member count as samples.

Shards are written deterministically (fixed member order, zero times and owners, USTAR headers),
so the same samples always give the same bytes, and atomically (:mod:`contrastive.atomic`: into a
temporary ``.NAME.<hex>.tmp``, renamed to ``NAME`` once complete and synced). A file with a shard's
final name is therefore never truncated by an interrupted build.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import attrs

from contrastive.atomic import atomic_file
from contrastive.errors import DataError

#: Member extensions that hold an image, in order of preference when a key has several.
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "pbm", "tif", "tiff", "gif")
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE


def split_name(name: str) -> tuple[str, str] | None:
    """``dir/000123.seg.png`` -> ``("dir/000123", "seg.png")``; None without an extension."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot <= slash or dot == len(name) - 1:
        return None
    return name[:dot], name[dot + 1 :].lower()


#: Names of the tar member types a shard may not hold (anything but regular files and folders).
_MEMBER_KINDS = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}


class UnsafeMemberError(DataError):
    """A shard holds a member no shard may hold (see :func:`check_member`)."""


def check_member(member: tarfile.TarInfo) -> None:
    """Refuse a member no shard may hold: a name that leaves the shard's folder (absolute, or with a
    ``..`` part) or anything but a regular file or a folder (links, devices, FIFOs).

    Such members are never read as samples, nor skipped silently: a shard holding one was not
    written as a WebDataset shard, and a tool that unpacks it could write outside its folder.

    Raises:
        UnsafeMemberError: The member is one of those; the message names it.
    """
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts:
        raise UnsafeMemberError(
            f"member {name!r} names a path outside the shard's folder; shard members must have relative "
            "names without '..'"
        )
    if member.isfile() or member.isdir():
        return
    kind = _MEMBER_KINDS.get(member.type, f"of tar type {member.type!r}")
    target = f" (to {member.linkname!r})" if member.issym() or member.islnk() else ""
    raise UnsafeMemberError(
        f"member {name!r} is {kind}{target}; shard members must be regular files (or folders)"
    )


def image_key(exts: Mapping[str, Any] | set[str]) -> str | None:
    """The image extension among a sample's member extensions, or None."""
    for key in IMAGE_KEYS:
        if key in exts:
            return key
    return None


@attrs.frozen
class Group:
    """One sample read from a tar.

    Attributes:
        key: The sample key (member name without extension).
        data: Extension -> bytes for the members that were read.
        extents: Extension -> ``(offset, size)`` of every member's data in the tar file.
    """

    key: str
    data: Mapping[str, bytes]
    extents: Mapping[str, tuple[int, int]]

    @property
    def image_key(self) -> str:
        """Extension of the image member (a Group always has one)."""
        key = image_key(self.extents)
        assert key is not None
        return key

    def label(self) -> int | None:
        """The ``cls`` member as an integer, or None when absent or not an integer."""
        raw = self.data.get("cls")
        if raw is None:
            return None
        try:
            return int(raw.decode().strip())
        except ValueError:
            return None

    def meta(self) -> dict[str, Any]:
        """The ``json`` member as a dict ({} when absent or malformed)."""
        raw = self.data.get("json")
        if raw is None:
            return {}
        try:
            doc = json.loads(raw)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def original_name(self) -> str:
        """The original file name (``name``/``filename`` of the json member), else the key's base name."""
        meta = self.meta()
        for field in ("name", "filename", "file_name", "fname"):
            value = meta.get(field)
            if isinstance(value, str) and value:
                return value.rsplit("/", 1)[-1]
        return self.key.rsplit("/", 1)[-1]


def iter_groups(
    tar: tarfile.TarFile, *, skip: int = 0, want: Callable[[str], bool] | None = None
) -> Iterator[Group]:
    """The samples of an open tar, in order.

    Args:
        tar: Opened for reading (``r:*`` seeks past data it does not read; ``r|*`` streams).
        skip: Samples to pass over first, without reading their data.
        want: Which extensions to read (default all); the others get only an extent.

    Yields:
        One :class:`Group` per key holding an image member.

    Raises:
        UnsafeMemberError: A member no shard may hold (see :func:`check_member`); it is never
            part of a yielded sample.
        tarfile.TarError, OSError, EOFError: The tar is corrupt or truncated. A header cut short
            ends the iteration silently (``tarfile`` behaviour), so callers compare the number of
            samples read with the index.
    """
    key: str | None = None
    data: dict[str, bytes] = {}
    extents: dict[str, tuple[int, int]] = {}
    done = 0
    for member in tar:
        check_member(member)
        if not member.isfile():
            continue
        parts = split_name(member.name)
        if parts is None:
            continue
        member_key, ext = parts
        if member_key != key:
            if key is not None and image_key(extents) is not None:
                if done >= skip:
                    yield Group(key, data, extents)
                done += 1
            key, data, extents = member_key, {}, {}
        extents[ext] = (member.offset_data, member.size)
        if done >= skip and (want is None or want(ext)):
            handle = tar.extractfile(member)
            assert handle is not None
            data[ext] = handle.read()
    if key is not None and image_key(extents) is not None and done >= skip:
        yield Group(key, data, extents)


def open_tar(fileobj: IO[bytes], *, seekable: bool) -> tarfile.TarFile:
    """Open a tar for reading from ``fileobj`` (random access when ``seekable``)."""
    return tarfile.open(fileobj=fileobj, mode="r:*" if seekable else "r|*")


def member_bytes(size: int) -> int:
    """Bytes a member of ``size`` data bytes takes in a USTAR tar (header plus padded data)."""
    return BLOCK + -(-size // BLOCK) * BLOCK


def tar_bytes(total_member_bytes: int) -> int:
    """Size of a tar file whose members take ``total_member_bytes`` (end blocks and record padding)."""
    size = total_member_bytes + 2 * BLOCK
    return -(-size // RECORD) * RECORD


class AtomicTarWriter:
    """Write one shard through :func:`contrastive.atomic.atomic_file`; :meth:`commit` puts it in place.

    Use as a context manager: leaving the block normally commits, an exception discards the
    temporary file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stack = contextlib.ExitStack()
        self._file = self._stack.enter_context(atomic_file(path))
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115

    def add(self, name: str, data: bytes) -> None:
        """Append a member ``name`` holding ``data`` (deterministic header)."""
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o444
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def commit(self) -> None:
        """Finish the tar, then sync it and rename it to its final name."""
        self._tar.close()
        self._stack.close()

    def abort(self, exc: BaseException | None = None) -> None:
        """Close and delete the temporary file (``exc``: the failure that ends the write)."""
        with contextlib.suppress(Exception):  # best effort on an already failing path
            self._tar.close()
        failure = exc if exc is not None else RuntimeError(f"writing {self.path} was aborted")
        with contextlib.suppress(BaseException):  # the failure itself, or the RunError it became
            self._stack.__exit__(type(failure), failure, failure.__traceback__)

    def __enter__(self) -> AtomicTarWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.commit()
        else:
            self.abort(exc)


def sniff_image_ext(head: bytes, fallback: str) -> str:
    """Image key from a file's first bytes: ``jpg``, ``png``, ``gif``, ``webp``, else ``fallback``."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return fallback.lower().lstrip(".")
