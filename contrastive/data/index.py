"""The index of a shard set: ``index.json`` beside the shards.

The pipeline reads it to know how many samples each shard holds (so that every rank yields the
same number of batches without opening a shard), the class names, and the total. A build writes
it last: a shard set is complete exactly when its index exists.

Format (JSON, ``format = "contrastive-shards"``, ``version = 1``)::

    {"format": "contrastive-shards", "version": 1, "total": 1297,
     "classes": ["0", "1", ...], "class_counts": [130, ...],
     "shards": [{"name": "shard-000000.tar", "count": 25, "bytes": 92160}, ...],
     "build": {"kind": "digits", ...}}

``classes`` is empty for an unlabelled set; ``build`` records how the set was made (``null`` when
unknown) and lets a rerun of a build recognise its own complete output.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from contrastive import atomic
from contrastive.errors import DataError

INDEX_NAME = "index.json"
FORMAT = "contrastive-shards"
VERSION = 1


@attrs.frozen
class ShardEntry:
    """One shard of a set.

    Attributes:
        name: File name, relative to the index's folder.
        count: Samples (keys with an image) in the shard.
        bytes: File size in bytes.
    """

    name: str
    count: int
    bytes: int


@attrs.frozen
class ShardIndex:
    """What ``index.json`` records.

    Attributes:
        shards: The shards, in order.
        classes: Class names; position is the class index (``cls``). Empty when unlabelled.
        class_counts: Samples per class, aligned with ``classes``.
        build: How the set was made (kind, parameters, fingerprint), or None.
    """

    shards: tuple[ShardEntry, ...]
    classes: tuple[str, ...]
    class_counts: tuple[int, ...]
    build: Mapping[str, Any] | None = None

    @property
    def total(self) -> int:
        """Samples in the set."""
        return sum(shard.count for shard in self.shards)

    @property
    def labelled(self) -> bool:
        """Whether the set has class labels."""
        return bool(self.classes)

    def to_json(self) -> dict[str, Any]:
        """The JSON document (keys in a fixed order, so equal indexes give equal files)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "total": self.total,
            "classes": list(self.classes),
            "class_counts": list(self.class_counts),
            "shards": [{"name": s.name, "count": s.count, "bytes": s.bytes} for s in self.shards],
            "build": dict(self.build) if self.build is not None else None,
        }

    @classmethod
    def from_json(cls, doc: Any, *, source: str) -> ShardIndex:
        """Parse and check an index document.

        Raises:
            DataError: Not an index, or its numbers are negative or do not add up.
        """
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise DataError(f"{source} is not a contrastive shard index (format {FORMAT!r} expected)")
        if doc.get("version") != VERSION:
            raise DataError(
                f"{source}: index version {doc.get('version')!r} is not supported (expected {VERSION})"
            )
        try:
            shards = tuple(
                ShardEntry(str(s["name"]), int(s["count"]), int(s["bytes"])) for s in doc["shards"]
            )
            classes = tuple(str(c) for c in doc["classes"])
            class_counts = tuple(int(c) for c in doc["class_counts"])
            total = int(doc["total"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{source}: malformed index ({type(exc).__name__}: {exc})") from exc
        negative = [s.name for s in shards if s.count < 0 or s.bytes < 0]
        if negative or any(c < 0 for c in class_counts):
            where = f"shard {negative[0]}" if negative else "class_counts"
            raise DataError(f"{source}: malformed index ({where} has a negative count or size)")
        index = cls(shards=shards, classes=classes, class_counts=class_counts, build=doc.get("build"))
        if index.total != total:
            raise DataError(f"{source}: shard counts add up to {index.total}, but total says {total}")
        if classes and (len(class_counts) != len(classes) or sum(class_counts) != total):
            raise DataError(f"{source}: class_counts do not match classes and total")
        return index


def index_path(directory: str | Path) -> Path:
    """Where the index of the shard set in ``directory`` lives."""
    return Path(directory) / INDEX_NAME


def read_index(path: str | Path) -> ShardIndex:
    """Read an index from a file, or from ``index.json`` in a directory.

    Raises:
        DataError: Missing (with the command that makes one), unreadable or malformed.
    """
    path = Path(path)
    if path.is_dir() or path.suffix != ".json":
        path = path / INDEX_NAME
    if not path.is_file():
        raise DataError(
            f"no shard index at {path}; build the shards with `contrastive shards build`, or index "
            f"existing shards with `contrastive shards index {path.parent}`"
        )
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read shard index {path}: {exc}") from exc
    return ShardIndex.from_json(doc, source=str(path))


def parse_index(text: str, *, source: str) -> ShardIndex:
    """Parse index text read from anywhere (e.g. a remote URL)."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise DataError(f"cannot parse shard index {source}: {exc}") from exc
    return ShardIndex.from_json(doc, source=source)


def write_index(directory: str | Path, index: ShardIndex) -> Path:
    """Write ``index.json`` into ``directory`` atomically; returns its path."""
    path = index_path(directory)
    atomic.write_text(path, json.dumps(index.to_json(), indent=1) + "\n")
    return path


def count_classes(labels: Sequence[int], num_classes: int) -> tuple[int, ...]:
    """Histogram of class indices ``labels`` over ``num_classes`` classes."""
    counts = [0] * num_classes
    for label in labels:
        counts[label] += 1
    return tuple(counts)
