"""``contrastive shards build cifar`` and the CIFAR-10 spec.

The archives here are written in the standard python-version format byte for byte as far as it
matters: Python 2 protocol-2 pickles (byte strings as ``SHORT_BINSTRING``/``BINSTRING``, arrays
through ``numpy.core.multiarray._reconstruct``), ``uint8`` rows of 3,072 bytes (R, G, B planes of
32x32), in ``cifar-10-batches-py/`` or ``cifar-100-python/``, extracted or as ``.tar.gz``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from click.testing import CliRunner
from PIL import Image

from contrastive import load_spec
from contrastive.cli import cli
from contrastive.data.cifar import build_cifar, read_cifar, row_image
from contrastive.data.index import read_index
from contrastive.errors import DataError
from contrastive.spec.loader import load
from tests.conftest import REPO
from tests.tiny_specs import spec_value

CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
FINE_NAMES = [f"fine{i}" for i in range(10)]
COARSE_NAMES = [f"coarse{i}" for i in range(5)]
PER_BATCH = 3


def py2_pickle(obj: Any) -> bytes:
    """``obj`` pickled as Python 2's cPickle writes protocol 2 (what the CIFAR archives hold).

    Byte strings are Python 2 ``str`` (BINSTRING opcodes), arrays go through
    ``numpy.core.multiarray._reconstruct`` and ``numpy.dtype`` with their Python 2 arguments.
    """
    out = bytearray(b"\x80\x02")

    def save(value: Any) -> None:
        if value is None:
            out.extend(b"N")
        elif isinstance(value, bool):
            out.extend(b"\x88" if value else b"\x89")
        elif isinstance(value, int):
            out.extend(b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value))
        elif isinstance(value, bytes):
            head = b"U" + bytes([len(value)]) if len(value) < 256 else b"T" + struct.pack("<i", len(value))
            out.extend(head + value)
        elif isinstance(value, dict):
            out.extend(b"}(")
            for key, item in value.items():
                save(key)
                save(item)
            out.extend(b"u")
        elif isinstance(value, list):
            out.extend(b"](")
            for item in value:
                save(item)
            out.extend(b"e")
        elif isinstance(value, tuple):
            out.extend(b"(")
            for item in value:
                save(item)
            out.extend(b"t")
        elif isinstance(value, np.ndarray):
            assert value.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n")
            save((0,))
            save(b"b")
            out.extend(b"tR")  # the empty array
            out.extend(b"(")
            save(1)
            save(tuple(value.shape))
            out.extend(b"cnumpy\ndtype\n")
            save((b"u1", 0, 1))
            out.extend(b"R")
            save((3, b"|", None, None, None, -1, -1, 0))
            out.extend(b"b")  # BUILD: the dtype's state
            save(False)
            save(value.tobytes())
            out.extend(b"tb")  # BUILD: the array's state
        else:  # pragma: no cover - the helper's own misuse
            raise TypeError(type(value))

    save(obj)
    out.extend(b".")
    return bytes(out)


def rows(count: int, seed: int) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 3072), dtype=np.uint8)


def cifar10_files() -> tuple[dict[str, bytes], dict[str, Any]]:
    """The files of a small CIFAR-10 archive (3 images per batch) and the arrays written."""
    meta = {b"num_cases_per_batch": PER_BATCH, b"label_names": [n.encode() for n in CIFAR10_NAMES]}
    files = {"batches.meta": py2_pickle(meta)}
    truth: dict[str, Any] = {"train": [], "test": []}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        data = rows(PER_BATCH, seed=b)
        labels = [(3 * b + i) % 10 for i in range(PER_BATCH)]
        filenames = [f"img_{b}_{i}.png".encode() for i in range(PER_BATCH)]
        doc = {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": filenames}
        files[name] = py2_pickle(doc)
        truth["test" if name == "test_batch" else "train"].extend(
            zip(data, labels, [f.decode() for f in filenames], strict=True)
        )
    return files, truth


def cifar100_files() -> tuple[dict[str, bytes], dict[str, Any]]:
    """A small CIFAR-100 archive: 10 fine and 5 coarse classes, 6 training and 3 test images."""
    meta = {
        b"fine_label_names": [n.encode() for n in FINE_NAMES],
        b"coarse_label_names": [n.encode() for n in COARSE_NAMES],
    }
    files = {"meta": py2_pickle(meta)}
    truth: dict[str, Any] = {}
    for s, (split, count) in enumerate((("train", 6), ("test", 3))):
        data = rows(count, seed=10 + s)
        fine = [(7 * i + s) % 10 for i in range(count)]
        coarse = [label // 2 for label in fine]
        filenames = [f"{split}_{i}.png".encode() for i in range(count)]
        doc = {
            b"filenames": filenames,
            b"batch_label": split.encode(),
            b"fine_labels": fine,
            b"coarse_labels": coarse,
            b"data": data,
        }
        files[split] = py2_pickle(doc)
        truth[split] = list(zip(data, fine, coarse, strict=True))
    return files, truth


def write_folder(root: Path, folder: str, files: Mapping[str, bytes]) -> Path:
    (root / folder).mkdir(parents=True)
    for name, data in files.items():
        (root / folder / name).write_bytes(data)
    return root / folder


def write_tarball(path: Path, folder: str, files: Mapping[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def read_samples(directory: Path) -> list[dict[str, Any]]:
    """Every sample of the set: decoded pixels, cls and json."""
    samples = []
    for entry in read_index(directory).shards:
        with tarfile.open(directory / entry.name) as tar:
            members: dict[str, dict[str, bytes]] = {}
            for member in tar:
                key, _, ext = member.name.partition(".")
                handle = tar.extractfile(member)
                assert handle is not None
                members.setdefault(key, {})[ext] = handle.read()
        for parts in members.values():
            assert set(parts) == {"png", "cls", "json"}
            pixels = np.asarray(Image.open(io.BytesIO(parts["png"])).convert("RGB"))
            samples.append({"pixels": pixels, "cls": int(parts["cls"]), "json": json.loads(parts["json"])})
    return samples


@pytest.fixture
def cifar10_source(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, dict[str, Any]]:
    files, truth = cifar10_files()
    form = request.param
    if form == "tarball":
        return write_tarball(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files), truth
    folder = write_folder(tmp_path / "src", "cifar-10-batches-py", files)
    return (folder if form == "folder" else folder.parent), truth


@pytest.mark.parametrize("cifar10_source", ["folder", "parent", "tarball"], indirect=True)
def test_cifar10_builds_train_and_test_with_exact_pixels(
    cifar10_source: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    src, truth = cifar10_source
    indexes = build_cifar(src, tmp_path / "out", maxcount=4)
    for split, count in (("train", 5 * PER_BATCH), ("test", PER_BATCH)):
        index = read_index(tmp_path / "out" / split)
        assert index.total == count == indexes[split].total
        assert list(index.classes) == CIFAR10_NAMES
        assert list(index.class_counts) == [sum(1 for _, y, _ in truth[split] if y == c) for c in range(10)]
        assert index.build is not None and index.build["kind"] == "cifar10"
        samples = read_samples(tmp_path / "out" / split)
        assert sorted(s["json"]["index"] for s in samples) == list(range(count))
        for sample in samples:
            row, label, name = truth[split][sample["json"]["index"]]
            assert sample["cls"] == label
            assert sample["json"] == {
                "name": name,
                "class": CIFAR10_NAMES[label],
                "index": sample["json"]["index"],
            }
            assert sample["pixels"].shape == (32, 32, 3)
            np.testing.assert_array_equal(sample["pixels"], row_image(row))
            # channel-major rows: byte c * 1024 + y * 32 + x is channel c of pixel (y, x)
            assert sample["pixels"][5, 7, 2] == row[2 * 1024 + 5 * 32 + 7]
            assert sample["pixels"][31, 0, 1] == row[1024 + 31 * 32]


def test_folder_and_tarball_give_identical_shards(tmp_path: Path) -> None:
    files, _ = cifar10_files()
    folder = write_folder(tmp_path / "src", "cifar-10-batches-py", files)
    tarball = write_tarball(tmp_path / "c.tar.gz", "cifar-10-batches-py", files)
    build_cifar(folder, tmp_path / "a", maxcount=4)
    build_cifar(tarball, tmp_path / "b", maxcount=4)
    for split in ("train", "test"):
        names = sorted(p.name for p in (tmp_path / "a" / split).glob("shard-*.tar"))
        assert names == sorted(p.name for p in (tmp_path / "b" / split).glob("shard-*.tar"))
        for name in names:
            assert (tmp_path / "a" / split / name).read_bytes() == (
                tmp_path / "b" / split / name
            ).read_bytes()


@pytest.mark.parametrize("form", ["folder", "tarball"])
@pytest.mark.parametrize("labels", ["fine", "coarse"])
def test_cifar100_fine_and_coarse_labels(form: str, labels: str, tmp_path: Path) -> None:
    files, truth = cifar100_files()
    if form == "folder":
        src = write_folder(tmp_path / "src", "cifar-100-python", files)
    else:
        src = write_tarball(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python", files)
    build_cifar(src, tmp_path / "out", labels="coarse" if labels == "coarse" else "fine")
    names = COARSE_NAMES if labels == "coarse" else FINE_NAMES
    for split, count in (("train", 6), ("test", 3)):
        index = read_index(tmp_path / "out" / split)
        assert index.total == count
        assert list(index.classes) == names
        assert index.build is not None and (index.build["kind"], index.build["labels"]) == (
            "cifar100",
            labels,
        )
        for sample in read_samples(tmp_path / "out" / split):
            row, fine, coarse = truth[split][sample["json"]["index"]]
            label = coarse if labels == "coarse" else fine
            assert sample["cls"] == label and sample["json"]["class"] == names[label]
            np.testing.assert_array_equal(sample["pixels"], row_image(row))


def test_rerun_of_a_complete_build_rewrites_nothing(tmp_path: Path) -> None:
    files, _ = cifar10_files()
    tarball = write_tarball(tmp_path / "c.tar.gz", "cifar-10-batches-py", files)
    build_cifar(tarball, tmp_path / "out", maxcount=4)
    before = {
        p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (tmp_path / "out").rglob("*") if p.is_file()
    }
    told: list[int] = []
    again = build_cifar(tarball, tmp_path / "out", maxcount=4, progress=told.append)
    after = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert after == before
    assert again["train"].total == 15 and again["test"].total == 3
    assert sum(told) == 2 * (15 + 3)  # every image encoded, every sample counted as already written


def test_coarse_is_refused_for_cifar10(tmp_path: Path) -> None:
    files, _ = cifar10_files()
    src = write_folder(tmp_path / "src", "cifar-10-batches-py", files)
    with pytest.raises(DataError, match="is CIFAR-10, which has one label set"):
        read_cifar(src, labels="coarse")


def test_missing_files_are_named(tmp_path: Path) -> None:
    files, _ = cifar10_files()
    del files["data_batch_3"]
    folder = write_folder(tmp_path / "src", "cifar-10-batches-py", files)
    with pytest.raises(
        DataError, match=r"not a complete CIFAR-10 archive: missing cifar-10-batches-py/data_batch_3$"
    ):
        read_cifar(folder)
    del files["test_batch"]
    tarball = write_tarball(tmp_path / "c.tar.gz", "cifar-10-batches-py", files)
    with pytest.raises(
        DataError, match=r"missing cifar-10-batches-py/data_batch_3, cifar-10-batches-py/test_batch$"
    ):
        read_cifar(tarball)
    hundred, _ = cifar100_files()
    del hundred["meta"]
    with pytest.raises(DataError, match=r"not a complete CIFAR-100 archive: missing cifar-100-python/meta$"):
        read_cifar(write_tarball(tmp_path / "h.tar.gz", "cifar-100-python", hundred))


def test_other_folders_and_files_are_not_cifar(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match="is not a CIFAR archive: it holds neither cifar-10-batches-py/"):
        read_cifar(tmp_path / "images")
    other = write_tarball(tmp_path / "other.tar.gz", "mnist", {"train": b"x"})
    with pytest.raises(DataError, match="is not a CIFAR archive"):
        read_cifar(other)
    (tmp_path / "notes.txt").write_text("not a tar")
    with pytest.raises(DataError, match="not a readable CIFAR tar archive"):
        read_cifar(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="does not exist"):
        read_cifar(tmp_path / "absent.tar.gz")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) // 2], "not a readable CIFAR pickle"),
        (lambda data: b"garbage" + data, "not a readable CIFAR pickle"),
        (lambda data: pickle.dumps([1, 2, 3]), "expected a dict, found list"),
        (lambda data: py2_pickle({b"data": rows(3, 0)[:, :100], b"labels": [0, 1, 2]}), "rows of 100 bytes"),
        (lambda data: py2_pickle({b"data": rows(3, 0), b"labels": [0, 1, 10]}), "label 10 is not a class"),
        (lambda data: py2_pickle({b"data": rows(3, 0), b"labels": [0, 1]}), "one label per image"),
        (lambda data: py2_pickle({b"labels": [0, 1, 2]}), "'data' is not a uint8 array"),
    ],
)
def test_damaged_pickles_are_clear_errors(damage: Any, message: str, tmp_path: Path) -> None:
    files, _ = cifar10_files()
    files["data_batch_2"] = damage(files["data_batch_2"])
    for src in (
        write_folder(tmp_path / "src", "cifar-10-batches-py", files),
        write_tarball(tmp_path / "c.tar.gz", "cifar-10-batches-py", files),
    ):
        with pytest.raises(DataError, match=message) as caught:
            read_cifar(src)
        assert "data_batch_2" in str(caught.value) and "\n" not in str(caught.value)


class RunsCode:
    """Pickles as a call of ``exec`` that would create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


