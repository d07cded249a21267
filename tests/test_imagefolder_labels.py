"""``contrastive shards build imagefolder SRC OUT --labels FILE``: classes from a file (ImageNet val)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from contrastive.cli import cli
from contrastive.data.imagefolder import build_imagefolder
from contrastive.data.index import read_index
from contrastive.errors import DataError

#: The flat folder: file name -> class (wnid), as ImageNet's validation set pairs them.
CLASSES = {
    "ILSVRC2012_val_00000001.JPEG": "n01751748",
    "ILSVRC2012_val_00000002.JPEG": "n09193705",
    "ILSVRC2012_val_00000003.JPEG": "n01751748",
    "ILSVRC2012_val_00000004.png": "n02105855",
    "ILSVRC2012_val_00000005.JPEG": "n09193705",
    "ILSVRC2012_val_00000006.JPEG": "n01751748",
}


def image_bytes(name: str, shade: int) -> bytes:
    buffer = io.BytesIO()
    kind = "PNG" if name.endswith(".png") else "JPEG"
    Image.new("RGB", (8, 8), (shade, 255 - shade, 60)).save(buffer, format=kind)
    return buffer.getvalue()


@pytest.fixture
def flat(tmp_path: Path) -> Path:
    """Six images in one folder (a labels file beside them is not an image and is ignored)."""
    root = tmp_path / "val"
    root.mkdir()
    for i, name in enumerate(CLASSES):
        (root / name).write_bytes(image_bytes(name, 40 * i))
    (root / "README.txt").write_text("not an image")
    return root


def pairs_file(tmp_path: Path) -> Path:
    """``<file name> <wnid>`` lines, not in file-name order, with a blank line and extra spaces."""
    lines = [f"{name}   {wnid}" for name, wnid in reversed(CLASSES.items())]
    path = tmp_path / "val_labels.txt"
    path.write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")
    return path


def plain_file(tmp_path: Path) -> Path:
    """One wnid per line, for the images in sorted file-name order."""
    path = tmp_path / "val_wnids.txt"
    path.write_text("".join(f"{CLASSES[name]}\n" for name in sorted(CLASSES)))
    return path


def sorted_tree(flat: Path, tmp_path: Path) -> Path:
    """The same images sorted into class folders (what `valprep.sh`-style scripts produce)."""
    tree = tmp_path / "val_sorted"
    for name, wnid in CLASSES.items():
        (tree / wnid).mkdir(parents=True, exist_ok=True)
        shutil.copy2(flat / name, tree / wnid / name)
    return tree


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    assert handle is not None
    return handle.read()


def classes_by_name(directory: Path) -> dict[str, tuple[str, int]]:
    """File name -> (class name, cls index) of every sample of the set."""
    out: dict[str, tuple[str, int]] = {}
    for entry in read_index(directory).shards:
        with tarfile.open(directory / entry.name) as tar:
            members = {m.name: _read(tar, m) for m in tar if m.isfile()}
        for key in {name.partition(".")[0] for name in members}:
            meta = json.loads(members[f"{key}.json"])
            out[meta["name"]] = (meta["class"], int(members[f"{key}.cls"]))
    return out


@pytest.mark.parametrize("form", [pairs_file, plain_file], ids=["pairs", "plain"])
def test_labelled_flat_folder_equals_the_sorted_tree(
    form: Callable[[Path], Path], flat: Path, tmp_path: Path
) -> None:
    labels = form(tmp_path)
    labelled = build_imagefolder(flat, tmp_path / "out", labels=labels, maxcount=4)
    tree = build_imagefolder(sorted_tree(flat, tmp_path), tmp_path / "tree_out", maxcount=4)
    assert labelled.classes == tree.classes == ("n01751748", "n02105855", "n09193705")
    assert labelled.class_counts == tree.class_counts == (3, 1, 2)
    assert labelled.total == 6
    by_name = classes_by_name(tmp_path / "out")
    assert by_name == classes_by_name(tmp_path / "tree_out")
    assert {name: cls for name, (cls, _) in by_name.items()} == CLASSES
    assert labelled.build is not None and labelled.build["labels"] == str(labels.resolve())


def test_cli_takes_labels(flat: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["shards", "build", "imagefolder", str(flat), str(out), "--labels", str(pairs_file(tmp_path))]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"{out}: 6 samples in 1 shards, 3 classes" in result.output
    again = CliRunner().invoke(cli, args)  # a complete build is kept
    assert again.exit_code == 0, again.output


def _error(flat: Path, labels: Path, tmp_path: Path) -> str:
    with pytest.raises(DataError) as caught:
        build_imagefolder(flat, tmp_path / "out", labels=labels)
    message = str(caught.value)
    assert "\n" not in message
    assert not (tmp_path / "out").exists()
    return message


def test_a_named_file_missing_from_the_source(flat: Path, tmp_path: Path) -> None:
    labels = pairs_file(tmp_path)
    labels.write_text(labels.read_text() + "ILSVRC2012_val_00000007.JPEG n01751748\n")
    message = _error(flat, labels, tmp_path)
    assert (
        message
        == f"labels file {labels} names 1 image(s) missing from the source: ILSVRC2012_val_00000007.JPEG"
    )


def test_an_image_of_the_source_missing_from_the_file(flat: Path, tmp_path: Path) -> None:
    labels = pairs_file(tmp_path)
    labels.write_text("\n".join(line for line in labels.read_text().splitlines() if "00000004" not in line))
    message = _error(flat, labels, tmp_path)
    assert (
        message == f"labels file {labels} does not name 1 image(s) of the source: ILSVRC2012_val_00000004.png"
    )


def test_a_plain_list_of_another_length(flat: Path, tmp_path: Path) -> None:
    labels = plain_file(tmp_path)
    labels.write_text(labels.read_text() + "n01751748\n")
    assert "lists 7 classes, one per line, but the source holds 6 images" in _error(flat, labels, tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        "ILSVRC2012_val_00000001.JPEG n01751748 65\n",
        "ILSVRC2012_val_00000001.JPEG n01751748\nn09193705\n",
        "ImageId,PredictionString\nILSVRC2012_val_00000001,n01751748 1 2 3 4\n",
    ],
    ids=["three-fields", "mixed", "kaggle-csv"],
)
def test_an_unknown_format(text: str, flat: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text(text)
    message = _error(flat, labels, tmp_path)
    assert message.startswith(f"labels file {labels}: unknown format (line ")
    assert "expected lines of `<file name> <class>` or lines of `<class>`" in message


def test_two_classes_for_one_file_and_other_file_problems(flat: Path, tmp_path: Path) -> None:
    labels = pairs_file(tmp_path)
    labels.write_text(labels.read_text() + "ILSVRC2012_val_00000001.JPEG n02105855\n")
    assert "gives ILSVRC2012_val_00000001.JPEG a second class (n02105855)" in _error(flat, labels, tmp_path)
    assert (
        _error(flat, tmp_path / "absent.txt", tmp_path)
        == f"labels file {tmp_path / 'absent.txt'} does not exist"
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    assert _error(flat, empty, tmp_path) == f"labels file {empty} is empty"


def test_two_images_with_one_name_are_refused(flat: Path, tmp_path: Path) -> None:
    (flat / "sub").mkdir()
    shutil.copy2(flat / "ILSVRC2012_val_00000001.JPEG", flat / "sub" / "ILSVRC2012_val_00000001.JPEG")
    message = _error(flat, pairs_file(tmp_path), tmp_path)
    assert message.startswith(f"{flat} holds two images named ILSVRC2012_val_00000001.JPEG")
