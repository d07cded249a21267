"""A file system that fills mid-run (counterpart of ``benchmarks/faults.py``'s ``full-disk``): the run
stops with one error naming the checkpoint and the bytes needed, earlier checkpoints stay loadable,
no temporary is left, and once space is back the same command finishes with the weights of a run
that never ran out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from contrastive import atomic
from contrastive.checkpoint import list_checkpoints, load_checkpoint
from contrastive.cli import cli
from contrastive.errors import FileSystemError
from contrastive.runner import run
from contrastive.spec.loader import load
from tests.tiny_specs import load_state_dict, tiny_pretrain_spec, write_spec

pytest_plugins = ["tests.stage_fixtures"]


def _disk_fills_after_the_first_checkpoint(monkeypatch: pytest.MonkeyPatch, checkpoints: Path) -> None:
    """From the second checkpoint on, the file system reports 1 KiB free."""
    real = atomic.free_bytes

    def free(directory: Path) -> int | None:
        if directory == checkpoints and list(checkpoints.glob("ckpt-*.pt")):
            return 1024
        return real(directory)

    monkeypatch.setattr(atomic, "free_bytes", free)


def test_a_full_disk_stops_the_run_cleanly_and_the_rerun_finishes_identically(
    digits_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(
        tmp_path / "tiny.toml", tiny_pretrain_spec(batch_size=32, max_steps=4, checkpoint_every=1)
    )
    full, whole = tmp_path / "full", tmp_path / "whole"
    run(load(spec), run_dir=whole)
    checkpoints = full / "pretrain" / "checkpoints"
    _disk_fills_after_the_first_checkpoint(monkeypatch, checkpoints)
    with pytest.raises(FileSystemError) as error:
        run(load(spec), run_dir=full)
    message = str(error.value)
    assert "ckpt-00000002.pt: No space left on device" in message
    assert "bytes needed, 1,024 bytes free" in message and "run the same command again" in message
    assert [p.name for _, p in list_checkpoints(checkpoints)] == ["ckpt-00000001.pt"]
    assert load_checkpoint(checkpoints / "ckpt-00000001.pt")["step"] == 1
    assert not list(full.rglob(".*.tmp")) and not (full / "pretrain" / "final.pt").exists()

    monkeypatch.undo()
    run(load(spec), run_dir=full)
    ours, theirs = (
        load_state_dict(full / "pretrain" / "final.pt"),
        load_state_dict(whole / "pretrain" / "final.pt"),
    )
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_the_command_line_says_it_in_one_line_with_exit_code_6(
    digits_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(
        tmp_path / "tiny.toml", tiny_pretrain_spec(batch_size=32, max_steps=3, checkpoint_every=1)
    )
    _disk_fills_after_the_first_checkpoint(monkeypatch, tmp_path / "run" / "pretrain" / "checkpoints")
    result = CliRunner().invoke(cli, ["run", str(spec), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 6, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if "No space left" in line]
    assert len(lines) == 1 and "bytes needed" in lines[0]
