"""Labelled subsets: the published SimCLR lists, per-class and fraction draws (``shards subset``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from contrastive.cli.shards import shards
from contrastive.data.imagefolder import build_imagefolder
from contrastive.data.index import ShardEntry, ShardIndex, read_index, write_index
from contrastive.data.shards import OutSample, shard_name, write_shard
from contrastive.data.subsets import fraction_count, write_subset
from contrastive.errors import DataError
from tests.test_shards import jpeg_bytes, make_tree, read_set

ONE_PERCENT = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet_subsets" / "1percent.txt"


def imagenet_like(directory: Path, names: list[str], per_shard: int = 2000) -> ShardIndex:
    """Shards holding a tiny JPEG for each ImageNet file name (class = its wnid), written directly."""
    image = jpeg_bytes((128, 64, 32), size=4)
    classes = sorted({name.split("_")[0] for name in names})
    label = {wnid: i for i, wnid in enumerate(classes)}
    directory.mkdir(parents=True)
    entries = []
    for start in range(0, len(names), per_shard):
        chunk = names[start : start + per_shard]
        samples = [
            OutSample(
                image=image,
                image_size=len(image),
                source_id=name,
                label=label[name.split("_")[0]],
                meta={"name": name, "class": name.split("_")[0]},
                image_ext="jpg",
            )
            for name in chunk
        ]
        path = directory / shard_name(len(entries))
        write_shard(path, samples, first_key=start)
        entries.append(ShardEntry(path.name, len(chunk), path.stat().st_size))
    counts = Counter(label[name.split("_")[0]] for name in names)
    index = ShardIndex(tuple(entries), tuple(classes), tuple(counts[i] for i in range(len(classes))))
    write_index(directory, index)
    return index


def test_published_one_percent_list(tmp_path: Path) -> None:
    if not ONE_PERCENT.is_file():
        pytest.skip(f"the published 1% list is not at {ONE_PERCENT}")
    listed = ONE_PERCENT.read_text().split()
    extra = [f"{name.split('_')[0]}_extra{i}.JPEG" for i, name in enumerate(listed[::50])]
    imagenet_like(tmp_path / "train", listed + extra)

    index = write_subset(tmp_path / "train", tmp_path / "one", names_file=ONE_PERCENT, maxcount=5000)

    assert index.total == 12811
    assert len(index.classes) == 1000
    assert set(index.class_counts) <= {12, 13}
    samples = read_set(tmp_path / "one")
    names = [json.loads(s["json"])["name"] for s in samples]
    assert sorted(names) == sorted(listed)
    assert all(int(s["cls"]) == index.classes.index(json.loads(s["json"])["class"]) for s in samples[:100])

    wrong = tmp_path / "wrong.txt"
    wrong.write_text("\n".join([*listed[:20], "n99999999_1.JPEG", "n99999999_2.JPEG", "n00000000_3.JPEG"]))
    with pytest.raises(
        DataError, match=r"3 of 23 names in .*wrong\.txt are not in the source shards: n99999999_1"
    ):
        write_subset(tmp_path / "train", tmp_path / "bad", names_file=wrong)


@pytest.fixture
def tree_set(tmp_path: Path) -> Path:
    make_tree(tmp_path / "tree", [7, 2, 10, 4])
    build_imagefolder(tmp_path / "tree", tmp_path / "set", maxcount=5)
    return tmp_path / "set"


def test_per_class_is_seeded_and_balanced(tree_set: Path, tmp_path: Path) -> None:
    index = write_subset(tree_set, tmp_path / "a", per_class=3, seed=1, maxcount=4)
    assert index.class_counts == (3, 2, 3, 3)  # class 1 has only 2
    assert index.classes == read_index(tree_set).classes
    again = write_subset(tree_set, tmp_path / "b", per_class=3, seed=1, maxcount=4)
    other = write_subset(tree_set, tmp_path / "c", per_class=3, seed=2, maxcount=4)

    def chosen(directory: str) -> set[str]:
        return {json.loads(s["json"])["path"] for s in read_set(tmp_path / directory)}

    assert chosen("a") == chosen("b")
    assert chosen("a") != chosen("c")
    assert again.total == other.total == 11
    originals = {json.loads(s["json"])["path"]: s["jpg"] for s in read_set(tree_set)}
    for sample in read_set(tmp_path / "a"):  # bytes, labels and names are kept
        meta = json.loads(sample["json"])
        assert sample["jpg"] == originals[meta["path"]]
        assert int(sample["cls"]) == int(meta["class"][3:])


def test_fraction_rounds_half_up_with_one_per_class(tree_set: Path, tmp_path: Path) -> None:
    assert [fraction_count(0.25, n) for n in (7, 2, 10, 4, 1)] == [2, 1, 3, 1, 1]
    index = write_subset(tree_set, tmp_path / "q", fraction=0.25, seed=0)
    assert index.class_counts == (2, 1, 3, 1)
    with pytest.raises(DataError, match="fraction"):
        write_subset(tree_set, tmp_path / "x", fraction=1.5)


def test_cli_subset(tree_set: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    names = tmp_path / "names.txt"
    names.write_text("# a comment\nimg_0_1.JPEG\n\nimg_2_3.jpg\n")
    result = runner.invoke(shards, ["subset", str(tree_set), str(tmp_path / "l"), "--list", str(names)])
    assert result.exit_code == 0, result.output
    assert "2 samples" in result.output
    assert sorted(json.loads(s["json"])["name"] for s in read_set(tmp_path / "l")) == [
        "img_0_1.JPEG",
        "img_2_3.JPEG",
    ]
    none = runner.invoke(shards, ["subset", str(tree_set), str(tmp_path / "n")])
    assert isinstance(none.exception, DataError) and "exactly one" in str(none.exception)
    both = runner.invoke(
        shards, ["subset", str(tree_set), str(tmp_path / "n"), "--per-class", "1", "--fraction", "0.5"]
    )
    assert isinstance(both.exception, DataError)
    per_class = runner.invoke(shards, ["subset", str(tree_set), str(tmp_path / "p"), "--per-class", "1"])
    assert per_class.exit_code == 0 and "4 samples" in per_class.output
