"""``shards subset``: a labelled subset of a shard set, written as its own small shard set.

Three ways to choose:

- ``names``: a file in the published SimCLR format, one ``<wnid>_<id>.JPEG`` per line and no
  label. A name matches a sample whose original file name (the ``json`` member's ``name``, else
  the sample key) has the same stem; extensions are ignored, so ``x.JPEG`` matches ``x.jpg``.
  Every name must be found.
- ``per_class``: N samples of every class (all of a class that has fewer, with a warning).
- ``fraction``: ``max(1, round_half_up(fraction * n_c))`` samples of a class with ``n_c``
  samples (at least one per class, never more than the class has).
- ``held_out``: N samples of every class taken from the *end* of the order the other per-class
  draws take from the start: a validation subset disjoint from every ``per_class``/``fraction``
  subset of the same seed that leaves at least N samples of each class undrawn.

The per-class draws are seeded: for each class, the candidates sorted by name are shuffled with
``(seed, class)`` and the first ones taken (the last ones for ``held_out``). The subset is
written shuffled with ``seed``; image bytes are copied unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from contrastive.data.imagefolder import DEFAULT_MAXCOUNT, DEFAULT_MAXSIZE
from contrastive.data.index import ShardIndex, read_index
from contrastive.data.scan import ScannedSample, scan_shards
from contrastive.data.seeding import shuffled
from contrastive.data.shards import Extent, OutSample, write_shard_set
from contrastive.errors import DataError
from contrastive.progress import Progress

log = logging.getLogger(__name__)


def name_stem(name: str) -> str:
    """``dir/n01440764_10026.JPEG`` -> ``n01440764_10026``."""
    base = name.strip().rsplit("/", 1)[-1]
    dot = base.rfind(".")
    return base[:dot] if dot > 0 else base


def read_name_list(path: str | Path) -> list[str]:
    """The names in a subset list: one per line; blank lines and ``#`` comments ignored.

    Raises:
        DataError: Unreadable or empty.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DataError(f"cannot read subset list {path}: {exc}") from exc
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise DataError(f"subset list {path} names no file")
    return names


def select_by_names(
    samples: Sequence[ScannedSample], names: Sequence[str], *, source: str
) -> list[ScannedSample]:
    """The samples whose original names are in ``names`` (matched by stem), in list order.

    Raises:
        DataError: Some names are not found; says how many and shows a few.
    """
    by_stem: dict[str, ScannedSample] = {}
    duplicates = 0
    for sample in samples:
        stem = name_stem(sample.name)
        if stem in by_stem:
            duplicates += 1
            continue
        by_stem[stem] = sample
    if duplicates:
        log.warning("%d samples share an original name with an earlier one; the first is used", duplicates)
    wanted = list(dict.fromkeys(name_stem(name) for name in names))
    missing = [name for name in wanted if name not in by_stem]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(
            f"{len(missing)} of {len(wanted)} names in {source} are not in the source shards: {shown}"
        )
    return [by_stem[name] for name in wanted]


def _by_class(samples: Sequence[ScannedSample], num_classes: int) -> list[list[ScannedSample]]:
    if num_classes == 0:
        raise DataError("the source shards carry no labels, so a class-balanced subset cannot be drawn")
    groups: list[list[ScannedSample]] = [[] for _ in range(num_classes)]
    for sample in samples:
        assert sample.label is not None
        groups[sample.label].append(sample)
    return groups


def _draw(
    groups: Sequence[Sequence[ScannedSample]], take: Callable[[int], int], seed: int, *, last: bool = False
) -> list[ScannedSample]:
    """The first (``last``: the last) ``take(class size)`` samples of every class's seeded order."""
    chosen: list[ScannedSample] = []
    for label, group in enumerate(groups):
        ordered = shuffled(sorted(group, key=lambda s: (s.name, s.shard, s.key)), "subset", seed, label)
        count = take(len(group))
        chosen.extend(ordered[len(ordered) - count :] if last else ordered[:count])
    return chosen


def fraction_count(fraction: float, size: int) -> int:
    """Samples drawn from a class of ``size`` for ``fraction``: half up, at least 1, at most ``size``."""
    return min(size, max(1, math.floor(fraction * size + 0.5)))


def select_per_class(
    samples: Sequence[ScannedSample], num_classes: int, per_class: int, seed: int
) -> list[ScannedSample]:
    """``per_class`` seeded samples of every class (all of smaller classes)."""
    if per_class < 1:
        raise DataError(f"--per-class must be at least 1, got {per_class}")
    groups = _by_class(samples, num_classes)
    short = [label for label, group in enumerate(groups) if len(group) < per_class]
    if short:
        log.warning("%d classes have fewer than %d samples; all of theirs are taken", len(short), per_class)
    return _draw(groups, lambda size: min(size, per_class), seed)


