"""contrastive.atomic: the one atomic writer (temporary beside the target, fsync, os.replace)."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import IO

import pytest
import torch

from contrastive import atomic
from contrastive.errors import FileSystemError


class _Crash(RuntimeError):
    pass


def _names(directory: Path) -> set[str]:
    return {entry.name for entry in directory.iterdir()}


def test_each_writer_round_trips_and_leaves_no_temporary(tmp_path: Path) -> None:
    atomic.write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic.write_text(tmp_path / "a.txt", "é\n")
    atomic.write_json(tmp_path / "a.json", {"top1": 0.5, "name": "é"})
    atomic.write_torch(tmp_path / "a.pt", {"w": torch.arange(3)})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "é\n"
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == '{\n  "top1": 0.5,\n  "name": "é"\n}\n'
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["w"], torch.arange(3))
    assert _names(tmp_path) == {"a.bin", "a.txt", "a.json", "a.pt"}


def test_overwrite_replaces_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    atomic.write_json(path, {"top1": 0.5, "long": "x" * 100})
    atomic.write_json(path, {"top1": 0.75})
    assert json.loads(path.read_text(encoding="utf-8")) == {"top1": 0.75}
    assert _names(tmp_path) == {"metrics.json"}


def test_missing_folders_are_created(tmp_path: Path) -> None:
    path = atomic.write_text(tmp_path / "a" / "b" / "c.txt", "x")
    assert path.read_text() == "x"


def test_crash_mid_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    path = atomic.write_bytes(tmp_path / "shard.tar", b"old")

    def crash(handle: IO[bytes]) -> None:
        handle.write(b"half of the new")
        raise _Crash("killed mid-write")

    with pytest.raises(_Crash):
        atomic.write_with(path, crash)
    assert path.read_bytes() == b"old"
    assert _names(tmp_path) == {"shard.tar"}


def test_interrupt_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = atomic.write_bytes(tmp_path / "final.pt", b"old")
    with pytest.raises(KeyboardInterrupt), atomic.atomic_file(path) as handle:
        handle.write(b"new")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"old"
    assert _names(tmp_path) == {"final.pt"}


def test_unserialisable_json_raises_before_anything_is_written(tmp_path: Path) -> None:
    path = atomic.write_json(tmp_path / "r.json", {"a": 1})
    with pytest.raises(TypeError):
        atomic.write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert _names(tmp_path) == {"r.json"}


def test_os_error_is_a_file_system_error_naming_the_file_and_removes_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = atomic.write_text(tmp_path / "spec.toml", "old")

    def full_disk(handle: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(FileSystemError, match=r"cannot write .*spec\.toml: No space left"):
        atomic.write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert _names(tmp_path) == {"spec.toml"}


def test_temporary_names_are_recognised(tmp_path: Path) -> None:
    temp = atomic.temporary_name(tmp_path / "ckpt-00000001.pt")
    assert temp.parent == tmp_path
    assert atomic.temporary_target(temp.name) == "ckpt-00000001.pt"
    assert atomic.temporary_target("ckpt-00000001.pt") is None
    assert atomic.temporary_target(".x.tmp") is None


def test_a_full_disk_names_the_bytes_needed_and_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = atomic.write_torch(tmp_path / "ckpt.pt", {"w": torch.zeros(10)})
    state = {"w": torch.ones(1000), "same": None}
    state["same"] = state["w"]  # one storage, counted once
    assert atomic.tensor_bytes(state) == 4000
    monkeypatch.setattr(atomic, "free_bytes", lambda directory: 1234)
    with pytest.raises(FileSystemError) as error:
        atomic.write_torch(path, state)
    message = str(error.value)
    assert "ckpt.pt: No space left on device" in message
    assert "about 4,000 bytes needed, 1,234 bytes free" in message
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(10))
    assert _names(tmp_path) == {"ckpt.pt"}


def test_a_disk_that_fills_while_writing_names_what_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = atomic.write_bytes(tmp_path / "data.bin", b"old")

    def fills(handle: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fills)
    monkeypatch.setattr(atomic, "free_bytes", lambda directory: 0)
    with pytest.raises(
        FileSystemError, match=r"data\.bin: No space left on device \(about 5 bytes needed, 0 bytes free\)"
    ):
        atomic.write_bytes(path, b"newer")
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and _names(tmp_path) == {"data.bin"}


def test_a_read_only_folder_is_one_error_without_a_cleanup_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_open = os.open
    removed: list[object] = []

    def read_only(path: object, *args: object, **kwargs: object) -> int:
        if str(path).endswith(".tmp"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: removed.append(self))
    with caplog.at_level(logging.WARNING), pytest.raises(FileSystemError, match="Read-only file system"):
        atomic.write_text(tmp_path / "model.pt", "x")
    assert removed == [] and not caplog.records


def test_a_folder_is_built_under_a_temporary_name_atomic_recognises(tmp_path: Path) -> None:
    final = tmp_path / "set"
    seen: list[str | None] = []

    def write(folder: Path) -> None:
        folder.mkdir()
        (folder / "a.txt").write_text("a")
        seen.append(atomic.temporary_target(folder.name))
        assert not final.exists()  # nothing under the final name until the rename

    assert atomic.build_folder_once(final, write) == final
    assert seen == ["set"]
    assert (final / "a.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_a_failed_folder_build_leaves_nothing(tmp_path: Path) -> None:
    def write(folder: Path) -> None:
        folder.mkdir()
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        atomic.build_folder_once(tmp_path / "set", write)
    assert list(tmp_path.iterdir()) == []
