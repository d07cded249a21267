"""Built-in datasets: ``webdataset`` (any shard set with an index) and ``digits`` (the demo set).

Both build a :class:`contrastive.data.pipeline.ShardDataSource`; ``digits`` writes its shards on
first use and then reads them exactly as ``webdataset`` does. The largest share of skipped
(undecodable) samples a run tolerates is the run's setting, not the dataset's: the training loop
sums ``Batch.skipped`` and calls :func:`contrastive.data.check_skipped`.

Both draw labelled subsets for ``contrastive bench label-efficiency``
(:class:`contrastive.interfaces.LabelledSubsets`): ``digits`` through its own
``labels_per_class``/``subset_seed`` options, ``webdataset`` by writing the subset's shards once
into ``<folder>-subsets/<index digest>/`` beside a local shard folder (see :func:`cached_subset`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal, Self

import attrs

from contrastive import Component, hookimpl, option
from contrastive.errors import DataError
from contrastive.interfaces import DataSource
from contrastive.options import structure_options

#: Shards a cached subset is cut into at most (so several data-loader workers can share it).
SUBSET_SHARDS = 16


@attrs.frozen
class WebDatasetOptions:
    """Options of the ``webdataset`` dataset."""

    urls: str | tuple[str, ...] = option(
        doc="Shards: a folder holding index.json (a local path or an http(s):// URL of one), or "
        "URLs/brace patterns (local paths, http(s)://, pipe:)"
    )
    index: str | None = option(
        None, "Index file or URL (default: index.json in the folder, or beside local or http(s) shards)"
    )
    shuffle_buffer: int = option(
        1000, "Samples in each worker's seeded shuffle buffer (0: no shuffle)", min=0
    )
    decoder: Literal["torchvision", "pil"] = option(
        "torchvision", "Image decoder: torchvision.io (faster, measured) or PIL with JPEG draft mode"
    )
    labelled: bool = option(True, "Expose the class labels (False: every label is -1)")
    http_timeout: float = option(
        30.0,
        "Seconds every connect and read of an http(s):// index or shard may wait",
        min=0.0,
        min_exclusive=True,
    )
    http_retries: int = option(
        3,
        "Further tries of an http(s):// URL after a dropped connection, timeout or 5xx (short backoff)",
        min=0,
    )
    http_failure: Literal["skip", "stop"] = option(
        "skip",
        "A shard still failing after its retries: skip its samples (counted against "
        "runtime.max_skipped_fraction) or stop the run",
    )

    @classmethod
    def for_path(cls, path: str) -> Self:
        """The shard set at ``path``, every other option at its default (the ``for_path``
        capability: ``contrastive eval --train PATH``)."""
        return cls(urls=path)

    def labelled_subset(self, *, per_class: int | None, fraction: float | None, seed: int) -> Self:
        """A class-balanced, seeded subset of this local shard set (written once, then reused).

        See :class:`contrastive.interfaces.LabelledSubsets` and :func:`cached_subset`.

        Raises:
            DataError: The shards are not a local folder with its own index, or carry no labels.
        """
        folder = cached_subset(self.urls, self.index, per_class=per_class, fraction=fraction, seed=seed)
        return attrs.evolve(self, urls=str(folder), index=None)


@attrs.frozen
class DigitsOptions:
    """Options of the ``digits`` dataset."""

    split: Literal["train", "test"] = option(
        "train", "Split: 1,297 training or 500 test images (fixed split)"
    )
    root: str | None = option(
        None, "Cache folder (default: $CONTRASTIVE_DATA/digits or ~/.cache/contrastive/digits)"
    )
    labelled: bool = option(True, "Expose the class labels (False: every label is -1)")
    labels_per_class: int = option(0, "Use a seeded subset of this many images per class (0: all)", min=0)
    subset_seed: int = option(0, "Seed of the labels_per_class subset")
    shuffle_buffer: int = option(
        1000, "Samples in each worker's seeded shuffle buffer (0: no shuffle)", min=0
    )
    decoder: Literal["torchvision", "pil"] = option("torchvision", "Image decoder: torchvision.io or PIL")

    @classmethod
    def for_split(cls, split: str) -> Self:
        """The ``split`` split, every other option at its default (the ``for_split`` capability:
        ``contrastive eval --train digits:train``).

        Raises:
            SpecError: No such split.
        """
        options: Self = structure_options(cls, {"split": split}, source=f"digits:{split}")
        return options

    def labelled_subset(self, *, per_class: int | None, fraction: float | None, seed: int) -> Self:
        """``labels_per_class = per_class`` drawn with ``subset_seed = seed`` (the digits subsets).

        See :class:`contrastive.interfaces.LabelledSubsets`.

        Raises:
            DataError: A fraction was asked for: digits draws a number of labels per class.
        """
        if fraction is not None or per_class is None:
            raise DataError(
                "the digits dataset draws its labelled subsets as a number of labels per class "
                "(labels_per_class), not as a fraction of each class: use --labels-per-class"
            )
        if per_class < 1:
            raise DataError(f"labels per class must be at least 1, got {per_class}")
        return attrs.evolve(self, labels_per_class=per_class, subset_seed=seed)


def cached_subset(
    urls: str | tuple[str, ...],
    index: str | None,
    *,
    per_class: int | None,
    fraction: float | None,
    seed: int,
) -> Path:
    """The shard folder of a class-balanced subset of the local shard folder ``urls``, built if missing.

    The subset (:func:`contrastive.data.subsets.write_subset`: ``per_class`` samples of every class,
    or the share ``fraction`` of each) is written once into
    ``<urls>-subsets/<digest>/per-class-<n>-seed-<s>`` (or ``fraction-<f>-seed-<s>``) beside the
    source folder, where ``<digest>`` names the source's ``index.json`` (a rebuilt source gets
    fresh subsets). It is built in a private folder renamed into place, so concurrent callers and
    interrupted builds never leave a partial subset; a later call reuses it.

    Raises:
        DataError: Not exactly one of ``per_class`` and ``fraction``; ``urls`` is not a local
            folder holding ``index.json`` (remote or ``pipe:`` shards, a list of shards, a
            separate ``index``); the source carries no labels.
    """
    from contrastive import atomic
    from contrastive.data.imagefolder import DEFAULT_MAXCOUNT
    from contrastive.data.index import index_path, read_index
    from contrastive.data.pipeline import is_local
    from contrastive.data.subsets import fraction_count, write_subset

    if (per_class is None) == (fraction is None):
        raise DataError("a labelled subset is chosen by exactly one of labels per class and fraction")
    where = urls if isinstance(urls, str) else ", ".join(urls)
    if not isinstance(urls, str) or not is_local(urls):
        raise DataError(
            f"a labelled subset is drawn from a local shard folder holding index.json; {where!r} is not "
            "one (remote, pipe: or a list of shards): copy the shards to a local folder first"
        )
    source = Path(urls).expanduser().resolve()
    own_index = index_path(source)
    if not own_index.is_file():
        raise DataError(
            f"a labelled subset is drawn from a local shard folder holding index.json; {urls} has none "
            "(write one with `contrastive shards index`)"
        )
    if index is not None and (not is_local(index) or Path(index).expanduser().resolve() != own_index):
        raise DataError(
            f"a labelled subset is drawn from the shard folder's own index.json, not from index = {index!r}"
        )
    found = read_index(source)
    if not found.labelled:
        raise DataError(f"{urls} carries no labels, so a class-balanced subset cannot be drawn")
    if per_class is not None:
        name = f"per-class-{per_class}"
        expected = sum(min(count, per_class) for count in found.class_counts)
    else:
        assert fraction is not None
        name = f"fraction-{fraction!r}"
        expected = sum(fraction_count(fraction, count) for count in found.class_counts if count)
    digest = hashlib.sha256(own_index.read_bytes()).hexdigest()[:12]
    final = source.parent / f"{source.name}-subsets" / digest / f"{name}-seed-{seed}"
    if not index_path(final).exists():
        maxcount = max(1, min(DEFAULT_MAXCOUNT, expected // SUBSET_SHARDS))

        def write(tmp: Path) -> None:
            write_subset(source, tmp, per_class=per_class, fraction=fraction, seed=seed, maxcount=maxcount)

        atomic.build_folder_once(final, write)
    return final


def build_webdataset(options: WebDatasetOptions) -> DataSource:
    """A source over an indexed shard set."""
    from contrastive.data.remote import HttpPolicy
    from contrastive.data.sources import webdataset_source

    return webdataset_source(
        options.urls,
        index=options.index,
        shuffle_buffer=options.shuffle_buffer,
        decoder=options.decoder,
        labelled=options.labelled,
        http=HttpPolicy(
            timeout=options.http_timeout, retries=options.http_retries, stop=options.http_failure == "stop"
        ),
    )


def build_digits(options: DigitsOptions) -> DataSource:
    """A source over the digits shards (built on first use)."""
    from contrastive.data.sources import digits_source

    return digits_source(
        split=options.split,
        root=options.root,
        labelled=options.labelled,
        labels_per_class=options.labels_per_class,
        subset_seed=options.subset_seed,
        shuffle_buffer=options.shuffle_buffer,
        decoder=options.decoder,
    )


@hookimpl
def contrastive_register_datasets() -> list[Component]:
    """The built-in datasets."""
    return [
        Component(
            name="webdataset",
            build=build_webdataset,
            options=WebDatasetOptions,
            summary="Indexed WebDataset tar shards, split by rank and worker, batches built in workers.",
        ),
        Component(
            name="digits",
            build=build_digits,
            options=DigitsOptions,
            summary="scikit-learn's 8x8 digits (1,297 train / 500 test) as shards built on first use.",
        ),
    ]
