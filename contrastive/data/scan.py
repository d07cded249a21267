"""``shards index``: index a shard set made elsewhere (e.g. a public ImageNet WebDataset copy).

Every ``*.tar`` in the folder is read (only the ``cls`` and ``json`` members; image data is
skipped by seeking) to count its samples and classes. Class names come from the ``json`` member's
``class`` (else ``wnid``, else ``class_name``) field when every class index has one distinct
name, else they are ``"0"``, ``"1"``, ... A set whose samples have no ``cls`` is indexed as
unlabelled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import attrs

from contrastive.data.index import ShardEntry, ShardIndex, index_path, write_index
from contrastive.data.tario import BLOCK, Group, UnsafeMemberError, iter_groups, open_tar
from contrastive.errors import DataError

log = logging.getLogger(__name__)

#: json fields that may name a sample's class, in order of preference.
CLASS_FIELDS = ("class", "wnid", "class_name")


@attrs.frozen
class ScannedSample:
    """What a scan keeps of one sample.

    Attributes:
        shard: Position of its shard in the scanned list.
        key: Its key.
        name: Original file name (json ``name``/``filename``, else the key).
        label: ``cls``, or None.
        class_name: json ``class`` (a string), or None.
        group: The group as read (extents of every member, data of ``cls``/``json``).
    """

    shard: int
    key: str
    name: str
    label: int | None
    class_name: str | None
    group: Group


def read_groups(path: Path, want: Callable[[str], bool]) -> list[Group]:
    """The samples of one local shard, the whole shard checked (reading the members ``want`` picks).

    Raises:
        UnsafeMemberError: The shard holds a member no shard may hold (a name outside its folder,
            a link, a device; see :func:`contrastive.data.tario.check_member`); the message names
            the shard and the member.
        DataError: The shard is empty, corrupt or truncated.
    """
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"shard {path} is empty (0 bytes); replace it and index again")
    try:
        with open(path, "rb") as f, open_tar(f, seekable=True) as tar:
            groups = list(iter_groups(tar, want=want))
            end = tar.offset  # where tarfile stopped: the end-of-archive blocks, or a bad header
            intact = tar.fileobj is not f or _ends_cleanly(f, end, size)  # compressed: not checked
    except UnsafeMemberError as exc:
        raise UnsafeMemberError(f"shard {path}: {exc}") from exc
    except Exception as exc:  # tarfile raises many kinds on corrupt input
        reason = " ".join(str(exc).split())
        raise DataError(f"cannot read shard {path}: {type(exc).__name__}: {reason}") from exc
    if any(offset + length > size for group in groups for offset, length in group.extents.values()):
        raise DataError(f"shard {path} is truncated ({size} bytes); replace it and index again")
    if not intact:
        raise DataError(
            f"shard {path} is damaged: no valid tar header or end-of-archive at byte {end} of {size} "
            "(truncated, or overwritten)"
        )
    return groups


def scan_shard(path: Path, number: int) -> list[ScannedSample]:
    """The samples of one local shard, reading only ``cls`` and ``json`` members.

    Raises:
        UnsafeMemberError, DataError: See :func:`read_groups`.
    """
    samples: list[ScannedSample] = []
    for group in read_groups(path, want=lambda ext: ext in ("cls", "json")):
        meta = group.meta()
        class_name = next((meta[k] for k in CLASS_FIELDS if isinstance(meta.get(k), str)), None)
        samples.append(
            ScannedSample(
                shard=number,
                key=group.key,
                name=group.original_name(),
                label=group.label(),
                class_name=class_name if isinstance(class_name, str) else None,
                group=group,
            )
        )
    return samples


def count_samples(path: Path) -> int:
    """The samples of one local shard, from its member headers alone (no member is read).

    Raises:
        UnsafeMemberError, DataError: See :func:`read_groups`.
    """
    return len(read_groups(path, want=lambda ext: False))


def _ends_cleanly(f: BinaryIO, end: int, size: int) -> bool:
    """Whether the tar read up to ``end`` ends there: two zero blocks, and nothing but zeros after.

    ``tarfile`` stops silently at the first header it cannot parse; a truncated or overwritten
    shard therefore looks shorter, not broken, unless what follows its last member is checked.
    """
    if size - end < 2 * BLOCK:
        return False
    f.seek(end)
    while chunk := f.read(1 << 20):
        if chunk.count(0) != len(chunk):
            return False
    return True


@attrs.frozen
class Damaged:
    """A shard that cannot be indexed.

    Attributes:
        name: Its file name.
        reason: Why (one line).
    """

    name: str
    reason: str


def _scan_or_damaged(path: Path, number: int) -> list[ScannedSample] | Damaged:
    try:
        return scan_shard(path, number)
    except DataError as exc:
        return Damaged(path.name, str(exc))


def scan_shards(paths: Sequence[Path], workers: int = 1) -> list[list[ScannedSample]]:
    """:func:`scan_shard` of every path (in parallel threads), in order."""
    if workers > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(scan_shard, paths, range(len(paths))))
    return [scan_shard(path, n) for n, path in enumerate(paths)]


def class_names(samples: Sequence[ScannedSample]) -> list[str]:
    """Class names of labelled samples: their json ``class`` when consistent, else the indices.

    Raises:
        DataError: Some samples have a ``cls`` and others not, or a ``cls`` is negative.
    """
    labels = [s.label for s in samples]
    missing = sum(label is None for label in labels)
    if missing == len(labels):
        return []
    if missing:
        raise DataError(f"{missing} of {len(labels)} samples have no valid integer cls member")
    if min(label for label in labels if label is not None) < 0:
        raise DataError("cls members must be class indices >= 0")
    count = max(label for label in labels if label is not None) + 1
    names: dict[int, set[str | None]] = {}
    for sample in samples:
        assert sample.label is not None
        names.setdefault(sample.label, set()).add(sample.class_name)
    chosen = [next(iter(names.get(i, {None}))) for i in range(count)]
    consistent = all(len(names.get(i, set())) == 1 for i in range(count)) and all(chosen)
    if consistent and len(set(chosen)) == count:
        return [str(name) for name in chosen]
    return [str(i) for i in range(count)]


def index_directory(
    directory: str | Path, *, workers: int = 1, force: bool = False, allow_damaged: bool = False
) -> ShardIndex:
    """Scan every ``*.tar`` in ``directory`` and write its ``index.json``.

    Args:
        directory: Folder of shards.
        workers: Shards read in parallel.
        force: Replace an existing index.
        allow_damaged: Index the intact shards and leave the damaged ones out (their names are
            recorded in the index's ``build.damaged``) instead of stopping.

    Returns:
        The index written.

    Raises:
        DataError: No shards, an index already there (without ``force``), or damaged shards
            (without ``allow_damaged``: then no index is written; the error names them).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory} is not a folder")
    if index_path(directory).exists() and not force:
        raise DataError(f"{index_path(directory)} already exists; pass --force to index the shards again")
    paths = sorted(p for p in directory.glob("*.tar") if p.is_file())
    if not paths:
        raise DataError(f"no *.tar shards in {directory}")
    if workers > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_scan_or_damaged, paths, range(len(paths))))
    else:
        results = [_scan_or_damaged(path, n) for n, path in enumerate(paths)]
    damaged = [r for r in results if isinstance(r, Damaged)]
    if damaged and (not allow_damaged or len(damaged) == len(paths)):
        named = "; ".join(d.reason for d in damaged[:5]) + (
            f"; and {len(damaged) - 5} more" if len(damaged) > 5 else ""
        )
        advice = (
            "replace them and index again, or pass --allow-damaged to index the others without them"
            if len(damaged) < len(paths)
            else "replace them and index again"
        )
        raise DataError(
            f"{len(damaged)} of {len(paths)} shards in {directory} are damaged, no index written "
            f"({named}); {advice}"
        )
    kept = [(path, r) for path, r in zip(paths, results, strict=True) if not isinstance(r, Damaged)]
    flat = [sample for _, shard in kept for sample in shard]
    if not flat:
        raise DataError(f"the shards in {directory} hold no samples with an image")
    classes = class_names(flat)
    counts = [0] * len(classes)
    if classes:
        for sample in flat:
            assert sample.label is not None
            counts[sample.label] += 1
    entries = tuple(
        ShardEntry(name=path.name, count=len(shard), bytes=path.stat().st_size) for path, shard in kept
    )
    build: dict[str, Any] = {"kind": "indexed"}
    if damaged:
        build["damaged"] = [d.name for d in damaged]
        for d in damaged:
            log.warning("left out of the index: %s", d.reason)
    index = ShardIndex(shards=entries, classes=tuple(classes), class_counts=tuple(counts), build=build)
    write_index(directory, index)
    log.info(
        "indexed %d samples in %d shards (%d classes) in %s",
        index.total,
        len(entries),
        len(classes),
        directory,
    )
    return index
