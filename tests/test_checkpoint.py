"""Tests for contrastive.checkpoint: atomic writes, pruning, latest selection, weights_only loading, RNG."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from contrastive import checkpoint as ckpt
from contrastive.errors import FileSystemError, RunError


class _Crash(RuntimeError):
    """Stands in for a crash in the middle of writing."""


def _crashing_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
    """A torch.save that writes some bytes, then dies."""
    f.write(b"PK\x03\x04 partial checkpoint bytes")
    f.flush()
    raise _Crash("simulated crash during save")


def _names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def _small_state(step: int) -> dict[str, Any]:
    return {"step": step, "weights": torch.full((3,), float(step))}


def test_save_writes_named_file_and_round_trips(tmp_path: Path) -> None:
    path = ckpt.save_checkpoint(tmp_path, 42, _small_state(42))
    assert path == tmp_path / "ckpt-00000042.pt"
    loaded = ckpt.load_checkpoint(path)
    assert loaded["step"] == 42
    assert torch.equal(loaded["weights"], torch.full((3,), 42.0))
    assert _names(tmp_path) == {"ckpt-00000042.pt"}


def test_save_creates_missing_directory(tmp_path: Path) -> None:
    path = ckpt.save_checkpoint(tmp_path / "a" / "b", 1, _small_state(1))
    assert path.is_file()


@pytest.mark.parametrize("keep", [-1, 0, 1])
def test_keep_below_two_is_rejected_before_writing(tmp_path: Path, keep: int) -> None:
    with pytest.raises(ValueError, match="keep"):
        ckpt.save_checkpoint(tmp_path, 1, _small_state(1), keep=keep)
    assert _names(tmp_path) == set()


def test_negative_step_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="step"):
        ckpt.save_checkpoint(tmp_path, -1, _small_state(0))


def test_pruning_keeps_last_k_and_leaves_other_files(tmp_path: Path) -> None:
    foreign = ["final.pt", "notes.txt", "ckpt-12.pt", "ckpt-00000001.pt.bak", "metrics.json"]
    for name in foreign:
        (tmp_path / name).write_bytes(b"not mine")
    for step in (10, 20, 30, 40, 50):
        ckpt.save_checkpoint(tmp_path, step, _small_state(step), keep=3)
    kept = [step for step, _ in ckpt.list_checkpoints(tmp_path)]
    assert kept == [30, 40, 50]
    assert _names(tmp_path) == set(foreign) | {"ckpt-00000030.pt", "ckpt-00000040.pt", "ckpt-00000050.pt"}
    for name in foreign:
        assert (tmp_path / name).read_bytes() == b"not mine"


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path: Path) -> None:
    for step in (100, 200):
        ckpt.save_checkpoint(tmp_path, step, _small_state(step), keep=2)
    # A resumed run that went back to an earlier step writes below the existing ones.
    path = ckpt.save_checkpoint(tmp_path, 150, _small_state(150), keep=2)
    assert path.is_file()
    assert ckpt.load_checkpoint(path)["step"] == 150


def test_steps_beyond_eight_digits_sort_numerically(tmp_path: Path) -> None:
    for step in (99_999_999, 123_456_789):
        ckpt.save_checkpoint(tmp_path, step, _small_state(step))
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "ckpt-123456789.pt"


def test_crash_during_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ckpt.save_checkpoint(tmp_path, 1, _small_state(1))
    monkeypatch.setattr(torch, "save", _crashing_save)
    with pytest.raises(_Crash):
        ckpt.save_checkpoint(tmp_path, 2, _small_state(2))
    assert not (tmp_path / "ckpt-00000002.pt").exists()
    assert _names(tmp_path) == {first.name}, "the temporary must be removed"
    assert ckpt.latest_checkpoint(tmp_path) == first
    assert ckpt.load_checkpoint(first)["step"] == 1


def test_crash_while_overwriting_same_step_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = ckpt.save_checkpoint(tmp_path, 7, _small_state(7))
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _crashing_save)
    with pytest.raises(_Crash):
        ckpt.save_checkpoint(tmp_path, 7, _small_state(8))
    assert path.read_bytes() == before
    assert _names(tmp_path) == {path.name}


def test_keyboard_interrupt_during_save_removes_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 3, _small_state(3))
    assert _names(tmp_path) == set()
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_stale_temporary_is_ignored_then_cleaned(tmp_path: Path) -> None:
    # What a SIGKILL in the middle of a save would leave behind.
    stale = tmp_path / ".ckpt-00000009.pt.0123456789ab.tmp"
    stale.write_bytes(b"PK\x03\x04 truncated")
    ckpt.save_checkpoint(tmp_path, 5, _small_state(5))
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "ckpt-00000005.pt"
    assert not stale.exists()


def test_latest_checkpoint_picks_highest_step(tmp_path: Path) -> None:
    for step in (3, 11, 7):
        ckpt.save_checkpoint(tmp_path, step, _small_state(step), keep=5)
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest == tmp_path / "ckpt-00000011.pt"
    assert latest is not None and ckpt.load_checkpoint(latest)["step"] == 11


def test_latest_checkpoint_of_missing_or_empty_directory_is_none(tmp_path: Path) -> None:
    assert ckpt.latest_checkpoint(tmp_path) is None
    assert ckpt.latest_checkpoint(tmp_path / "missing") is None


def test_latest_checkpoint_skips_truncated_file(tmp_path: Path) -> None:
    good = ckpt.save_checkpoint(tmp_path, 1, _small_state(1))
    bad = ckpt.save_checkpoint(tmp_path, 2, _small_state(2))
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    assert ckpt.latest_checkpoint(tmp_path) == good


def test_corrupt_checkpoint_raises_run_error_naming_path(tmp_path: Path) -> None:
    path = tmp_path / "ckpt-00000001.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(RunError, match=re.escape(str(path))):
        ckpt.load_checkpoint(path)


def test_truncated_checkpoint_raises_run_error(tmp_path: Path) -> None:
    path = ckpt.save_checkpoint(tmp_path, 1, _small_state(1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(RunError, match=re.escape(str(path))):
        ckpt.load_checkpoint(path)


def test_missing_checkpoint_raises_run_error(tmp_path: Path) -> None:
    with pytest.raises(RunError, match=re.escape("nope.pt")):
        ckpt.load_checkpoint(tmp_path / "nope.pt")


class _NotAllowed:
    """A pickled class that weights_only loading must refuse."""

    def __init__(self) -> None:
        self.value = 1


def test_non_weights_only_content_raises_run_error(tmp_path: Path) -> None:
    path = tmp_path / "ckpt-00000001.pt"
    torch.save({"obj": _NotAllowed()}, path)
    with pytest.raises(RunError, match=re.escape(str(path))):
        ckpt.load_checkpoint(path)


def test_non_dict_checkpoint_raises_run_error(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(RunError, match="expected a dict"):
        ckpt.load_checkpoint(path)


def test_unwritable_destination_raises_a_file_system_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(FileSystemError, match="cannot write"):
        ckpt.save_checkpoint(blocker / "ckpts", 1, _small_state(1))


def _model_and_optimizer(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    return model, optimizer


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    optimizer.zero_grad()
    model(x).square().mean().backward()
    optimizer.step()


def test_real_model_and_optimizer_state_survive_weights_only(tmp_path: Path) -> None:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    model, optimizer = _model_and_optimizer(seed=1)
    _train_step(model, optimizer, x)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": 1,
        "epoch": 0,
        "rng": ckpt.capture_rng_state(),
    }
    path = ckpt.save_checkpoint(tmp_path, 1, state)
    # The file itself loads under the strict loader, not only through our wrapper.
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["step"] == 1 and raw["epoch"] == 0

    loaded = ckpt.load_checkpoint(path)
    restored_model, restored_optimizer = _model_and_optimizer(seed=2)
    restored_model.load_state_dict(loaded["model"])
    restored_optimizer.load_state_dict(loaded["optimizer"])
    momentum = [restored_optimizer.state[p]["momentum_buffer"] for p in restored_model.parameters()]
    expected = [optimizer.state[p]["momentum_buffer"] for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, expected, strict=True))

    # One more identical step from both gives identical parameters (momentum really restored).
    _train_step(model, optimizer, x)
    _train_step(restored_model, restored_optimizer, x)
    for a, b in zip(model.state_dict().values(), restored_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _draw() -> tuple[list[float], list[float], list[float]]:
    python = [random.random(), random.gauss(0.0, 1.0), float(random.randint(0, 10**9))]
    numpy = [*np.random.rand(3).tolist(), float(np.random.normal())]
    return python, numpy, torch.rand(4).tolist()


def test_rng_capture_restore_survives_weights_only_round_trip(tmp_path: Path) -> None:
    # Leave cached Gaussians in both Python's and NumPy's states so that those fields matter.
    random.gauss(0.0, 1.0)
    np.random.normal()
    state = ckpt.capture_rng_state()
    assert state["numpy"]["has_gauss"] == 1
    expected = _draw()
    path = ckpt.save_final(tmp_path / "rng.pt", {"rng": state})
    loaded = torch.load(path, map_location="cpu", weights_only=True)["rng"]
    _draw()  # move every generator on
    ckpt.restore_rng_state(loaded)
    assert _draw() == expected


def test_restore_rng_rejects_malformed_state() -> None:
    state = ckpt.capture_rng_state()
    state["numpy"]["keys"] = torch.zeros(5, dtype=torch.int64)
    with pytest.raises(RunError, match="RNG"):
        ckpt.restore_rng_state(state)
    with pytest.raises(RunError, match="RNG"):
        ckpt.restore_rng_state({"python": {}})


def test_save_final_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ckpt.save_final(tmp_path / "final.pt", {"step": 1})
    monkeypatch.setattr(torch, "save", _crashing_save)
    with pytest.raises(_Crash):
        ckpt.save_final(path, {"step": 2})
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path) == {"step": 1}
    assert _names(tmp_path) == {"final.pt"}


def test_save_final_is_not_pruned_by_checkpoints(tmp_path: Path) -> None:
    ckpt.save_final(tmp_path / "final.pt", {"step": 0})
    for step in range(4):
        ckpt.save_checkpoint(tmp_path, step, _small_state(step), keep=2)
    assert (tmp_path / "final.pt").is_file()
