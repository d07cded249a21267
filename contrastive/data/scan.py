"""``shards index``: index a shard set made elsewhere (e.g. a public ImageNet WebDataset copy).

Every ``*.tar`` in the folder is read (only the ``cls`` and ``json`` members; image data is
skipped by seeking) to count its samples and classes. Class names come from the ``json`` member's
``class`` (else ``wnid``, else ``class_name``) field when every class index has one distinct
name, else they are ``"0"``, ``"1"``, ... A set whose samples have no ``cls`` is indexed as
unlabelled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs

from contrastive.data.index import ShardEntry, ShardIndex, index_path, write_index
from contrastive.data.tario import Group, iter_groups, open_tar
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


def scan_shard(path: Path, number: int) -> list[ScannedSample]:
    """The samples of one local shard, reading only ``cls`` and ``json`` members.

    Raises:
        DataError: The shard is corrupt or truncated.
    """
    size = path.stat().st_size
    samples: list[ScannedSample] = []
    try:
        with open(path, "rb") as f, open_tar(f, seekable=True) as tar:
            for group in iter_groups(tar, want=lambda ext: ext in ("cls", "json")):
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
    except Exception as exc:  # tarfile raises many kinds on corrupt input
        raise DataError(f"cannot read shard {path}: {type(exc).__name__}: {exc}") from exc
    if any(offset + length > size for s in samples for offset, length in s.group.extents.values()):
        raise DataError(f"shard {path} is truncated ({size} bytes); replace it and index again")
    return samples


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


def index_directory(directory: str | Path, *, workers: int = 1, force: bool = False) -> ShardIndex:
    """Scan every ``*.tar`` in ``directory`` and write its ``index.json``.

    Args:
        directory: Folder of shards.
        workers: Shards read in parallel.
        force: Replace an existing index.

    Returns:
        The index written.

    Raises:
        DataError: No shards, an index already there (without ``force``), or unreadable shards.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory} is not a folder")
    if index_path(directory).exists() and not force:
        raise DataError(f"{index_path(directory)} already exists; pass --force to index the shards again")
    paths = sorted(p for p in directory.glob("*.tar") if p.is_file())
    if not paths:
        raise DataError(f"no *.tar shards in {directory}")
    scanned = scan_shards(paths, workers)
    flat = [sample for shard in scanned for sample in shard]
    if not flat:
        raise DataError(f"the shards in {directory} hold no samples with an image")
    classes = class_names(flat)
    counts = [0] * len(classes)
    if classes:
        for sample in flat:
            assert sample.label is not None
            counts[sample.label] += 1
    entries = tuple(
        ShardEntry(name=path.name, count=len(shard), bytes=path.stat().st_size)
        for path, shard in zip(paths, scanned, strict=True)
    )
    index = ShardIndex(
        shards=entries, classes=tuple(classes), class_counts=tuple(counts), build={"kind": "indexed"}
    )
    write_index(directory, index)
    log.info(
        "indexed %d samples in %d shards (%d classes) in %s",
        index.total,
        len(entries),
        len(classes),
        directory,
    )
    return index
