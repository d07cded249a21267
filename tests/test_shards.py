"""Shard writing, resuming, indexing and inspecting (``contrastive shards build/index/inspect``)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
import webdataset
from click.testing import CliRunner
from PIL import Image

from contrastive.cli.shards import shards
from contrastive.data import check_skipped
from contrastive.data.imagefolder import build_imagefolder
from contrastive.data.index import read_index
from contrastive.data.scan import index_directory
from contrastive.data.tario import iter_groups, open_tar
from contrastive.errors import DataError


def jpeg_bytes(color: tuple[int, int, int], size: int = 16) -> bytes:
    """A tiny JPEG of one colour."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_bytes(color: tuple[int, int, int], size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def make_tree(root: Path, sizes: Sequence[int]) -> dict[str, bytes]:
    """An ImageFolder tree with ``sizes[c]`` JPEGs in class ``cls{c}``; returns relative path -> bytes."""
    files: dict[str, bytes] = {}
    for c, n in enumerate(sizes):
        for i in range(n):
            rel = f"cls{c}/img_{c}_{i}.JPEG"
            files[rel] = jpeg_bytes((40 * c % 256, 17 * i % 256, 99))
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def read_set(directory: Path) -> list[dict[str, bytes]]:
    """Every sample of every indexed shard, in order: extension -> bytes."""
    samples = []
    for entry in read_index(directory).shards:
        with open(directory / entry.name, "rb") as f, open_tar(f, seekable=True) as tar:
            groups = list(iter_groups(tar))
        assert len(groups) == entry.count
        samples.extend(dict(g.data) for g in groups)
    return samples


def test_build_keeps_bytes_labels_and_names(tmp_path: Path) -> None:
    files = make_tree(tmp_path / "tree", [5, 3, 6])
    (tmp_path / "tree" / "cls1" / "disguised.JPEG").write_bytes(png_bytes((1, 2, 3)))
    (tmp_path / "tree" / "cls1" / "notes.txt").write_text("not an image")
    files["cls1/disguised.JPEG"] = png_bytes((1, 2, 3))

    index = build_imagefolder(tmp_path / "tree", tmp_path / "out", maxcount=4)

    assert index.total == 15
    assert index.classes == ("cls0", "cls1", "cls2")
    assert index.class_counts == (5, 4, 6)
    assert [s.count for s in index.shards] == [4, 4, 4, 3]
    assert read_index(tmp_path / "out") == index
    samples = read_set(tmp_path / "out")
    seen = set()
    for sample in samples:
        meta = json.loads(sample["json"])
        image_key = "png" if meta["name"] == "disguised.JPEG" else "jpg"
        assert sample[image_key] == files[meta["path"]]  # original bytes, never re-encoded
        assert int(sample["cls"]) == index.classes.index(meta["class"]) == int(meta["path"][3])
        seen.add(meta["path"])
    assert seen == set(files)
    # shuffled across shards: the first shard does not hold just the first class
    assert len({json.loads(s["json"])["class"] for s in samples[:4]}) > 1


