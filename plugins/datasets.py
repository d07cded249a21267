"""Built-in datasets: ``webdataset`` (any shard set with an index) and ``digits`` (the demo set).

Both build a :class:`contrastive.data.pipeline.ShardDataSource`; ``digits`` writes its shards on
first use and then reads them exactly as ``webdataset`` does. The largest share of skipped
(undecodable) samples a run tolerates is the run's setting, not the dataset's: the training loop
sums ``Batch.skipped`` and calls :func:`contrastive.data.check_skipped`.
"""

from __future__ import annotations

from typing import Literal

import attrs

from contrastive import Component, hookimpl, option
from contrastive.interfaces import DataSource


@attrs.frozen
class WebDatasetOptions:
    """Options of the ``webdataset`` dataset."""

    urls: str | tuple[str, ...] = option(
        doc="Shards: a folder holding index.json, or URLs/brace patterns (local paths, pipe:, http://)"
    )
    index: str | None = option(None, "Index file or URL (default: index.json beside local shards)")
    shuffle_buffer: int = option(
        1000, "Samples in each worker's seeded shuffle buffer (0: no shuffle)", min=0
    )
    decoder: Literal["torchvision", "pil"] = option(
        "torchvision", "Image decoder: torchvision.io (faster, measured) or PIL with JPEG draft mode"
    )
    labelled: bool = option(True, "Expose the class labels (False: every label is -1)")


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


def build_webdataset(options: WebDatasetOptions) -> DataSource:
    """A source over an indexed shard set."""
    from contrastive.data.sources import webdataset_source

    return webdataset_source(
        options.urls,
        index=options.index,
        shuffle_buffer=options.shuffle_buffer,
        decoder=options.decoder,
        labelled=options.labelled,
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
