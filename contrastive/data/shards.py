"""Writing a whole shard set: planned, atomic per shard, resumable, index written last.

:func:`write_shard_set` takes the samples in their final order and splits them into shards of at
most ``maxcount`` samples and ``maxsize`` bytes. Before writing any shard it records the plan
(``.build.json``: a fingerprint of the sources, parameters and shard boundaries). A rerun with the
same fingerprint keeps every shard that already has its final name and exact planned size (shards
are renamed into place only when complete, see :mod:`contrastive.data.tario`) and writes the
rest; a rerun with a different fingerprint deletes the old shards and starts over. The index is
written last, so a set is complete exactly when ``index.json`` exists, and a rerun of a complete
build with the same fingerprint does nothing.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from contrastive import atomic
from contrastive.data.index import (
    INDEX_NAME,
    ShardEntry,
    ShardIndex,
    index_path,
    read_index,
    write_index,
)
from contrastive.data.tario import AtomicTarWriter, member_bytes, sniff_image_ext, tar_bytes
from contrastive.errors import DataError
from contrastive.lock import FolderLock
from contrastive.progress import Progress, as_progress, tracked

log = logging.getLogger(__name__)

PLAN_NAME = ".build.json"
SHARD_PATTERN = "shard-*.tar"
#: Identifies indexes written by this module (a rerun may replace only those).
WRITER = "contrastive.data.shards/1"


def shard_name(number: int) -> str:
    """File name of the ``number``-th shard of a set."""
    return f"shard-{number:06d}.tar"


@attrs.frozen
class Extent:
    """Bytes inside a file (a member of another shard).

    Attributes:
        path: The file.
        offset: First byte.
        size: Number of bytes.
    """

    path: str
    offset: int
    size: int

    def read(self) -> bytes:
        """The bytes."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise DataError(
                f"{self.path} is shorter than expected (reading {self.size} bytes at {self.offset})"
            )
        return data


@attrs.frozen
class OutSample:
    """One sample to write.

    Attributes:
        image: The image bytes, a file holding them, or an extent of another file.
        image_size: Size of the image bytes (planned ahead, checked when written).
        source_id: Identifies the source for the build fingerprint (path, size, mtime, ...).
        label: Class index for the ``cls`` member; None writes no ``cls``.
        meta: The ``json`` member (original file name, class name).
        image_ext: The image member's extension; None sniffs it from the bytes (falling back to
            the file's extension).
    """

    image: bytes | Path | Extent
    image_size: int
    source_id: str
    label: int | None
    meta: Mapping[str, Any]
    image_ext: str | None = None

    def json_bytes(self) -> bytes:
        """The ``json`` member, deterministic."""
        return json.dumps(dict(self.meta), sort_keys=True, separators=(",", ":")).encode()

    def cls_bytes(self) -> bytes | None:
        """The ``cls`` member, or None."""
        return None if self.label is None else str(self.label).encode()

    def tar_bytes(self) -> int:
        """Bytes the sample's members take in a tar."""
        cls = self.cls_bytes()
        total = member_bytes(self.image_size) + member_bytes(len(self.json_bytes()))
        return total + (member_bytes(len(cls)) if cls is not None else 0)

    def load(self) -> tuple[str, bytes]:
        """The image extension and bytes.

        Raises:
            DataError: The source changed size since it was planned.
        """
        if isinstance(self.image, bytes):
            data = self.image
        elif isinstance(self.image, Extent):
            data = self.image.read()
        else:
            data = self.image.read_bytes()
        if len(data) != self.image_size:
            raise DataError(
                f"{self.source_id}: size changed during the build ({len(data)} != {self.image_size})"
            )
        fallback = self.image.suffix if isinstance(self.image, Path) else "bin"
        return self.image_ext or sniff_image_ext(data[:16], fallback), data


def plan_shards(samples: Sequence[OutSample], maxcount: int, maxsize: int) -> list[range]:
    """Consecutive ranges of sample positions, one per shard.

    A shard closes when it holds ``maxcount`` samples or the next one would take its members past
    ``maxsize`` bytes; every shard holds at least one sample.
    """
    if maxcount < 1 or maxsize < 1:
        raise DataError(f"maxcount and maxsize must be positive (got {maxcount}, {maxsize})")
    ranges: list[range] = []
    start, size = 0, 0
    for i, sample in enumerate(samples):
        nbytes = sample.tar_bytes()
        count = i - start
        if count > 0 and (count >= maxcount or size + nbytes > maxsize):
            ranges.append(range(start, i))
            start, size = i, 0
        size += nbytes
    if start < len(samples):
        ranges.append(range(start, len(samples)))
    return ranges