def test_build_is_deterministic_and_seeded(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", [4, 4])
    build_imagefolder(tmp_path / "tree", tmp_path / "a", maxcount=3, seed=1)
    build_imagefolder(tmp_path / "tree", tmp_path / "b", maxcount=3, seed=1, workers=2)
    build_imagefolder(tmp_path / "tree", tmp_path / "c", maxcount=3, seed=2)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    def order(d: str) -> list[str]:
        return [json.loads(s["json"])["path"] for s in read_set(tmp_path / d)]

    assert order("a") != order("c")
    assert sorted(order("a")) == sorted(order("c"))


def test_maxsize_splits_shards(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", [6])
    index = build_imagefolder(tmp_path / "tree", tmp_path / "out", maxcount=100, maxsize=3000)
    assert len(index.shards) > 1
    assert all(s.bytes <= 3000 + 10240 for s in index.shards)
    assert index.total == 6


KILLER = """
import os, signal, sys
from contrastive.data.imagefolder import build_imagefolder
written = 0
def progress(n):
    global written
    written += n
    if written >= int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
build_imagefolder(sys.argv[1], sys.argv[2], maxcount=4, seed=3, progress=progress)
"""


def test_killed_build_leaves_no_truncated_shard_and_resumes(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", [7, 6, 5])
    src, out, reference = tmp_path / "tree", tmp_path / "out", tmp_path / "reference"
    code = textwrap.dedent(KILLER)
    done = subprocess.run([sys.executable, "-c", code, str(src), str(out), "10"], check=False)
    assert done.returncode == -signal.SIGKILL
    assert not (out / "index.json").exists()  # not complete
    finished = sorted(out.glob("shard-*.tar"))
    assert [p.name for p in finished] == ["shard-000000.tar", "shard-000001.tar"]  # 8 of 10 samples
    assert list(out.glob(".shard-000002.tar.*.tmp"))  # the shard being written when killed
    for path in finished:  # every file with a final name is a complete shard
        with open(path, "rb") as f, open_tar(f, seekable=True) as tar:
            assert len(list(iter_groups(tar))) == 4

    resumed = build_imagefolder(src, out, maxcount=4, seed=3)
    expected = build_imagefolder(src, reference, maxcount=4, seed=3)

    assert resumed == expected
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    for path in reference.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes()


def test_resume_reuses_complete_shards(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", [5, 5])
    out = tmp_path / "out"

    class Stop(Exception):
        pass

    def stop_after_six(n: int, count: list[int] = [0]) -> None:  # noqa: B006 - a counter
        count[0] += n
        if count[0] >= 6:
            raise Stop

    with pytest.raises(Stop):
        build_imagefolder(tmp_path / "tree", out, maxcount=4, progress=stop_after_six)
    first = out / "shard-000000.tar"
    stamp = first.stat().st_mtime_ns
    assert not list(out.glob("*.tmp"))  # an exception removes the partial shard
    written: list[int] = []
    build_imagefolder(tmp_path / "tree", out, maxcount=4, progress=written.append)
    assert first.stat().st_mtime_ns == stamp  # kept, not rewritten
    assert written[0] == 4  # the kept shard is reported first
    assert sum(written) == 10


def test_rerun_with_other_parameters_rebuilds_cleanly(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", [5, 5])
    out = tmp_path / "out"
    build_imagefolder(tmp_path / "tree", out, maxcount=3)
    assert len(list(out.glob("shard-*.tar"))) == 4
    index = build_imagefolder(tmp_path / "tree", out, maxcount=5)
    assert sorted(p.name for p in out.glob("shard-*.tar")) == [s.name for s in index.shards]
    assert len(index.shards) == 2
    assert len(read_set(out)) == 10
    # a rebuild killed while deleting the old shards: its marker plan lets the next run go on
    (out / "index.json").unlink()
    (out / ".build.json").write_text('{"fingerprint": null, "shards": []}')
    again = build_imagefolder(tmp_path / "tree", out, maxcount=3)
    assert len(again.shards) == 4 and len(read_set(out)) == 10


def test_a_missing_shard_of_a_complete_set_is_rewritten_alone(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", [4, 4])
    out = tmp_path / "out"
    build_imagefolder(tmp_path / "tree", out, maxcount=3)
    reference = {p.name: p.read_bytes() for p in out.iterdir()}
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    (out / "shard-000001.tar").unlink()
    build_imagefolder(tmp_path / "tree", out, maxcount=3)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == reference
    assert (out / "shard-000000.tar").stat().st_mtime_ns == stamps["shard-000000.tar"]


def test_build_refuses_foreign_shards_and_bad_trees(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", [2])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "shard-000000.tar").write_bytes(b"precious")
    with pytest.raises(DataError, match="no build here started"):
        build_imagefolder(tmp_path / "tree", foreign)
    assert (foreign / "shard-000000.tar").read_bytes() == b"precious"
    (tmp_path / "tree" / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class"):
        build_imagefolder(tmp_path / "tree", tmp_path / "out")
    with pytest.raises(DataError, match="not a folder"):
        build_imagefolder(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(DataError, match="inside the source"):
        build_imagefolder(tmp_path / "tree", tmp_path / "tree" / "out")


def write_public_style(directory: Path, shard_sizes: Sequence[int], num_classes: int) -> list[bytes]:
    """Shards as public WebDataset copies have them: jpg + cls, keys like n0_123, no json."""
    directory.mkdir(parents=True)
    images = []
    n = 0
    for s, size in enumerate(shard_sizes):
        with webdataset.TarWriter(str(directory / f"imagenet-train-{s:06d}.tar")) as sink:
            for _ in range(size):
                data = jpeg_bytes((n % 256, 0, 0), size=8)
                sink.write({"__key__": f"n{n % num_classes}_{n}", "jpg": data, "cls": n % num_classes})
                images.append(data)
                n += 1
    return images


def test_index_command_on_public_style_shards(tmp_path: Path) -> None:
    write_public_style(tmp_path / "wds", [5, 3, 4], num_classes=3)
    runner = CliRunner()
    result = runner.invoke(shards, ["index", str(tmp_path / "wds")])
    assert result.exit_code == 0, result.output
    assert "12 samples in 3 shards, 3 classes" in result.output
    index = read_index(tmp_path / "wds")
    assert [s.count for s in index.shards] == [5, 3, 4]
    assert index.classes == ("0", "1", "2")
    assert index.class_counts == (4, 4, 4)
    again = runner.invoke(shards, ["index", str(tmp_path / "wds")])
    assert isinstance(again.exception, DataError) and "--force" in str(again.exception)
    assert runner.invoke(shards, ["index", str(tmp_path / "wds"), "--force"]).exit_code == 0


def test_index_rejects_truncated_shard(tmp_path: Path) -> None:
    write_public_style(tmp_path / "wds", [4, 4], num_classes=2)
    path = tmp_path / "wds" / "imagenet-train-000001.tar"
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(DataError, match=r"imagenet-train-000001\.tar"):
        index_directory(tmp_path / "wds")


def test_cli_build_and_inspect(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", [3, 2])
    runner = CliRunner()
    out = tmp_path / "out"
    built = runner.invoke(
        shards, ["build", "imagefolder", str(tmp_path / "tree"), str(out), "--maxcount", "2"]
    )
    assert built.exit_code == 0, built.output
    assert "5 samples in 3 shards, 2 classes" in built.output
    shown = runner.invoke(shards, ["inspect", str(out), "--json"])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.output)
    assert info["total"] == 5
    assert info["class_counts"] == {"cls0": 3, "cls1": 2}
    assert [s["count"] for s in info["shards"]] == [2, 2, 1]
    assert info["shard_bytes"]["total"] == sum(p.stat().st_size for p in out.glob("*.tar"))
    assert info["missing"] == []
    table = runner.invoke(shards, ["inspect", str(out)])
    assert table.exit_code == 0 and "cls0" in table.output and "samples per class" in table.output
    (out / "shard-000001.tar").unlink()
    assert json.loads(runner.invoke(shards, ["inspect", str(out), "--json"]).output)["missing"] == [
        "shard-000001.tar"
    ]
    missing = runner.invoke(shards, ["inspect", str(tmp_path / "nothing")])
    assert isinstance(missing.exception, DataError) and "shards index" in str(missing.exception)


def test_check_skipped() -> None:
    check_skipped(0, 0, 0.0)
    check_skipped(1, 100, 0.01)
    with pytest.raises(DataError, match=r"2 of 100 samples \(2\.00%\).*1\.00%"):
        check_skipped(2, 100, 0.01)


def test_written_tar_is_plain_webdataset(tmp_path: Path) -> None:
    """Shards read back with webdataset's own reader (the format is the standard one)."""
    make_tree(tmp_path / "tree", [2, 2])
    build_imagefolder(tmp_path / "tree", tmp_path / "out")
    dataset = webdataset.WebDataset(str(tmp_path / "out" / "shard-000000.tar"), shardshuffle=False)
    samples = list(dataset)
    assert len(samples) == 4
    assert all({"jpg", "cls", "json"} <= set(s) for s in samples)
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())


def test_index_takes_class_names_from_json(tmp_path: Path) -> None:
    directory = tmp_path / "named"
    directory.mkdir()
    with webdataset.TarWriter(str(directory / "part-0.tar")) as sink:
        for n, wnid in enumerate(["n02", "n01", "n02", "n03"]):
            label = ["n01", "n02", "n03"].index(wnid)
            meta = {"filename": f"{wnid}_{n}.JPEG", "wnid": wnid}
            sink.write({"__key__": f"k{n}", "jpg": jpeg_bytes((n, 0, 0), size=8), "cls": label, "json": meta})
    index = index_directory(directory)
    assert index.classes == ("n01", "n02", "n03")
    assert index.class_counts == (1, 2, 1)
