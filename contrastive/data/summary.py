"""What ``shards inspect`` reports about a shard set: counts, classes, histogram, shard sizes."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from contrastive.data.index import read_index
from contrastive.data.scan import count_samples
from contrastive.data.tario import UnsafeMemberError
from contrastive.errors import DataError


def summarize(directory: str | Path) -> dict[str, Any]:
    """A JSON-ready summary of the indexed shard set in ``directory``.

    Keys: ``directory``, ``total``, ``num_classes``, ``class_counts`` (class name -> samples),
    ``num_shards``, ``shard_samples`` and ``shard_bytes`` (min/max/mean, and total bytes),
    ``shards`` (name, count, bytes of each), ``missing`` (shards absent or of another size than
    indexed), ``damaged`` (``{name, reason}`` of the present shards that cannot be read whole or
    hold another number of samples than indexed) and ``build`` (how the set was made).

    Every present shard's member headers are read (not the images) to count its samples.

    Raises:
        DataError: No readable index in ``directory``.
        UnsafeMemberError: A shard holds a member no shard may hold (a name outside its folder, a
            link, a device); the message names the shard and the member.
    """
    directory = Path(directory)
    index = read_index(directory)
    counts = [s.count for s in index.shards]
    sizes = [s.bytes for s in index.shards]
    missing = [
        s.name
        for s in index.shards
        if not (directory / s.name).is_file() or (directory / s.name).stat().st_size != s.bytes
    ]
    damaged = [
        {"name": s.name, "reason": reason}
        for s in index.shards
        if s.name not in missing and (reason := _damage(directory / s.name, s.count)) is not None
    ]
    return {
        "directory": str(directory),
        "total": index.total,
        "num_classes": len(index.classes),
        "class_counts": dict(zip(index.classes, index.class_counts, strict=True)),
        "num_shards": len(index.shards),
        "shard_samples": {"min": min(counts), "max": max(counts), "mean": statistics.fmean(counts)},
        "shard_bytes": {
            "min": min(sizes),
            "max": max(sizes),
            "mean": statistics.fmean(sizes),
            "total": sum(sizes),
        },
        "shards": [{"name": s.name, "count": s.count, "bytes": s.bytes} for s in index.shards],
        "missing": missing,
        "damaged": damaged,
        "build": dict(index.build) if index.build is not None else None,
    }


def _damage(path: Path, count: int) -> str | None:
    """Why the shard at ``path`` does not hold the ``count`` samples its index says, or None.

    Raises:
        UnsafeMemberError: It holds a member no shard may hold.
    """
    try:
        found = count_samples(path)
    except UnsafeMemberError:
        raise
    except DataError as exc:
        return str(exc)
    return None if found == count else f"holds {found} samples, the index says {count}"
