"""The data source over a shard set: the :class:`contrastive.interfaces.DataSource` of ``webdataset``.

Reading. Each data-loader worker runs one stream (see :mod:`contrastive.data.plan` for which
samples it reads); the main process runs it when ``num_workers == 0``. A stream reads its shard
segments in order through a seeded shuffle buffer of raw samples, then decodes, applies the
augmentation's per-sample part and stacks whole batches, so the loader runs with
``batch_size=None`` and the main process only receives ready :class:`Batch` es.

Randomness. The shuffle buffer of stream ``s`` on rank ``r`` is seeded from ``(seed, epoch, r,
s)``; the augmentation of global batch ``i`` of rank ``r`` uses a ``torch.Generator`` seeded from
``(seed, epoch, r, i)``. The samples and their views therefore depend only on (seed, epoch,
world size, number of workers, global batch) and not on timing. ``start_step=k`` regenerates the
stream up to batch ``k`` without decoding (reading the skipped samples' bytes again) and then
continues exactly as an uninterrupted epoch would, as long as no sample before ``k`` was skipped
as bad.

Bad data. An image that does not decode, a labelled sample without a valid ``cls``, and samples
missing from a truncated or unreadable shard (the index says how many there should be) are
skipped, counted in :attr:`Batch.skipped` of the batch being assembled and logged (rate-limited).
In training, the stream then takes the next sample; when its segments run out it reads them again
in a new order (bad samples are counted on the first pass only), so every rank still yields its
exact number of batches; a whole pass without one usable sample is a DataError. In evaluation a
bad sample becomes a padding row (``mask`` False). An ``http(s)://`` shard that still fails after
its retries (:mod:`contrastive.data.remote`) loses its remaining samples the same way, unless the
source's :class:`HttpPolicy` says ``stop``: then its :class:`RemoteError` ends the run. Stopping
a run when too many samples are skipped is the training loop's job: it sums ``Batch.skipped``
and calls :func:`contrastive.data.check_skipped`.
"""

from __future__ import annotations

import io
import logging
import os
import random
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import IO, Any, TypeVar

import attrs
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from contrastive.blame import plugin_failure
from contrastive.data.decode import Decoder, decode, resolve_decoder
from contrastive.data.plan import (
    Segment,
    eval_batches_per_rank,
    eval_plan,
    stream_batches,
    stream_plan,
    train_plan,
)
from contrastive.data.remote import HttpPolicy, HttpStream, RemoteError, is_http
from contrastive.data.seeding import mix, rng, shuffled
from contrastive.data.skips import SkipLog
from contrastive.data.tario import Group, iter_groups, open_tar
from contrastive.distributed import local_batch_size
from contrastive.errors import DataError, IndivisibleBatchError
from contrastive.interfaces import Augmentation, Batch

log = logging.getLogger(__name__)

T = TypeVar("T")


@attrs.frozen
class Lost:
    """Samples a segment should have held but that could not be read.

    Attributes:
        count: How many.
        where: The shard URL.
        reason: Why (the error, or "shard ended early").
    """

    count: int
    where: str
    reason: str


def is_local(url: str) -> bool:
    """Whether ``url`` is a plain local path (not ``pipe:``, ``http://`` etc.)."""
    return not url.startswith("pipe:") and "://" not in url


def open_shard(url: str, http: HttpPolicy | None = None) -> tuple[IO[bytes], bool]:
    """Open a shard: local paths directly (seekable), ``http(s)://`` URLs with
    :class:`contrastive.data.remote.HttpStream` (``http``: its timeout and retries), anything else
    (``pipe:``, ``gs://``, ...) through ``webdataset.gopen``.

    Raises:
        DataError: A local path that exists but is no regular file (a FIFO would block forever).
    """
    if is_local(url):
        if os.path.exists(url) and not os.path.isfile(url):
            raise DataError(f"{url} is not a regular file")
        return open(url, "rb"), True
    if is_http(url):
        return io.BufferedReader(HttpStream(url, http or HttpPolicy()), buffer_size=1 << 16), False
    from webdataset.gopen import gopen

    stream: IO[bytes] = gopen(url, "rb")
    return stream, False