def fingerprint(
    samples: Sequence[OutSample], ranges: Sequence[range], classes: Sequence[str], build: Mapping[str, Any]
) -> str:
    """A digest of everything that determines the bytes of a shard set."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {"writer": WRITER, "build": dict(build), "classes": list(classes)}, sort_keys=True
        ).encode()
    )
    digest.update(json.dumps([[r.start, r.stop] for r in ranges]).encode())
    for sample in samples:
        record = [sample.source_id, sample.image_size, sample.image_ext, sample.label]
        digest.update(json.dumps(record).encode())
        digest.update(sample.json_bytes())
    return digest.hexdigest()


def sample_key(position: int) -> str:
    """Key of the sample at ``position`` of a set."""
    return f"{position:09d}"


def write_shard(
    path: Path, samples: Sequence[OutSample], first_key: int, progress: Callable[[int], None] | None = None
) -> None:
    """Write one shard atomically.

    Args:
        path: Final shard path (written to a temporary beside it first).
        samples: Its samples, in order.
        first_key: Position of the first sample in the set (keys are positions).
        progress: Called with 1 after each sample is written.
    """
    with AtomicTarWriter(path) as writer:
        for offset, sample in enumerate(samples):
            key = sample_key(first_key + offset)
            ext, data = sample.load()
            writer.add(f"{key}.{ext}", data)
            cls = sample.cls_bytes()
            if cls is not None:
                writer.add(f"{key}.cls", cls)
            writer.add(f"{key}.json", sample.json_bytes())
            if progress is not None:
                progress(1)


def _own_index(out: Path) -> ShardIndex | None:
    if not index_path(out).exists():
        return None
    return read_index(out)


def _complete(out: Path, shards: Iterable[ShardEntry]) -> bool:
    return all((out / s.name).is_file() and (out / s.name).stat().st_size == s.bytes for s in shards)


def _read_plan(out: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((out / PLAN_NAME).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _write_plan(out: Path, fp: str | None, entries: Sequence[ShardEntry]) -> None:
    doc = {"fingerprint": fp, "shards": [e.name for e in entries]}
    atomic.write_bytes(out / PLAN_NAME, json.dumps(doc).encode())


def _prepare(out: Path, fp: str, entries: Sequence[ShardEntry]) -> set[str]:
    """Make ``out`` ready for the build with fingerprint ``fp``; returns the shard names to keep.

    Shards are kept only when a plan (or index) with the same fingerprint says they belong to this
    build. Before anything is deleted a plan without fingerprint is written, so a build killed
    while cleaning up is recognised as ours on the next run.
    """
    existing = _own_index(out)
    if existing is not None and not (existing.build and existing.build.get("writer") == WRITER):
        raise DataError(f"{out} already holds a shard set that was not built here; choose an empty directory")
    plan = _read_plan(out)
    for tmp in out.glob(".*.tmp"):
        target = atomic.temporary_target(tmp.name)
        if target is not None and fnmatch.fnmatchcase(target, SHARD_PATTERN):
            tmp.unlink()
    same = existing.build.get("fingerprint") == fp if existing is not None and existing.build else False
    if same or (existing is None and plan is not None and plan.get("fingerprint") == fp):
        _write_plan(out, fp, entries)
        index_path(out).unlink(missing_ok=True)
        keep = {
            e.name for e in entries if (out / e.name).is_file() and (out / e.name).stat().st_size == e.bytes
        }
        log.info("resuming the build in %s: %d of %d shards already complete", out, len(keep), len(entries))
        return keep
    stale = sorted(out.glob(SHARD_PATTERN))
    if stale and plan is None and existing is None:
        raise DataError(
            f"{out} holds {len(stale)} shard file(s) that no build here started; choose an empty directory "
            f"(to index shards made elsewhere use `contrastive shards index {out}`)"
        )
    if existing is not None:
        log.warning("%s holds a build with other sources or parameters; rebuilding it", out)
    _write_plan(out, None, [])
    index_path(out).unlink(missing_ok=True)
    for path in stale:
        path.unlink()
    _write_plan(out, fp, entries)
    return set()


def write_shard_set(
    out: Path,
    samples: Sequence[OutSample],
    *,
    classes: Sequence[str],
    build: Mapping[str, Any],
    maxcount: int,
    maxsize: int,
    workers: int = 1,
    progress: Progress | Callable[[int], None] | None = None,
) -> ShardIndex:
    """Write ``samples`` (in this order) as a shard set in ``out`` and index it.

    Args:
        out: Output folder (created if needed).
        samples: The samples, already in their final (shuffled) order.
        classes: Class names; ``label`` indexes them. Empty for an unlabelled set.
        build: Provenance recorded in the index (``kind`` and parameters); JSON-ready.
        maxcount: Most samples per shard.
        maxsize: Most bytes of members per shard (one sample always fits).
        workers: Shards written in parallel (threads: the work is file I/O).
        progress: Told of the samples written (from worker threads; those of shards kept from an
            earlier run first, all of them when the set is already complete), as one task of
            ``len(samples)``; or a bare ``fn(n)`` called with the counts.

    Returns:
        The index written to ``out/index.json``.

    Raises:
        DataError: ``out`` holds data this function did not write, or a source changed.
        RunLockedError: Another process is writing a shard set into ``out`` (its pid, host and
            start time named).
    """
    out.mkdir(parents=True, exist_ok=True)
    label = f"writing {out} (samples)"
    with FolderLock(out, "a shard build"), tracked(as_progress(progress), len(samples), label) as advance:
        return _write_locked(
            out,
            samples,
            classes=classes,
            build=build,
            maxcount=maxcount,
            maxsize=maxsize,
            workers=workers,
            progress=advance,
        )


def _write_locked(
    out: Path,
    samples: Sequence[OutSample],
    *,
    classes: Sequence[str],
    build: Mapping[str, Any],
    maxcount: int,
    maxsize: int,
    workers: int,
    progress: Callable[[int], None],
) -> ShardIndex:
    """:func:`write_shard_set` while holding the lock of ``out``."""
    ranges = plan_shards(samples, maxcount, maxsize)
    entries = [
        ShardEntry(shard_name(n), len(r), tar_bytes(sum(samples[i].tar_bytes() for i in r)))
        for n, r in enumerate(ranges)
    ]
    fp = fingerprint(samples, ranges, classes, build)
    record = {**dict(build), "writer": WRITER, "fingerprint": fp}
    existing = _own_index(out)
    if (
        existing
        and existing.build
        and existing.build.get("fingerprint") == fp
        and _complete(out, existing.shards)
    ):
        log.info(
            "%s is already complete (%d samples in %d shards)", out, existing.total, len(existing.shards)
        )
        progress(existing.total)
        return existing
    keep = _prepare(out, fp, entries)
    todo = [n for n, entry in enumerate(entries) if entry.name not in keep]
    if keep:
        progress(sum(entry.count for entry in entries if entry.name in keep))
    jobs = [(out / entries[n].name, [samples[i] for i in ranges[n]], ranges[n].start) for n in todo]
    if workers > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [
                pool.submit(write_shard, path, chunk, first, progress) for path, chunk, first in jobs
            ]:
                future.result()
    else:
        for path, chunk, first in jobs:
            write_shard(path, chunk, first, progress)
    for entry in entries:
        size = (out / entry.name).stat().st_size
        if size != entry.bytes:  # pragma: no cover - would mean the size formula is wrong
            raise DataError(f"{out / entry.name}: wrote {size} bytes, planned {entry.bytes}")
    labels = [s.label for s in samples]
    counts = [0] * len(classes)
    for label in labels:
        if label is not None and 0 <= label < len(classes):
            counts[label] += 1
    index = ShardIndex(
        shards=tuple(entries), classes=tuple(classes), class_counts=tuple(counts), build=record
    )
    write_index(out, index)
    (out / PLAN_NAME).unlink(missing_ok=True)
    log.info("wrote %d samples in %d shards to %s", index.total, len(entries), out)
    return index


__all__ = [
    "INDEX_NAME",
    "Extent",
    "OutSample",
    "plan_shards",
    "shard_name",
    "write_shard",
    "write_shard_set",
]
