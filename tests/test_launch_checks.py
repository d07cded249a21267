"""Issue 14 item 9: mistakes a new user makes stop the run at launch, not after pretraining.

Every stage's data is opened and checked before the first stage starts; file-system problems,
damaged shards and indivisible batches are one clear line with a documented exit code.

Read-only places: the suite runs as root, which writes through permission bits, so an unwritable
place is made as a path below a regular file (``mkdir`` fails with ENOTDIR for every user).
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from contrastive.cli import cli
from contrastive.data.digits import DATA_ENV, ensure_digits
from contrastive.data.imagefolder import build_imagefolder
from contrastive.data.index import index_path, read_index
from contrastive.data.subsets import write_subset
from contrastive.errors import DataError
from contrastive.runner import preflight, run
from contrastive.spec.loader import load
from tests.tiny_specs import DIGITS_SPEC, TINY_DIGITS_OVERRIDES

pytest_plugins = ["tests.stage_fixtures"]  # digits_data, digits_env


def _unwritable(tmp_path: Path) -> Path:
    """A folder that cannot be created, even by root: it lies below a regular file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker / "sub"


def _assert_one_clear_line(output: str, *needles: str) -> None:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    for needle in needles:
        assert needle in lines[0], output


def test_one_shard_finetune_set_with_two_workers_fails_before_pretraining(
    digits_env: Path, tmp_path: Path
) -> None:
    subset = tmp_path / "one-shard-subset"
    write_subset(ensure_digits() / "train", subset, per_class=3, maxcount=1000)
    assert len(read_index(subset).shards) == 1
    overrides = (
        *TINY_DIGITS_OVERRIDES,
        "runtime.num_workers=2",
        "finetune.dataset.name=webdataset",
        f"finetune.dataset.urls={subset}",
    )
    loaded = load(DIGITS_SPEC, overrides)
    with pytest.raises(DataError) as raised:
        run(loaded, run_dir=tmp_path / "run")
    message = str(raised.value)
    assert message.startswith("finetune.dataset: 1 shards cannot feed 1 ranks x 2 data-loader workers")
    assert "contrastive shards subset" in message and "shards build" not in message
    assert not (tmp_path / "run").exists()  # nothing written, pretraining never started


def _tree(root: Path, classes: list[str], per_class: int = 2) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(root / name / f"{name}_{i}.png")
    return root


def test_evaluation_classes_must_agree_with_training_classes_by_name(
    digits_env: Path, tmp_path: Path
) -> None:
    train = build_imagefolder(_tree(tmp_path / "train", ["n01", "n02", "n03"], 4), tmp_path / "train-shards")
    val = build_imagefolder(_tree(tmp_path / "val", ["n01", "n03"]), tmp_path / "val-shards")
    assert train.classes == ("n01", "n02", "n03") and val.classes == ("n01", "n03")
    overrides = (
        *(o for o in TINY_DIGITS_OVERRIDES if not o.startswith("finetune.eval_dataset.")),
        "finetune.dataset.name=webdataset",
        f"finetune.dataset.urls={tmp_path / 'train-shards'}",
        "finetune.eval_dataset.name=webdataset",
        f"finetune.eval_dataset.urls={tmp_path / 'val-shards'}",
    )
    loaded = load(DIGITS_SPEC, overrides)
    expected = r"finetune\.eval_dataset: 2 classes, finetune\.dataset has 3; missing n02"
    with pytest.raises(DataError, match=expected):
        preflight(loaded, loaded.spec.stages(), 1)
    # The same class folders agree.
    same = load(DIGITS_SPEC, (*overrides[:-1], f"finetune.eval_dataset.urls={tmp_path / 'train-shards'}"))
    preflight(same, ["finetune"], 1)


def test_indivisible_batch_with_nproc_per_node_fails_once_before_torchrun(
    digits_env: Path, tmp_path: Path
) -> None:
    args = ["run", str(DIGITS_SPEC), "--run-dir", str(tmp_path / "run"), "--nproc-per-node", "3"]
    for override in TINY_DIGITS_OVERRIDES:
        args += ["--set", override]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.output.count("is not divisible by the 3 ranks") >= 1
    assert result.output.count("pretrain.batch_size: 32 is not divisible by the 3 ranks") == 1
    assert "ChildFailedError" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def _shard(path: Path, samples: int) -> bytes:
    with tarfile.open(path, "w") as tar:
        for i in range(samples):
            for ext, data in (("png", os.urandom(700)), ("cls", str(i % 2).encode())):
                info = tarfile.TarInfo(f"{path.stem}-{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


def test_shards_index_reports_damaged_shards_and_stops_unless_allowed(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    _shard(folder / "a.tar", 10)
    whole = _shard(folder / "b.tar", 10)
    (folder / "b.tar").write_bytes(whole[: 6 * 1536])  # cut at a member boundary
    overwritten = bytearray(_shard(folder / "c.tar", 10))
    overwritten[4 * 1536 : 4 * 1536 + 4096] = os.urandom(4096)
    (folder / "c.tar").write_bytes(bytes(overwritten))

    runner = CliRunner()
    result = runner.invoke(cli, ["shards", "index", str(folder)])
    assert result.exit_code == 4, result.output
    _assert_one_clear_line(result.output, "2 of 3 shards", "b.tar", "c.tar", "--allow-damaged")
    assert not index_path(folder).exists()

    result = runner.invoke(cli, ["shards", "index", str(folder), "--allow-damaged"])
    assert result.exit_code == 0, result.output
    assert "left 2 damaged shard(s) out of the index: b.tar, c.tar" in result.output
    index = read_index(folder)
    assert [s.name for s in index.shards] == ["a.tar"] and index.total == 10
    assert index.build is not None and index.build["damaged"] == ["b.tar", "c.tar"]


def test_file_system_errors_are_one_line_with_exit_code_6(
    digits_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    base = ["run", str(DIGITS_SPEC)]
    for override in TINY_DIGITS_OVERRIDES:
        base += ["--set", override]
    unwritable = _unwritable(tmp_path)
    for extra in ([], ["--dry-run"]):
        result = runner.invoke(cli, [*base, "--run-dir", str(unwritable), *extra])
        assert result.exit_code == 6, result.output
        _assert_one_clear_line(result.output, "error:", str(unwritable))
    a_file = tmp_path / "a-file"
    result = runner.invoke(cli, [*base, "--run-dir", str(a_file), "--dry-run"])
    assert result.exit_code == 6
    _assert_one_clear_line(result.output, f"run directory {a_file} is a file, not a folder")

    result = runner.invoke(cli, ["shards", "build", "digits", str(unwritable)])
    assert result.exit_code == 6, result.output
    _assert_one_clear_line(result.output, "error:", "Not a directory")

    monkeypatch.setenv(DATA_ENV, str(unwritable))
    result = runner.invoke(cli, [*base, "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 6, result.output
    _assert_one_clear_line(result.output, "error:", str(unwritable))
    assert not (tmp_path / "run").exists()
