"""The stage option ``steps``: SimCLR's step count over a stream that crosses epoch boundaries.

The official rule (``simclr_tf2/model.py`` ``get_train_steps``) is ``num_examples * epochs //
batch + 1`` steps of a ``tf.data`` pipeline that repeats the shuffled data set endlessly; its
warmup (``WarmUpAndCosineDecay``) is ``int(round(warmup_epochs * num_examples // batch))`` steps.
The ImageNet figures are in ``tests/test_recipes.py``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from contrastive.checkpoint import list_checkpoints
from contrastive.data.plan import stream_batches, stream_plan, train_plan
from contrastive.errors import RunError
from contrastive.registry import load_registry
from contrastive.runner import run
from contrastive.spec.loader import load
from contrastive.steps import StepCount
from tests.tiny_specs import load_state_dict, read_jsonl, tiny_pretrain_spec, write_spec

pytest_plugins = ["tests.stage_fixtures"]  # its fixtures: digits_data, digits_env


def _official_steps(num_examples: int, epochs: int, batch: int) -> int:
    """``get_train_steps`` with ``train_steps`` unset."""
    return num_examples * epochs // batch + 1


@pytest.mark.parametrize(("n", "g", "e"), [(13, 4, 3), (12, 4, 3), (50, 16, 2), (1297, 256, 50), (7, 7, 1)])
def test_official_epochs_partition_the_official_step_count(n: int, g: int, e: int) -> None:
    count = StepCount("official", n, g, e)
    assert count.total == _official_steps(n, e, g)
    starts = [count.epoch_start(epoch) for epoch in range(count.passes + 1)]
    assert starts[0] == 0 and starts[-1] == count.total and starts == sorted(starts)
    for step in range(count.total):
        epoch = count.epoch_of(step)
        assert starts[epoch] <= step < starts[epoch + 1]
        # Epoch e holds the steps whose last sample lies in epoch e of the stream: a batch that
        # crosses a boundary opens the later epoch, and the extra official step opens epoch E.
        assert epoch == ((step + 1) * g - 1) // n
    assert count.epoch_start(count.epochs) == n * e // g  # the last step alone in epoch E


def test_per_epoch_rule_is_the_old_count() -> None:
    count = StepCount("per_epoch", 1297, 256, 50)
    assert (count.per_epoch, count.total, count.passes) == (5, 250, 50)
    assert [count.epoch_of(s) for s in (0, 4, 5, 249)] == [0, 0, 1, 49]
    assert count.steps_for(2.5) == round(2.5 * 5)


def test_warmup_counts_as_the_official_schedule() -> None:
    # WarmUpAndCosineDecay: int(round(warmup_epochs * num_examples // batch)), i.e. floor.
    official = StepCount("official", 1000, 64, 10)
    assert official.steps_for(2.9) == int(2.9 * 1000 // 64) == 45
    schedule = load_registry().build(
        "schedules",
        "warmup_cosine",
        base_lr=0.1,
        global_batch_size=64,
        steps_per_epoch=official.per_epoch,
        epochs=10,
        steps=official,
        warmup_fraction=0.29,
    )
    assert (schedule.warmup_steps, schedule.total_steps) == (45, 1000 * 10 // 64 + 1)
    per_epoch = load_registry().build(
        "schedules",
        "warmup_cosine",
        base_lr=0.1,
        global_batch_size=64,
        steps_per_epoch=15,
        epochs=10,
        warmup_fraction=0.29,
    )
    assert (per_epoch.warmup_steps, per_epoch.total_steps) == (round(2.9 * 15), 150)


@pytest.mark.parametrize(("world", "streams", "batch"), [(1, 1, 4), (2, 2, 2), (2, 3, 3), (3, 1, 5)])
def test_the_stream_reads_every_sample_once_per_epoch_and_every_rank_the_same_steps(
    world: int, streams: int, batch: int
) -> None:
    counts = [5, 4, 4, 7]  # 20 samples in uneven shards
    n, g, epochs = sum(counts), world * batch, 3
    count = StepCount("official", n, g, epochs)
    read: list[tuple[int, int]] = []  # (shard, sample) in stream order over all epochs of the loop
    for epoch in range(count.passes):
        begin, end = count.epoch_start(epoch), count.epoch_start(epoch + 1)
        plan = stream_plan(
            counts, seed=3, begin=begin, end=end, world_size=world, streams=streams, batch=batch
        )
        for rank in plan:  # every rank: exactly the batches of these steps, stream by stream
            assert [sum(s.count for s in segs) for segs in rank] == [
                len(stream_batches(end - begin, streams, stream)) * batch for stream in range(streams)
            ]
        for rank in plan:
            for segments in rank:
                read.extend((s.shard, i) for s in segments for i in range(s.start, s.stop))
    assert len(read) == count.total * g
    # The first E * N positions are E whole epochs: every sample E times; the rest opens epoch E.
    whole = Counter(read[: epochs * n])
    assert set(whole.values()) == {epochs} and len(whole) == n
    assert all(
        read[i] != read[j] for i in range(len(read)) for j in range(i + 1, len(read)) if i // n == j // n
    )


def test_the_stream_equals_the_per_epoch_plan_when_the_batch_divides_the_data() -> None:
    counts = [6, 6, 4]
    for epoch in range(2):
        old = train_plan(counts, seed=1, epoch=epoch, world_size=2, streams=2, steps=2, batch=4)
        new = stream_plan(
            counts, seed=1, begin=2 * epoch, end=2 * epoch + 2, world_size=2, streams=2, batch=4
        )
        assert old == new


def _subset_spec(steps: str, **kwargs: object) -> str:
    text = tiny_pretrain_spec(  # type: ignore[arg-type]
        dataset='name = "digits"\nsplit = "train"\nlabels_per_class = 5\nlabelled = false', **kwargs
    )
    return text.replace("[pretrain.dataset]", f'steps = "{steps}"\n\n[pretrain.dataset]')


def test_a_stage_trains_the_official_count_and_resumes_exactly_across_an_epoch_boundary(
    digits_env: Path, tmp_path: Path
) -> None:
    # 50 images, batch 16: officially 50 * 2 // 16 + 1 = 7 steps (epochs of steps 0-2, 3-5, 6);
    # the per-epoch rule runs 3 + 3 and leaves 2 images of each epoch out.
    text = _subset_spec("official", batch_size=16, epochs=2, max_steps=0, checkpoint_every=1)
    text = text.replace("checkpoint_every = 1", "checkpoint_every = 1\nkeep_checkpoints = 10")
    spec = write_spec(tmp_path / "official.toml", text)
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    outcome = run(load(spec), run_dir=whole)
    assert outcome.results["pretrain"]["steps"] == 7
    lines = read_jsonl(whole / "pretrain" / "metrics.jsonl")
    assert [r["step"] for r in lines if "loss" in r] == list(range(1, 8))
    assert [r["epoch"] for r in lines if "loss" in r] == [0, 0, 0, 1, 1, 1, 2]
    lrs = [r["lr"] for r in lines if "loss" in r]
    assert lrs[-1] > 0.0  # the cosine reaches 0 at step 7, after the last update (6 steps: at the 7th)
    run(load(spec), run_dir=crashed)
    stage = crashed / "pretrain"
    for step, path in list_checkpoints(stage / "checkpoints"):
        if step > 2:  # as if it had died inside epoch 0, before the batch that crosses into epoch 1
            path.unlink()
    for name in ("final.pt", "results.json"):
        (stage / name).unlink()
    run(load(spec), run_dir=crashed)
    ours, theirs = load_state_dict(stage / "final.pt"), load_state_dict(whole / "pretrain" / "final.pt")
    for key in ours:
        assert ours[key].equal(theirs[key]), key
    per_epoch = run(
        load(
            write_spec(tmp_path / "old.toml", _subset_spec("per_epoch", batch_size=16, epochs=2, max_steps=0))
        ),
        run_dir=tmp_path / "old",
    )
    assert per_epoch.results["pretrain"]["steps"] == 6


def test_the_official_rule_needs_a_data_set_that_streams() -> None:
    from contrastive.engine import StagePlan, total_steps

    class Counted:
        num_samples, num_classes = 10, 0

        def steps_per_epoch(self, global_batch_size: int) -> int:
            return self.num_samples // global_batch_size

    plan = StagePlan(
        name="pretrain",
        model=None,  # type: ignore[arg-type]
        step=None,  # type: ignore[arg-type]
        optimizer=None,  # type: ignore[arg-type]
        schedule=None,  # type: ignore[arg-type]
        data=Counted(),  # type: ignore[arg-type]
        augmentation=None,  # type: ignore[arg-type]
        epochs=2,
        global_batch_size=4,
        steps="official",
    )
    with pytest.raises(RunError, match=r"pretrain\.steps: 'official' reads the epochs as one stream"):
        total_steps(plan)
    plan.steps = "per_epoch"
    assert total_steps(plan) == 4