def read_segments(
    urls: Sequence[str], segments: Sequence[Segment], http: HttpPolicy | None = None
) -> Iterator[Group | Lost]:
    """The samples of ``segments`` in order, with a :class:`Lost` for every shortfall.

    Raises:
        RemoteError: An HTTP(S) shard could not be read and ``http.stop`` is set.
    """
    for segment in segments:
        url = urls[segment.shard]
        got, reason = 0, "shard ended early (fewer samples than its index says)"
        try:
            handle, seekable = open_shard(url, http)
            with handle, open_tar(handle, seekable=seekable) as tar:
                for group in iter_groups(tar, skip=segment.start):
                    if got >= segment.count:
                        break
                    got += 1
                    yield group
        except Exception as exc:  # a broken shard must not stop the run; it is counted instead
            if isinstance(exc, RemoteError) and http is not None and http.stop:
                raise
            reason = f"{type(exc).__name__}: {exc}"
        if got < segment.count:
            yield Lost(segment.count - got, url, reason)


def shuffle_buffer(items: Iterator[T | Lost], size: int, rand: random.Random) -> Iterator[T | Lost]:
    """Shuffle a stream through a buffer of ``size`` items (:class:`Lost` markers pass straight on)."""
    buffer: list[T] = []
    for item in items:
        if isinstance(item, Lost) or size <= 1:
            yield item
            continue
        buffer.append(item)
        if len(buffer) >= size:
            pick = rand.randrange(len(buffer))
            buffer[pick], buffer[-1] = buffer[-1], buffer[pick]
            yield buffer.pop()
    rand.shuffle(buffer)
    yield from buffer


@attrs.frozen
class ReadConfig:
    """What every stream of a source needs (picklable: sent to data-loader workers).

    Attributes:
        urls: Shard URLs.
        num_classes: Classes of a labelled source; 0 exposes no label (all ``-1``).
        shuffle_buffer: Samples in the shuffle buffer (training only; 0 or 1: no shuffle).
        decoder: Image decoder.
        http: How ``http(s)://`` shards are read (timeout, retries, skip or stop).
    """

    urls: tuple[str, ...]
    num_classes: int
    shuffle_buffer: int
    decoder: Decoder
    http: HttpPolicy = HttpPolicy()


@attrs.frozen
class Job:
    """What one stream does in one call.

    Attributes:
        config: The source's read configuration.
        augmentation: Its ``per_sample`` makes the views.
        segments: The samples the stream reads.
        batches: Global batch indices (on this rank) the stream yields, in order.
        skip_batches: Batches of the stream to regenerate without yielding (resumption).
        batch: Samples per batch.
        seeds: ``(seed, epoch, rank, stream)`` for training; ``("eval", rank, stream)`` for evaluation.
    """

    config: ReadConfig
    augmentation: Augmentation
    segments: tuple[Segment, ...]
    batches: tuple[int, ...]
    skip_batches: int
    batch: int
    seeds: tuple[Any, ...]


def _sample(group: Group, job: Job, draft: int) -> tuple[torch.Tensor, int]:
    """Read the label and decode one sample; raises ValueError (or the decoder's error) when bad.

    Only this (reading and decoding) may fail for a bad sample: the augmentation runs outside it
    (:func:`_augment`), so a plugin's exception is never counted as a skipped sample.

    Args:
        group: The sample's files.
        job: The stream's job.
        draft: Smallest side a JPEG draft may reduce to (the augmentation's view size).

    Returns:
        ``uint8 [3, H, W]`` image and the label (``-1`` when not exposed).
    """
    label = -1
    if job.config.num_classes:
        found = group.label()
        if found is None or not 0 <= found < job.config.num_classes:
            raise ValueError(f"no valid cls (got {group.data.get('cls')!r})")
        label = found
    image = decode(group.data[group.image_key], job.config.decoder, draft)
    return image, label


