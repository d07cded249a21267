"""The embedded digits demo set: build, fixed split, first-use cache, and the ``digits`` dataset."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.datasets import load_digits

from contrastive.cli.shards import shards
from contrastive.data.digits import NAME, digits_arrays, ensure_digits, holdout_quota, split_indices
from contrastive.data.index import read_index
from contrastive.registry import load_registry
from tests.test_pipeline import TinyAugmentation, labels
from tests.test_shards import read_set


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    ensure_digits(root)
    return root


def test_split_sizes_and_stratification(root: Path) -> None:
    train, test = read_index(root / NAME / "train"), read_index(root / NAME / "test")
    assert (train.total, test.total) == (1297, 500)
    assert train.classes == test.classes == tuple(str(c) for c in range(10))
    _, targets = digits_arrays()
    raw = load_digits()
    sizes = np.bincount(targets, minlength=10)
    assert list(test.class_counts) == holdout_quota(sizes.tolist(), 500)
    assert all(abs(t - 500 * n / 1797) < 1 for t, n in zip(test.class_counts, sizes, strict=True))
    seen: dict[str, set[int]] = {}
    for split in ("train", "test"):
        samples = read_set(root / NAME / split)
        seen[split] = set()
        for sample in samples[:: 7 if split == "train" else 1]:
            meta = json.loads(sample["json"])
            pixels = np.asarray(Image.open(io.BytesIO(sample["png"])))
            expected = np.rint(raw.images[meta["index"]] * 255 / 16).astype(np.uint8)
            assert pixels.shape == (8, 8) and np.array_equal(pixels, expected)  # lossless
            assert int(sample["cls"]) == targets[meta["index"]]
        seen[split] = {json.loads(s["json"])["index"] for s in samples}
    assert not seen["train"] & seen["test"]
    assert seen["train"] | seen["test"] == set(range(1797))
    assert sorted(seen["test"]) == split_indices(targets.tolist())[1]


def test_build_is_deterministic(root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(shards, ["build", "digits", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "1297 samples in 52 shards, 10 classes" in result.output
    assert "500 samples in 20 shards" in result.output
    for split in ("train", "test"):
        for path in (root / NAME / split).iterdir():
            assert (tmp_path / "cli" / split / path.name).read_bytes() == path.read_bytes()


def test_concurrent_first_use_builds_once(tmp_path: Path) -> None:
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_digits(tmp_path))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [tmp_path / NAME] * 3
    assert [p.name for p in tmp_path.iterdir()] == [NAME]  # no temporary folder left
    assert read_index(tmp_path / NAME / "train").total == 1297


def test_digits_dataset_component(root: Path) -> None:
    registry = load_registry()
    test = registry.build("datasets", "digits", split="test", root=str(root))
    assert (test.num_samples, test.num_classes) == (500, 10)
    batches = list(
        test.eval_batches(
            augmentation=TinyAugmentation(), batch_size=128, rank=0, world_size=1, num_workers=0
        )
    )
    assert len(labels(batches)) == 500
    assert batches[0].images.shape == (128, 2, 3, 4, 4)
    few = registry.build("datasets", "digits", root=str(root), labels_per_class=3, subset_seed=5)
    assert (few.num_samples, few.num_classes) == (30, 10)
    cached = root / f"{NAME}-subsets" / "train-per-class-3-seed-5"
    assert read_index(cached).class_counts == (3,) * 10
    stamp = (cached / "index.json").stat().st_mtime_ns
    again = registry.build("datasets", "digits", root=str(root), labels_per_class=3, subset_seed=5)
    assert (cached / "index.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert again.urls == few.urls
    epoch = list(
        few.train_batches(
            augmentation=TinyAugmentation(),
            global_batch_size=10,
            rank=0,
            world_size=1,
            epoch=0,
            seed=0,
            num_workers=2,
        )
    )
    assert sorted(labels(epoch)) == sorted(list(range(10)) * 3)
    unlabelled = registry.build("datasets", "digits", root=str(root), labelled=False)
    assert unlabelled.num_classes == 0 and unlabelled.num_samples == 1297
