"""Which samples each (rank, worker) reads: pure functions of the index counts and the seed.

Training. Every epoch the shards are put in a seeded order (same on every rank) and read as one
concatenated sequence of sample positions. Each rank runs ``W = max(1, num_workers)`` streams;
stream ``s`` of a rank makes the rank's batches ``s, s + W, s + 2W, ...`` (the order in which a
``DataLoader`` takes batches from its workers), so it needs ``len(range(s, steps, W)) * B``
samples. The sequence is cut into consecutive pieces of exactly those sizes, rank-major: rank 0
stream 0 first, then rank 0 stream 1, ... A piece may start or end inside a shard (such a shard is
read partly by two streams). The pieces never overlap, so one epoch visits ``steps * global_batch``
distinct samples (all of them when the global batch divides the total), uneven shard sizes only
move the cuts, and every stream gets its quota without waiting for another.

Evaluation. Positions in index order are split into ``world_size`` near-equal contiguous ranges;
every rank yields ``ceil(ceil(total / world_size) / batch)`` batches. A rank's range is split
across its streams in proportion to their batch counts; rows past a stream's samples are padding.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import attrs

from contrastive.data.seeding import shuffled


@attrs.frozen
class Segment:
    """Samples ``start`` to ``stop`` (exclusive) of one shard.

    Attributes:
        shard: Position of the shard in the source's shard list.
        start: First sample (0-based, within the shard).
        stop: One past the last sample.
    """

    shard: int
    start: int
    stop: int

    @property
    def count(self) -> int:
        return self.stop - self.start


def prefix_offsets(order: Sequence[int], counts: Sequence[int]) -> list[int]:
    """Position of the first sample of each shard of ``order`` in the concatenation, then the total."""
    offsets = [0]
    for shard in order:
        offsets.append(offsets[-1] + counts[shard])
    return offsets


def segments_between(
    order: Sequence[int], counts: Sequence[int], start: int, stop: int, offsets: Sequence[int] | None = None
) -> list[Segment]:
    """Positions ``[start, stop)`` of the shards concatenated in ``order``, as segments.

    ``offsets`` (:func:`prefix_offsets` of ``order``) may be passed to avoid recomputing it.
    """
    offsets = prefix_offsets(order, counts) if offsets is None else offsets
    segments: list[Segment] = []
    i = max(0, bisect.bisect_right(offsets, start) - 1)
    while i < len(order) and offsets[i] < stop:
        first, last = max(start, offsets[i]), min(stop, offsets[i + 1])
        if first < last:
            segments.append(Segment(order[i], first - offsets[i], last - offsets[i]))
        i += 1
    return segments


def stream_batches(steps: int, streams: int, stream: int) -> range:
    """Indices of the batches (of ``steps``) that stream ``stream`` of ``streams`` makes."""
    return range(stream, steps, streams)


def shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """The seeded order in which an epoch reads the shards."""
    return shuffled(range(num_shards), "shards", seed, epoch)


def train_plan(
    counts: Sequence[int], *, seed: int, epoch: int, world_size: int, streams: int, steps: int, batch: int
) -> list[list[list[Segment]]]:
    """Segments per ``[rank][stream]`` for one training epoch.

    Args:
        counts: Samples per shard (from the index).
        seed: Run seed.
        epoch: Epoch number.
        world_size: Ranks.
        streams: Streams per rank (data-loader workers, at least 1).
        steps: Batches per rank in the epoch (``total // global_batch``).
        batch: Samples per batch on one rank.

    Raises:
        ValueError: The epoch needs more samples than the shards hold.
    """
    if world_size * steps * batch > sum(counts):
        raise ValueError(
            f"an epoch of {steps} x {world_size} x {batch} samples needs more than {sum(counts)}"
        )
    order = shard_order(len(counts), seed, epoch)
    offsets = prefix_offsets(order, counts)
    plan: list[list[list[Segment]]] = []
    position = 0
    for _ in range(world_size):
        rank: list[list[Segment]] = []
        for stream in range(streams):
            size = len(stream_batches(steps, streams, stream)) * batch
            rank.append(segments_between(order, counts, position, position + size, offsets))
            position += size
        plan.append(rank)
    return plan


def stream_plan(
    counts: Sequence[int], *, seed: int, begin: int, end: int, world_size: int, streams: int, batch: int
) -> list[list[list[Segment]]]:
    """Segments per ``[rank][stream]`` for steps ``begin`` to ``end`` of the endless training stream.

    The stream reads epoch 0's shard order (:func:`shard_order`), then epoch 1's, and so on; step
    ``s`` reads its positions ``s * G`` to ``(s + 1) * G`` (``G = world_size * batch``), cut into
    rank-major stream pieces as :func:`train_plan` cuts an epoch. A piece may span two epochs. The
    steps ``0 .. e * N // G`` of a stream equal :func:`train_plan`'s epochs when ``G`` divides ``N``.

    Args:
        counts: Samples per shard (from the index).
        seed: Run seed.
        begin: First step (global, counted from the start of the stage).
        end: One past the last step.
        world_size: Ranks.
        streams: Streams per rank (data-loader workers, at least 1).
        batch: Samples per batch on one rank.
    """
    steps = end - begin
    position = begin * world_size * batch
    plan: list[list[list[Segment]]] = []
    for _ in range(world_size):
        rank: list[list[Segment]] = []
        for stream in range(streams):
            size = len(stream_batches(steps, streams, stream)) * batch
            rank.append(endless_segments(counts, seed, position, position + size))
            position += size
        plan.append(rank)
    return plan


def endless_segments(counts: Sequence[int], seed: int, start: int, stop: int) -> list[Segment]:
    """Positions ``[start, stop)`` of the epochs' shard orders read one after another, as segments."""
    total = sum(counts)
    segments: list[Segment] = []
    epoch = start // total
    while epoch * total < stop:
        first, last = max(start, epoch * total), min(stop, (epoch + 1) * total)
        if first < last:
            order = shard_order(len(counts), seed, epoch)
            segments.extend(segments_between(order, counts, first - epoch * total, last - epoch * total))
        epoch += 1
    return segments


def eval_batches_per_rank(total: int, world_size: int, batch: int) -> int:
    """Evaluation batches every rank yields for ``total`` samples."""
    return math.ceil(math.ceil(total / world_size) / batch)


def eval_plan(
    counts: Sequence[int], *, world_size: int, streams: int, batch: int
) -> list[list[list[Segment]]]:
    """Segments per ``[rank][stream]`` for evaluation (every sample exactly once, index order)."""
    total = sum(counts)
    order = list(range(len(counts)))
    offsets = prefix_offsets(order, counts)
    batches = eval_batches_per_rank(total, world_size, batch)
    plan: list[list[list[Segment]]] = []
    for rank in range(world_size):
        first, last = total * rank // world_size, total * (rank + 1) // world_size
        size = last - first
        rank_plan: list[list[Segment]] = []
        done = 0
        for stream in range(streams):
            done_after = done + len(stream_batches(batches, streams, stream))
            start = first + (size * done // batches if batches else 0)
            stop = first + (size * done_after // batches if batches else 0)
            rank_plan.append(segments_between(order, counts, start, stop, offsets))
            done = done_after
        plan.append(rank_plan)
    return plan
