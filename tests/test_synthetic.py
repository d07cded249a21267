"""The procedurally generated development sets (``shapes``, ``textures``): deterministic, balanced,
built by ``contrastive shards build``, and a class that is what the module says it is."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from contrastive.cli import cli
from contrastive.data.index import read_index
from contrastive.data.synthetic import (
    FREQUENCIES,
    ORIENTATIONS,
    SHAPE_CLASSES,
    SIZE,
    TEXTURE_CLASSES,
    generate,
    write_synthetic,
)
from contrastive.errors import DataError
from contrastive.registry import load_registry
from contrastive.spec.structure import structure_options


@pytest.mark.parametrize("name", ["shapes", "textures"])
def test_images_depend_on_seed_split_and_index_only(name: str) -> None:
    image, label = generate(name, "train", 13)
    again, label_again = generate(name, "train", 13)
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert np.array_equal(image, again) and label == label_again == 3
    assert not np.array_equal(image, generate(name, "test", 13)[0])
    assert not np.array_equal(image, generate(name, "train", 13, seed=1)[0])
    assert not np.array_equal(image, generate(name, "train", 23)[0])  # same class, another image


@pytest.mark.parametrize(("name", "classes"), [("shapes", SHAPE_CLASSES), ("textures", TEXTURE_CLASSES)])
def test_shards_build_writes_balanced_identical_splits(
    name: str, classes: tuple[str, ...], tmp_path: Path
) -> None:
    args = ["shards", "build", name, "--train-per-class", "2", "--test-per-class", "1"]
    first = CliRunner().invoke(cli, [*args, str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    assert f"{tmp_path / 'a' / 'train'}: 20 samples" in first.output
    write_synthetic(name, tmp_path / "b", train_per_class=2, test_per_class=1)
    for split, per_class in (("train", 2), ("test", 1)):
        index = read_index(tmp_path / "a" / split)
        assert index.classes == classes and index.class_counts == (per_class,) * 10
        for entry in index.shards:
            assert (tmp_path / "a" / split / entry.name).read_bytes() == (
                tmp_path / "b" / split / entry.name
            ).read_bytes()
    entry = load_registry().get("datasets", "webdataset")
    source = entry.component.build(
        structure_options(entry.options, {"urls": str(tmp_path / "a" / "train")}, source="test")
    )
    assert source.num_samples == 20 and source.num_classes == 10


def test_unknown_sets_and_empty_classes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown synthetic set"):
        write_synthetic("noise", tmp_path)
    with pytest.raises(DataError, match="at least 1"):
        write_synthetic("shapes", tmp_path, train_per_class=0)


def _dominant(image: np.ndarray) -> tuple[float, float]:
    """Orientation (degrees in [0, 180)) and cycles per image of the strongest Fourier component."""
    gray = image.astype(np.float64).mean(axis=2)
    spectrum = np.abs(np.fft.fft2(gray - gray.mean()))
    fy, fx = np.unravel_index(int(np.argmax(spectrum)), spectrum.shape)
    fy = fy - SIZE if fy > SIZE // 2 else fy
    fx = fx - SIZE if fx > SIZE // 2 else fx
    return math.degrees(math.atan2(fy, fx)) % 180.0, math.hypot(fx, fy)


def test_texture_classes_are_the_grating_orientation_and_frequency_and_a_flip_changes_them() -> None:
    agree, flipped_agree, total = 0, 0, 0
    for index in range(200):
        image, label = generate("textures", "train", index)
        orientation, cycles = _dominant(image)
        want = ORIENTATIONS[label % 5], FREQUENCIES[label // 5]
        angle = abs((orientation - want[0] + 90.0) % 180.0 - 90.0)
        agree += angle <= 12.0 and abs(cycles - want[1]) <= 1.5
        mirrored, _ = _dominant(image[:, ::-1])
        mirror_angle = abs((mirrored - (180.0 - want[0]) + 90.0) % 180.0 - 90.0)
        flipped_agree += mirror_angle <= 12.0
        total += 1
    assert agree / total > 0.8  # the distractor or the noise wins a few
    assert flipped_agree / total > 0.8  # a flip maps orientation o to 180 - o: another class
