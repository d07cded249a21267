"""The shard data source: rank/worker splits, exact batch counts, resumption, evaluation, bad data."""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from contrastive.data import check_skipped
from contrastive.data.index import read_index
from contrastive.data.pipeline import ShardDataSource
from contrastive.data.plan import Segment, eval_batches_per_rank, eval_plan, stream_batches, train_plan
from contrastive.data.scan import index_directory
from contrastive.data.shards import OutSample, write_shard
from contrastive.data.sources import webdataset_source
from contrastive.errors import DataError
from contrastive.interfaces import Batch, DataSource
from contrastive.registry import load_registry

UNEVEN = (1, 3, 10, 2, 7, 13, 4, 8)  # 48 samples in 8 shards of very different sizes


class TinyAugmentation:
    """Top-left 4x4 crop, two views, the first flipped at random (uses the generator)."""

    num_views = 2
    size = 4

    def per_sample(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        crop = image[:, :4, :4]
        first = crop.flip(-1) if bool(torch.rand((), generator=generator) < 0.5) else crop
        return torch.stack([first, crop]).contiguous()

    def on_device(self, views: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return views.float() / 255


def encode(sample_id: int, fmt: str) -> bytes:
    """A 16x16 image whose colour encodes ``sample_id`` (exactly for PNG)."""
    buffer = io.BytesIO()
    color = (sample_id % 256, (7 * sample_id) % 256, 200)
    Image.new("RGB", (16, 16), color).save(buffer, format=fmt)
    return buffer.getvalue()


def write_set(
    directory: Path, sizes: Sequence[int], fmt: str = "JPEG", bad: dict[int, bytes] | None = None
) -> None:
    """Shards of the given sizes; sample ``i`` has class ``i`` (its label identifies it)."""
    directory.mkdir(parents=True)
    sample_id = 0
    for number, size in enumerate(sizes):
        samples = []
        for _ in range(size):
            data = (bad or {}).get(sample_id, encode(sample_id, fmt))
            samples.append(
                OutSample(
                    image=data,
                    image_size=len(data),
                    source_id=str(sample_id),
                    label=sample_id,
                    meta={"name": f"img_{sample_id}.{fmt.lower()}", "class": f"c{sample_id:03d}"},
                    image_ext="png" if fmt == "PNG" else "jpg",
                )
            )
            sample_id += 1
        write_shard(directory / f"part-{number:03d}.tar", samples, first_key=sample_id - size)
    index_directory(directory)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory: pytest.TempPathFactory) -> ShardDataSource:
    directory = tmp_path_factory.mktemp("uneven") / "shards"
    write_set(directory, UNEVEN)
    return webdataset_source(str(directory), shuffle_buffer=4)


def train(source: ShardDataSource, **kwargs: int) -> list[Batch]:
    args = {"global_batch_size": 8, "rank": 0, "world_size": 1, "epoch": 0, "seed": 0, "num_workers": 0}
    args.update(kwargs)
    return list(source.train_batches(augmentation=TinyAugmentation(), **args))


def labels(batches: Sequence[Batch]) -> list[int]:
    return [int(x) for b in batches for x in b.labels[b.mask]]


def test_source_reads_the_index(uneven: ShardDataSource) -> None:
    assert isinstance(uneven, DataSource)
    assert uneven.num_samples == 48
    assert uneven.num_classes == 48
    assert uneven.steps_per_epoch(8) == 6
    assert uneven.steps_per_epoch(20) == 2


@pytest.mark.parametrize("global_batch", [8, 16])
def test_two_ranks_two_workers_partition_the_set(uneven: ShardDataSource, global_batch: int) -> None:
    per_rank = [
        train(uneven, global_batch_size=global_batch, rank=r, world_size=2, num_workers=2) for r in (0, 1)
    ]
    steps = 48 // global_batch
    for batches in per_rank:
        assert len(batches) == steps
        for batch in batches:
            assert batch.images.shape == (global_batch // 2, 2, 3, 4, 4)
            assert batch.images.dtype == torch.uint8
            assert batch.labels.dtype == torch.int64
            assert bool(batch.mask.all()) and batch.skipped == 0
    seen = [labels(per_rank[0]), labels(per_rank[1])]
    assert not set(seen[0]) & set(seen[1])  # disjoint across ranks
    assert sorted(seen[0] + seen[1]) == list(range(48))  # every sample exactly once


def test_remainder_is_dropped_without_duplicates(uneven: ShardDataSource) -> None:
    per_rank = [train(uneven, global_batch_size=10, rank=r, world_size=2, num_workers=2) for r in (0, 1)]
    assert [len(b) for b in per_rank] == [4, 4]
    seen = labels(per_rank[0]) + labels(per_rank[1])
    assert len(seen) == len(set(seen)) == 40


def test_order_depends_only_on_seed_and_epoch(uneven: ShardDataSource) -> None:
    first = train(uneven, num_workers=2)
    again = train(uneven, num_workers=2)
    assert labels(first) == labels(again)
    assert all(torch.equal(a.images, b.images) for a, b in zip(first, again, strict=True))
    other_epoch = labels(train(uneven, num_workers=2, epoch=1))
    assert other_epoch != labels(first) and sorted(other_epoch) == sorted(labels(first))
    assert labels(train(uneven, num_workers=2, seed=1)) != labels(first)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_start_step_resumes_the_same_epoch(uneven: ShardDataSource, num_workers: int) -> None:
    full = train(uneven, global_batch_size=4, num_workers=num_workers, epoch=2)
    assert len(full) == 12
    for start in (3, 4, 12):
        resumed = train(uneven, global_batch_size=4, num_workers=num_workers, epoch=2, start_step=start)
        assert len(resumed) == 12 - start
        for a, b in zip(full[start:], resumed, strict=True):
            assert torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)


def test_too_few_shards_is_a_data_error(uneven: ShardDataSource) -> None:
    with pytest.raises(DataError, match=r"8 shards cannot feed 2 ranks x 5 data-loader workers") as error:
        train(uneven, world_size=2, num_workers=5)
    assert "at most 4 data-loader workers" in str(error.value) and "--maxcount" in str(error.value)
    with pytest.raises(DataError, match="the global batch size 9 is not divisible by the 2 ranks"):
        train(uneven, global_batch_size=9, world_size=2)
    with pytest.raises(DataError, match="fewer than one global batch"):
        train(uneven, global_batch_size=64)
    with pytest.raises(DataError, match="start_step"):
        train(uneven, start_step=7)


@pytest.mark.parametrize(("world_size", "batch", "num_workers"), [(2, 5, 2), (3, 4, 1), (1, 48, 0)])
def test_eval_visits_every_sample_once(
    uneven: ShardDataSource, world_size: int, batch: int, num_workers: int
) -> None:
    per_rank = [
        list(
            uneven.eval_batches(
                augmentation=TinyAugmentation(),
                batch_size=batch,
                rank=r,
                world_size=world_size,
                num_workers=num_workers,
            )
        )
        for r in range(world_size)
    ]
    counts = {len(batches) for batches in per_rank}
    assert len(counts) == 1  # the same number of batches on every rank
    seen = [label for batches in per_rank for label in labels(batches)]
    assert sorted(seen) == list(range(48))
    for batches in per_rank:
        for b in batches:
            assert b.images.shape == (batch, 2, 3, 4, 4) and b.mask.shape == (batch,)
            assert bool((b.labels[~b.mask] == -1).all())
            assert int(b.images[~b.mask].sum()) == 0


def test_bad_images_and_truncated_shards_are_skipped_and_counted(tmp_path: Path) -> None:
    directory = tmp_path / "bad"
    write_set(directory, (6,) * 8, bad={14: b"\xff\xd8\xff\xe0 not really a jpeg"})
    shard = directory / "part-005.tar"  # samples 30..35; cut inside the image of sample 32
    data = shard.read_bytes()
    shard.write_bytes(data[: data.index(b"000000032.jpg") + 512 + 40])
    source = webdataset_source(str(directory))
    lost = {14, 32, 33, 34, 35}

    per_rank = [train(source, rank=r, world_size=2, num_workers=2) for r in (0, 1)]
    assert [len(b) for b in per_rank] == [6, 6]  # still the full epoch on every rank
    assert sum(b.skipped for batches in per_rank for b in batches) == len(lost)
    assert not lost & set(labels(per_rank[0]) + labels(per_rank[1]))

    evaluated = [
        list(
            source.eval_batches(
                augmentation=TinyAugmentation(), batch_size=5, rank=r, world_size=2, num_workers=2
            )
        )
        for r in (0, 1)
    ]
    assert sorted(labels(evaluated[0]) + labels(evaluated[1])) == sorted(set(range(48)) - lost)
    assert sum(b.skipped for batches in evaluated for b in batches) == len(lost)

    check_skipped(len(lost), 48, 0.2)
    with pytest.raises(DataError, match="5 of 48 samples"):
        check_skipped(len(lost), 48, 0.05)


def test_a_worker_without_any_usable_sample_stops(tmp_path: Path) -> None:
    directory = tmp_path / "garbage"
    write_set(directory, (3, 3), bad={i: b"garbage" for i in range(6)})
    source = webdataset_source(str(directory))
    with pytest.raises(DataError, match="no usable sample"):
        train(source, global_batch_size=2)


def test_a_shard_with_no_readable_sample_stops_the_worker(tmp_path: Path) -> None:
    directory = tmp_path / "broken"
    write_set(directory, (4, 4))
    for shard in directory.glob("*.tar"):
        shard.write_bytes(b"")
    source = webdataset_source(str(directory))
    with pytest.raises(DataError, match="no readable sample"):
        train(source, global_batch_size=4, world_size=2, rank=1)


def test_decoders_agree_on_lossless_images(tmp_path: Path) -> None:
    write_set(tmp_path / "png", (5, 5), fmt="PNG")

    def images(decoder: str) -> torch.Tensor:
        source = webdataset_source(str(tmp_path / "png"), decoder=decoder)  # type: ignore[arg-type]
        batches = source.eval_batches(
            augmentation=TinyAugmentation(), batch_size=10, rank=0, world_size=1, num_workers=0
        )
        return torch.cat([b.images for b in batches])

    torchvision_images = images("torchvision")
    assert torch.equal(torchvision_images, images("pil"))
    assert [int(v) for v in torchvision_images[:3, 1, 0, 0, 0]] == [0, 1, 2]  # red channel encodes the id


def test_webdataset_component_options(tmp_path: Path) -> None:
    directory = tmp_path / "set"
    write_set(directory, (3, 3, 3))
    registry = load_registry()
    whole = registry.build("datasets", "webdataset", urls=str(directory))
    assert (whole.num_samples, whole.num_classes) == (9, 9)
    part = registry.build("datasets", "webdataset", urls=str(directory / "part-{000..001}.tar"))
    assert part.num_samples == 6
    listed = registry.build(
        "datasets",
        "webdataset",
        urls=[str(directory / "part-002.tar")],
        index=str(directory / "index.json"),
        labelled=False,
        shuffle_buffer=0,
    )
    assert (listed.num_samples, listed.num_classes) == (3, 0)
    batches = list(
        listed.train_batches(
            augmentation=TinyAugmentation(),
            global_batch_size=3,
            rank=0,
            world_size=1,
            epoch=0,
            seed=0,
            num_workers=0,
        )
    )
    assert batches[0].labels.tolist() == [-1, -1, -1]
    with pytest.raises(DataError, match="not in the index"):
        registry.build("datasets", "webdataset", urls=str(directory / "other-000.tar"))
    with pytest.raises(DataError, match="need the index option"):
        registry.build("datasets", "webdataset", urls="pipe:cat " + str(directory / "part-000.tar"))
    piped = registry.build(
        "datasets", "webdataset", urls="pipe:cat " + str(directory / "part-000.tar"), index=str(directory)
    )
    read = piped.eval_batches(
        augmentation=TinyAugmentation(), batch_size=3, rank=0, world_size=1, num_workers=0
    )
    assert labels(list(read)) == [0, 1, 2]


def test_index_records_what_the_pipeline_reads(tmp_path: Path) -> None:
    write_set(tmp_path / "set", (2, 5))
    index = read_index(tmp_path / "set")
    assert [s.count for s in index.shards] == [2, 5]
    assert index.classes == tuple(f"c{i:03d}" for i in range(7))
    names = Counter(json.loads(json.dumps(index.to_json()))["classes"])
    assert len(names) == 7


def positions(segments: Sequence[Segment]) -> list[tuple[int, int]]:
    return [(s.shard, i) for s in segments for i in range(s.start, s.stop)]


@settings(max_examples=150, deadline=None)
@given(
    counts=st.lists(st.integers(0, 30), min_size=1, max_size=12),
    world_size=st.integers(1, 4),
    streams=st.integers(1, 3),
    per_rank=st.integers(1, 6),
    seed=st.integers(0, 3),
)
def test_train_plan_gives_every_stream_its_quota_without_overlap(
    counts: list[int], world_size: int, streams: int, per_rank: int, seed: int
) -> None:
    steps = sum(counts) // (world_size * per_rank)
    plan = train_plan(
        counts, seed=seed, epoch=seed, world_size=world_size, streams=streams, steps=steps, batch=per_rank
    )
    seen = []
    for rank in plan:
        for stream, segments in enumerate(rank):
            assert sum(s.count for s in segments) == len(stream_batches(steps, streams, stream)) * per_rank
            seen += positions(segments)
    assert len(seen) == len(set(seen)) == steps * world_size * per_rank
    assert all(0 <= i < counts[shard] for shard, i in seen)


@settings(max_examples=150, deadline=None)
@given(
    counts=st.lists(st.integers(0, 30), min_size=1, max_size=12).filter(lambda c: sum(c) > 0),
    world_size=st.integers(1, 4),
    streams=st.integers(1, 3),
    batch=st.integers(1, 7),
)
def test_eval_plan_covers_every_sample_once(
    counts: list[int], world_size: int, streams: int, batch: int
) -> None:
    plan = eval_plan(counts, world_size=world_size, streams=streams, batch=batch)
    batches = eval_batches_per_rank(sum(counts), world_size, batch)
    seen = []
    for rank in plan:
        for stream, segments in enumerate(rank):
            assert sum(s.count for s in segments) <= len(stream_batches(batches, streams, stream)) * batch
            seen += positions(segments)
    assert sorted(seen) == [(shard, i) for shard, count in enumerate(counts) for i in range(count)]


def test_a_worker_keeps_quiet_only_about_a_vanished_trainer(capsys: pytest.CaptureFixture[str]) -> None:
    """What multiprocessing's resource sharer reports through sys.excepthook when the trainer
    stopped mid hand-over (EOFError, broken pipe) is dropped; anything else is still printed."""
    from contrastive.data import pipeline

    for quiet in (EOFError(), BrokenPipeError(32, "Broken pipe"), ConnectionResetError()):
        pipeline._quiet_when_the_trainer_is_gone(type(quiet), quiet, None)
    assert capsys.readouterr().err == ""
    pipeline._quiet_when_the_trainer_is_gone(ValueError, ValueError("a real bug"), None)
    assert "ValueError: a real bug" in capsys.readouterr().err