def _augment(job: Job, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The augmentation's ``per_sample`` views ``uint8 [V, 3, S, S]`` of ``image`` ``uint8 [3, H, W]``.

    Raises:
        PluginCodeError: The augmentation raised (a bug in its plugin, never a bad sample).
    """
    try:
        return job.augmentation.per_sample(image, generator)
    except Exception as exc:
        raise plugin_failure(job.augmentation, "per_sample", exc) from exc


def _view_size(job: Job) -> int:
    """The augmentation's view size (JPEG draft bound), read once per stream, outside the sample try."""
    try:
        return int(job.augmentation.size)
    except Exception as exc:
        raise plugin_failure(job.augmentation, "size", exc) from exc


def train_stream(job: Job) -> Iterator[tuple[Group | Lost, bool]]:
    """The stream's samples, endlessly: its segments, then again in new orders.

    Yields:
        ``(sample or Lost, first_pass)``; :class:`Lost` only in the first pass.

    Raises:
        DataError: A whole pass read no sample.
    """
    cycle = 0
    while True:
        segments = list(job.segments) if cycle == 0 else shuffled(job.segments, "cycle", *job.seeds, cycle)
        rand = rng("buffer", *job.seeds, cycle)
        good = 0
        for item in shuffle_buffer(
            read_segments(job.config.urls, segments, job.config.http), job.config.shuffle_buffer, rand
        ):
            if isinstance(item, Lost):
                if cycle == 0:
                    yield item, True
                continue
            good += 1
            yield item, cycle == 0
        if good == 0:
            raise DataError(f"no readable sample in the shards this data-loader worker reads ({_names(job)})")
        cycle += 1


def _names(job: Job) -> str:
    return ", ".join(sorted({job.config.urls[s.shard] for s in job.segments})[:5])


def run_train(job: Job) -> Iterator[Batch]:
    """Yield the stream's training batches (see the module docstring).

    Raises:
        DataError: A whole pass over the stream's samples gave no usable one.
    """
    seed, epoch, rank, _ = job.seeds
    stream = train_stream(job)
    skips = SkipLog(log)
    patience = sum(s.count for s in job.segments) + 1
    for _ in range(job.skip_batches * job.batch):
        item, _first = next(stream)
        while isinstance(item, Lost):
            item, _first = next(stream)
    failures = 0
    draft = _view_size(job)
    for index in job.batches:
        generator = torch.Generator().manual_seed(mix("augment", seed, epoch, rank, index))
        views: list[torch.Tensor] = []
        labels: list[int] = []
        skipped = 0
        while len(views) < job.batch:
            item, first = next(stream)
            if isinstance(item, Lost):
                skipped += item.count
                skips.skip(item.where, item.reason, item.count)
                continue
            try:
                image, label = _sample(item, job, draft)
            except Exception as exc:  # undecodable: skip (counted on the first pass only)
                failures += 1
                if failures > patience:
                    raise DataError(
                        f"no usable sample in a whole pass over the shards {_names(job)}"
                    ) from exc
                if first:
                    skipped += 1
                    skips.skip(item.key, f"{type(exc).__name__}: {exc}")
                continue
            failures = 0
            views.append(_augment(job, image, generator))
            labels.append(label)
        yield Batch(
            images=torch.stack(views),
            labels=torch.tensor(labels, dtype=torch.int64),
            mask=torch.ones(job.batch, dtype=torch.bool),
            skipped=skipped,
        )


def _eval_rows(job: Job, skips: SkipLog) -> Iterator[tuple[torch.Tensor | None, int, int]]:
    """``(views or None, label, skipped)`` per row: one per planned sample, bad ones as None."""
    generator = torch.Generator().manual_seed(mix(*job.seeds))
    draft = _view_size(job)
    for item in read_segments(job.config.urls, job.segments, job.config.http):
        if isinstance(item, Lost):
            skips.skip(item.where, item.reason, item.count)
            for _ in range(item.count):
                yield None, -1, 1
            continue
        try:
            image, label = _sample(item, job, draft)
        except Exception as exc:  # undecodable: a masked row
            skips.skip(item.key, f"{type(exc).__name__}: {exc}")
            yield None, -1, 1
            continue
        yield _augment(job, image, generator), label, 0


def run_eval(job: Job) -> Iterator[Batch]:
    """Yield the stream's evaluation batches: its samples in order, then padding (masked)."""
    aug = job.augmentation
    blank = torch.zeros(aug.num_views, 3, aug.size, aug.size, dtype=torch.uint8)
    rows = _eval_rows(job, SkipLog(log))
    for _ in job.batches:
        views: list[torch.Tensor] = []
        labels: list[int] = []
        mask: list[bool] = []
        skipped = 0
        for row, label, bad in rows:
            views.append(blank if row is None else row)
            labels.append(label)
            mask.append(row is not None)
            skipped += bad
            if len(views) == job.batch:
                break
        padding = job.batch - len(views)
        yield Batch(
            images=torch.stack(views + [blank] * padding),
            labels=torch.tensor(labels + [-1] * padding, dtype=torch.int64),
            mask=torch.tensor(mask + [False] * padding, dtype=torch.bool),
            skipped=skipped,
        )


class StreamDataset(IterableDataset[Batch]):
    """One job per data-loader worker (worker ``j`` runs ``jobs[j]``)."""

    def __init__(self, jobs: Sequence[Job], run: Callable[[Job], Iterator[Batch]]) -> None:
        self.jobs = tuple(jobs)
        self.run = run

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        return self.run(self.jobs[0 if info is None else info.id])


def load(jobs: Sequence[Job], run: Callable[[Job], Iterator[Batch]], num_workers: int) -> Iterator[Batch]:
    """Run the jobs in ``num_workers`` data-loader workers (in this process when 0)."""
    if num_workers == 0:
        yield from run(jobs[0])
        return
    loader = DataLoader(
        StreamDataset(jobs, run),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_leave_signals_to_the_trainer,
    )
    yield from loader


def _leave_signals_to_the_trainer(worker_id: int) -> None:
    """A data-loader worker leaves its trainer's process group: Ctrl-C in a terminal (or torchrun
    stopping a rank's process group) then reaches the trainer alone, which stops its workers as it
    unwinds; a worker killed by the same signal first would make the trainer report a crash instead
    of the interruption. A worker whose trainer is gone exits by itself (PyTorch's watchdog), and
    a SIGTERM sent to the worker itself still ends it (Python's multiprocessing relies on that at
    exit). A batch that was being handed over when the trainer stopped ends the hand-over thread
    (multiprocessing's resource sharer, which reports through ``sys.excepthook``) with EOFError or
    a broken pipe: the worker keeps that quiet instead of printing a traceback after the trainer's
    one-line message."""
    os.setpgid(0, 0)
    sys.excepthook = _quiet_when_the_trainer_is_gone
    threading.excepthook = _quiet_thread_when_the_trainer_is_gone


def _trainer_gone(kind: type[BaseException] | None) -> bool:
    """Whether an exception of ``kind`` is what a hand-over to a vanished trainer raises."""
    return kind is not None and issubclass(kind, EOFError | ConnectionError)


def _quiet_when_the_trainer_is_gone(
    kind: type[BaseException], error: BaseException, trace: TracebackType | None
) -> None:
    if not _trainer_gone(kind):
        sys.__excepthook__(kind, error, trace)


def _quiet_thread_when_the_trainer_is_gone(args: threading.ExceptHookArgs) -> None:
    if not _trainer_gone(args.exc_type):
        threading.__excepthook__(args)


class ShardDataSource:
    """One split of a shard set, streamed to every rank (satisfies ``DataSource``).

    Attributes:
        urls: Shard URLs.
        counts: Samples per shard (from the index).
        classes: Class names (empty when labels are not exposed).
        num_samples: Samples in the split.
        num_classes: Classes (0 when labels are not exposed).
        shuffle_buffer: Training shuffle buffer size.
        decoder: Image decoder (``torchcodec`` falls back to ``torchvision`` where it cannot be loaded).
        http: How ``http(s)://`` shards are read.
    """

    def __init__(
        self,
        *,
        urls: Sequence[str],
        counts: Sequence[int],
        classes: Sequence[str],
        labelled: bool = True,
        shuffle_buffer: int = 1000,
        decoder: Decoder = "torchcodec",
        build: Mapping[str, Any] | None = None,
        http: HttpPolicy | None = None,
    ) -> None:
        if not urls or len(urls) != len(counts):
            raise DataError(
                f"a data source needs shards with counts (got {len(urls)} URLs, {len(counts)} counts)"
            )
        self.urls = tuple(urls)
        self.counts = tuple(counts)
        self.classes = tuple(classes) if labelled else ()
        self.num_samples = sum(self.counts)
        self.num_classes = len(self.classes)
        self.shuffle_buffer = shuffle_buffer
        self.decoder: Decoder = resolve_decoder(decoder)
        self.build = dict(build) if build else None
        self.http = http or HttpPolicy()
        if self.num_samples == 0:
            raise DataError(f"the shards hold no samples ({self.urls[0]} ...)")

    def __repr__(self) -> str:
        counts = f"{len(self.urls)} shards, {self.num_samples} samples, {self.num_classes} classes"
        return f"ShardDataSource({counts})"

    def _config(self) -> ReadConfig:
        return ReadConfig(self.urls, self.num_classes, self.shuffle_buffer, self.decoder, self.http)

    def steps_per_epoch(self, global_batch_size: int) -> int:
        """Batches every rank yields per training epoch: ``num_samples // global_batch_size``."""
        if global_batch_size < 1:
            raise DataError(f"the global batch size must be positive, got {global_batch_size}")
        return self.num_samples // global_batch_size

    def train_batches(
        self,
        *,
        augmentation: Augmentation,
        global_batch_size: int,
        rank: int,
        world_size: int,
        epoch: int,
        seed: int,
        num_workers: int,
        start_step: int = 0,
    ) -> Iterator[Batch]:
        """Shuffled training batches of ``global_batch_size // world_size`` samples.

        Yields exactly ``steps_per_epoch(global_batch_size) - start_step`` batches on every rank,
        each with ``images`` ``uint8 [B, V, 3, S, S]``, ``labels`` ``int64 [B]`` and an all-True
        ``mask``.

        Raises:
            DataError: The global batch does not split evenly across ranks, the split holds less
                than one global batch, ``start_step`` is out of range, or there are fewer shards
                than ``world_size * max(1, num_workers)`` readers.
        """
        steps = self.check_training(global_batch_size, world_size, num_workers, rank=rank)
        if not 0 <= start_step <= steps:
            raise DataError(f"start_step {start_step} is outside the epoch's {steps} steps")
        streams = max(1, num_workers)
        batch = local_batch_size(global_batch_size, world_size)
        plan = train_plan(
            self.counts,
            seed=seed,
            epoch=epoch,
            world_size=world_size,
            streams=streams,
            steps=steps,
            batch=batch,
        )[rank]
        return self._train_load(
            plan, augmentation, steps, start_step, batch, (seed, epoch, rank), num_workers
        )

    def stream_batches(
        self,
        *,
        augmentation: Augmentation,
        global_batch_size: int,
        rank: int,
        world_size: int,
        epoch: int,
        begin: int,
        end: int,
        seed: int,
        num_workers: int,
        start_step: int = 0,
    ) -> Iterator[Batch]:
        """Steps ``begin`` to ``end`` of the endless training stream (``contrastive.data.plan.stream_plan``).

        The stream reads the epochs' shuffled orders one after another, so a batch may span two of
        them; ``epoch`` seeds this piece's shuffle buffers and augmentations. Yields exactly
        ``end - begin - start_step`` batches on every rank (``start_step`` counts from ``begin``).

        Raises:
            DataError: As :meth:`train_batches`, or the step range is empty or out of order.
        """
        self.check_training(global_batch_size, world_size, num_workers, rank=rank)
        steps = end - begin
        if begin < 0 or steps < 0 or not 0 <= start_step <= steps:
            raise DataError(f"steps {begin}..{end} from {start_step} are not a range of the training stream")
        streams = max(1, num_workers)
        batch = local_batch_size(global_batch_size, world_size)
        plan = stream_plan(
            self.counts, seed=seed, begin=begin, end=end, world_size=world_size, streams=streams, batch=batch
        )[rank]
        return self._train_load(
            plan, augmentation, steps, start_step, batch, (seed, epoch, rank), num_workers
        )

    def _train_load(
        self,
        plan: Sequence[Sequence[Segment]],
        augmentation: Augmentation,
        steps: int,
        start_step: int,
        batch: int,
        seeds: tuple[int, int, int],
        num_workers: int,
    ) -> Iterator[Batch]:
        """The streams' jobs of one rank's ``plan`` (``steps`` batches from ``start_step``), loaded."""
        streams = len(plan)
        jobs = []
        for worker in range(streams):
            stream = (start_step + worker) % streams
            batches = stream_batches(steps, streams, stream)
            skip = len(range(stream, start_step, streams))
            jobs.append(
                Job(
                    config=self._config(),
                    augmentation=augmentation,
                    segments=tuple(plan[stream]),
                    batches=tuple(batches[skip:]),
                    skip_batches=skip,
                    batch=batch,
                    seeds=(*seeds, stream),
                )
            )
        if start_step == steps:
            return iter(())
        return load(jobs, run_train, num_workers)

    def check_training(
        self, global_batch_size: int, world_size: int, num_workers: int, *, rank: int = 0
    ) -> int:
        """What :meth:`train_batches` checks, without reading a shard (run before the first stage starts).

        Returns:
            The steps per epoch.

        Raises:
            DataError: The global batch does not split evenly across ranks, the split holds less
                than one global batch, or there are fewer shards than readers.
        """
        _check_ranks(rank, world_size, num_workers)
        try:
            local_batch_size(global_batch_size, world_size)
        except IndivisibleBatchError as exc:
            raise DataError(f"the global batch size {exc}") from None
        steps = self.steps_per_epoch(global_batch_size)
        if steps == 0:
            raise DataError(
                f"the split has {self.num_samples} samples, fewer than one global batch ({global_batch_size})"
            )
        self._check_readers(world_size, max(1, num_workers))
        return steps

    def eval_batches(
        self,
        *,
        augmentation: Augmentation,
        batch_size: int,
        rank: int,
        world_size: int,
        num_workers: int,
    ) -> Iterator[Batch]:
        """Every sample of the split exactly once across all ranks, in index order.

        Every rank yields ``ceil(ceil(num_samples / world_size) / batch_size)`` batches of
        ``batch_size`` rows; padding rows and bad samples have ``mask`` False and label ``-1``.
        """
        _check_ranks(rank, world_size, num_workers)
        if batch_size < 1:
            raise DataError(f"the evaluation batch size must be positive, got {batch_size}")
        streams = max(1, num_workers)
        plan = eval_plan(self.counts, world_size=world_size, streams=streams, batch=batch_size)[rank]
        total = eval_batches_per_rank(self.num_samples, world_size, batch_size)
        jobs = [
            Job(
                config=attrs.evolve(self._config(), shuffle_buffer=0),
                augmentation=augmentation,
                segments=tuple(plan[stream]),
                batches=tuple(stream_batches(total, streams, stream)),
                skip_batches=0,
                batch=batch_size,
                seeds=("eval", rank, stream),
            )
            for stream in range(streams)
        ]
        return load(jobs, run_eval, min(num_workers, total))

    def _check_readers(self, world_size: int, streams: int) -> None:
        readers = world_size * streams
        if len(self.urls) >= readers:
            return
        fewer = len(self.urls) // world_size
        advice = f"use at most {fewer} data-loader workers per rank, or " if fewer >= 1 else ""
        raise DataError(
            f"{len(self.urls)} shards cannot feed {world_size} ranks x {streams} data-loader workers "
            f"({readers} readers, each needs its own shards): {advice}write more, smaller shards "
            f"({self._rebuild_command()} with N <= {max(1, self.num_samples // readers)})"
        )

    def _rebuild_command(self) -> str:
        """The command that writes this set again with at most N samples per shard."""
        kind = (self.build or {}).get("kind")
        if kind == "subset":
            source = self.build.get("source", "SRC") if self.build else "SRC"
            return (
                f"`contrastive shards subset {source} OUT ... --maxcount N`: the set is a subset of {source}"
            )
        if kind == "imagefolder":
            return "`contrastive shards build imagefolder SRC OUT --maxcount N`"
        return "`contrastive shards build ... --maxcount N`"


def _check_ranks(rank: int, world_size: int, num_workers: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is not in a world of {world_size}")
    if num_workers < 0:
        raise DataError(f"num_workers must be >= 0, got {num_workers}")