class CallsSystem:
    """Pickles as ``os.system`` (by its module's name) with a command that would create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", [RunsCode, CallsSystem])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_that_would_run_code_is_refused_unrun(payload: Any, protocol: int, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    files, _ = cifar10_files()
    files["test_batch"] = pickle.dumps({"data": payload(marker), "labels": [0]}, protocol=protocol)
    for src in (
        write_folder(tmp_path / "src", "cifar-10-batches-py", files),
        write_tarball(tmp_path / "c.tar.gz", "cifar-10-batches-py", files),
    ):
        with pytest.raises(
            DataError,
            match=r"test_batch: refusing to unpickle (__builtin__\.exec|builtins\.exec|posix\.system)",
        ):
            build_cifar(src, tmp_path / "out")
        assert not marker.exists()
        assert not (tmp_path / "out").exists()
    unpickled = pickle.loads(files["test_batch"])  # the payload is real: plain pickle runs it
    assert marker.exists() and unpickled["labels"] == [0]


def test_arrays_pickled_by_python3_and_numpy2_are_read(tmp_path: Path) -> None:
    files, truth = cifar10_files()
    data, labels, _ = zip(*truth["test"], strict=True)
    for protocol in (3, 4, 5):
        files["test_batch"] = pickle.dumps(
            {"data": np.stack(data), "labels": list(labels)}, protocol=protocol
        )
        folder = write_folder(tmp_path / f"p{protocol}", "cifar-10-batches-py", files)
        test = read_cifar(folder).splits["test"]
        np.testing.assert_array_equal(test.rows, np.stack(data))
        assert test.labels == labels and test.names == ("00000.png", "00001.png", "00002.png")


def test_cli_builds_and_reports_errors_in_one_line(tmp_path: Path) -> None:
    files, _ = cifar10_files()
    tarball = write_tarball(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    runner = CliRunner()
    result = runner.invoke(
        cli, ["shards", "build", "cifar", str(tarball), str(tmp_path / "out"), "--maxcount", "5"]
    )
    assert result.exit_code == 0, result.output
    assert f"{tmp_path / 'out' / 'train'}: 15 samples in 3 shards, 10 classes" in result.output
    assert f"{tmp_path / 'out' / 'test'}: 3 samples in 1 shards, 10 classes" in result.output
    refused = runner.invoke(cli, ["shards", "build", "cifar", str(tarball), str(tmp_path / "x"), "--coarse"])
    assert refused.exit_code == 4
    assert refused.output.strip().count("\n") == 0 and "coarse labels are CIFAR-100's" in refused.output


# The CIFAR-10 spec ---------------------------------------------------------------------------

SPEC = REPO / "specs" / "cifar10_simclr.toml"

#: The official TF2 README's CIFAR-10 pretraining command (--train_batch_size=512
#: --train_epochs=1000 --learning_rate=1.0 --weight_decay=1e-4 --temperature=0.5 --image_size=32
#: --resnet_depth=18 --use_blur=False --color_jitter_strength=0.5) and the run.py flag defaults it
#: leaves alone (--learning_rate_scaling=linear, --warmup_epochs=10, --optimizer=lars,
#: --momentum=0.9, --num_proj_layers=3, --proj_out_dim=128, --global_bn=True); model.py builds
#: the CIFAR stem for image_size <= 32, data.py skips the evaluation center crop there.
PRETRAIN = {
    "epochs": 1000,
    "batch_size": 512,
    "encoder.depth": 18,
    "encoder.cifar_stem": True,
    "encoder.width_multiplier": 1,
    "encoder.sk_ratio": 0.0,
    "augmentation.name": "simclr",
    "augmentation.size": 32,
    "augmentation.crop_sampler": "official",
    "augmentation.crop_min_area": 0.08,
    "augmentation.color_strength": 0.5,
    "augmentation.blur_probability": 0.0,
    "augmentation.flip_probability": 0.5,
    "eval_augmentation.size": 32,
    "eval_augmentation.crop_fraction": 1.0,
    "normalization.name": "global_bn",
    "head.num_layers": 3,
    "head.out_dim": 128,
    "loss.name": "nt_xent",
    "loss.temperature": 0.5,
    "optimizer.name": "lars",
    "optimizer.lr": 1.0,
    "optimizer.momentum": 0.9,
    "optimizer.weight_decay": 1e-4,
    "schedule.name": "warmup_cosine",
    "schedule.scaling": "linear",
    "schedule.warmup_epochs": 10.0,
}


def test_cifar10_spec_holds_the_cited_official_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFAR10_SHARDS", "/nonexistent/cifar10")
    spec = load_spec(SPEC).spec
    assert spec.pretrain is not None and spec.finetune is not None and spec.distill is not None
    for key, expected in PRETRAIN.items():
        assert spec_value(spec.pretrain, key) == expected, f"pretrain.{key}"
    assert spec.pretrain.dataset.options.urls == "/nonexistent/cifar10/train"
    for stage in (spec.finetune, spec.distill):
        assert (
            stage.eval_dataset is not None and stage.eval_dataset.options.urls == "/nonexistent/cifar10/test"
        )
        assert (stage.augmentation.name, stage.augmentation.options.size) == ("crop_flip", 32)
        assert stage.eval_augmentation.options.crop_fraction == 1.0
    # SimCLRv2 fine-tuning (as in the ImageNet specs): from head layer 1, no weight decay, no warmup
    assert (spec.finetune.from_layer, spec.finetune.optimizer.options.lr) == (1, 0.005)
    assert spec.finetune.optimizer.options.weight_decay == 0.0
    assert (spec.finetune.schedule.options.scaling, spec.finetune.schedule.options.warmup_fraction) == (
        "sqrt",
        0.0,
    )
    # distillation: pretraining's batch, schedule and weight decay; the teacher's architecture
    assert spec.distill.batch_size == 512 and spec.distill.optimizer.options.weight_decay == 1e-4
    assert spec.distill.loss.options.temperature == 0.1
    student = spec.distill.encoder.options
    assert (student.depth, student.cifar_stem) == (18, True)


def test_cifar10_spec_validates_and_dry_runs_on_built_shards(tmp_path: Path) -> None:
    files, _ = cifar10_files()
    build_cifar(
        write_tarball(tmp_path / "c.tar.gz", "cifar-10-batches-py", files), tmp_path / "shards", maxcount=1
    )
    load(SPEC, environ={"CIFAR10_SHARDS": str(tmp_path / "shards")})
    runner = CliRunner()
    env = {"CIFAR10_SHARDS": str(tmp_path / "shards")}
    result = runner.invoke(cli, ["validate", str(SPEC)], env=env)
    assert result.exit_code == 0, result.output
    overrides = [
        "pretrain.batch_size=3",
        "finetune.batch_size=3",
        "distill.batch_size=3",
        "runtime.num_workers=0",
    ]
    args = ["run", str(SPEC), "--dry-run", "--run-dir", str(tmp_path / "run")]
    for override in overrides:
        args += ["--set", override]
    result = runner.invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "run").exists()