def select_fraction(
    samples: Sequence[ScannedSample], num_classes: int, fraction: float, seed: int
) -> list[ScannedSample]:
    """A seeded share ``fraction`` of every class (see :func:`fraction_count`)."""
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"--fraction must be in (0, 1], got {fraction}")
    return _draw(_by_class(samples, num_classes), lambda size: fraction_count(fraction, size), seed)


def select_held_out(
    samples: Sequence[ScannedSample], num_classes: int, per_class: int, seed: int
) -> list[ScannedSample]:
    """A validation subset: the last ``per_class`` samples of every class's seeded order.

    :func:`select_per_class` and :func:`select_fraction` take the first samples of the same order,
    so the two never share a sample while a class keeps ``per_class`` samples undrawn.

    Raises:
        DataError: ``per_class`` below 1, or a class with no more than ``per_class`` samples (it
            would leave none to train on).
    """
    if per_class < 1:
        raise DataError(f"a validation subset needs at least 1 sample per class, got {per_class}")
    groups = _by_class(samples, num_classes)
    short = [label for label, group in enumerate(groups) if len(group) <= per_class]
    if short:
        sizes = ", ".join(f"class {label}: {len(groups[label])}" for label in short[:5])
        raise DataError(
            f"cannot hold out {per_class} samples per class for validation and keep any to train on ({sizes})"
        )
    return _draw(groups, lambda size: per_class, seed, last=True)


def _out_sample(sample: ScannedSample, shard: Path, classes: Sequence[str]) -> OutSample:
    ext = sample.group.image_key
    offset, size = sample.group.extents[ext]
    meta = dict(sample.group.meta())
    meta["name"] = sample.name
    if sample.label is not None and 0 <= sample.label < len(classes):
        meta["class"] = classes[sample.label]
    return OutSample(
        image=Extent(str(shard), offset, size),
        image_size=size,
        source_id=f"{shard.name}:{sample.key}:{offset}:{size}",
        label=sample.label,
        meta=meta,
        image_ext="jpg" if ext == "jpeg" else ext,
    )


def write_subset(
    src: str | Path,
    out: str | Path,
    *,
    names_file: str | Path | None = None,
    per_class: int | None = None,
    fraction: float | None = None,
    held_out: int | None = None,
    seed: int = 0,
    maxcount: int = DEFAULT_MAXCOUNT,
    maxsize: int = DEFAULT_MAXSIZE,
    workers: int = 1,
    progress: Progress | None = None,
) -> ShardIndex:
    """Write a subset of the local shard set ``src`` (which needs an index) to ``out``.

    Exactly one of ``names_file``, ``per_class``, ``fraction`` and ``held_out`` chooses the samples;
    ``progress`` is told of the samples written.

    Returns:
        The subset's index (classes are the source's).

    Raises:
        DataError: No or several choices, names not found, an unlabelled source for a
            class-balanced draw, or unreadable shards.
    """
    src, out = Path(src), Path(out)
    if sum(x is not None for x in (names_file, per_class, fraction, held_out)) != 1:
        raise DataError("choose the subset with exactly one of --list, --per-class, --fraction and held_out")
    index = read_index(src)
    paths = [src / entry.name for entry in index.shards]
    flat = [sample for shard in scan_shards(paths, workers) for sample in shard]
    build: dict[str, object] = {"kind": "subset", "source": str(src.resolve()), "seed": seed}
    if names_file is not None:
        names = read_name_list(names_file)
        chosen = select_by_names(flat, names, source=str(names_file))
        build["list"] = Path(names_file).name
        build["list_sha256"] = hashlib.sha256("\n".join(names).encode()).hexdigest()
    elif per_class is not None:
        chosen = select_per_class(flat, len(index.classes), per_class, seed)
        build["per_class"] = per_class
    elif fraction is not None:
        chosen = select_fraction(flat, len(index.classes), fraction, seed)
        build["fraction"] = fraction
    else:
        assert held_out is not None
        chosen = select_held_out(flat, len(index.classes), held_out, seed)
        build["held_out"] = held_out
    samples = [_out_sample(s, paths[s.shard], index.classes) for s in shuffled(chosen, "subset-order", seed)]
    log.info("subset of %d samples from %s", len(samples), src)
    return write_shard_set(
        out,
        samples,
        classes=index.classes,
        build=build,
        maxcount=maxcount,
        maxsize=maxsize,
        workers=workers,
        progress=progress,
    )
