"""Crash safety: a killed run resumes to the very weights of an uninterrupted one, and a NaN loss
stops the run naming the step while the last good checkpoint stays loadable."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from contrastive.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from contrastive.errors import RunError
from contrastive.interfaces import LossOutput
from contrastive.runner import run
from contrastive.spec.loader import load
from contrastive_plugins.losses import NTXentLoss
from tests.tiny_specs import (
    load_state_dict,
    read_jsonl,
    subprocess_env,
    tiny_pretrain_spec,
    write_spec,
)

pytest_plugins = ["tests.stage_fixtures"]  # its fixtures: digits_data, digits_env

#: ``python -c`` program: ``contrastive ARGS...`` that, once the metrics line of step STEP is
#: written, creates MARKER and sleeps, so the test can SIGKILL it at a known point mid-stage.
_STALL_AFTER_LOGGING = """
import sys, time
from pathlib import Path
import contrastive.engine as engine
from contrastive.cli import main

step, marker = int(sys.argv[1]), Path(sys.argv[2])
write = engine.MetricsLog.write

def write_then_stall(self, record):
    write(self, record)
    if record.get("step") == step:
        marker.touch()
        time.sleep(600)

engine.MetricsLog.write = write_then_stall
main(sys.argv[3:])
"""

#: 100 digits (10 per class) in 17 shards, 32 a step: 3 steps an epoch, so 8 steps span 3 epochs.
_KILL_SPEC = tiny_pretrain_spec(
    dataset='name = "digits"\nsplit = "train"\nlabels_per_class = 10\nlabelled = false',
    batch_size=32,
    epochs=3,
    max_steps=8,
    num_workers=1,
    checkpoint_every=2,
    deterministic=True,
)
_STALL_STEP = 5  # checkpoints at 2 and 4: the kill loses step 5 (logged, not checkpointed)
_EPOCHS = [0, 0, 0, 1, 1, 1, 2, 2]


def _wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            output, _ = process.communicate()
            pytest.fail(f"the run ended (exit {process.returncode}) before step {_STALL_STEP}:\n{output}")
        if time.monotonic() > deadline:
            pytest.fail(f"the run did not reach step {_STALL_STEP} in {timeout} s")
        time.sleep(0.05)


def _start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """A subprocess in its own session (so SIGKILL reaches its data-loader worker too)."""
    return subprocess.Popen(
        [sys.executable, *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _kill(process: subprocess.Popen[str]) -> str:
    """SIGKILL the process and its children (if still running); return what it printed."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    if process.stdout is None or process.stdout.closed:  # already collected
        process.wait(timeout=30)
        return ""
    output, _ = process.communicate(timeout=30)
    return output or ""


def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(digits_env: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "tiny.toml", _KILL_SPEC)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    env = subprocess_env(digits_env)
    command = ["run", str(spec), "--run-dir"]
    marker = tmp_path / "stalled"
    stalling = _start(
        ["-c", _STALL_AFTER_LOGGING, str(_STALL_STEP), str(marker), *command, str(killed)], env, tmp_path
    )
    try:
        run(load(spec), run_dir=whole)  # meanwhile, the reference in this process (one thread too)
        _wait_for(marker, stalling)
        assert latest_checkpoint(killed / "pretrain" / "checkpoints") is not None
        assert not (killed / "pretrain" / "results.json").exists()
        _kill(stalling)
        assert stalling.returncode == -signal.SIGKILL
    finally:
        _kill(stalling)
    metrics_path = killed / "pretrain" / "metrics.jsonl"
    assert [r["step"] for r in read_jsonl(metrics_path)] == [1, 2, 3, 4, 5]
    checkpoints = [p.name for _, p in list_checkpoints(killed / "pretrain" / "checkpoints")]
    assert checkpoints == ["ckpt-00000002.pt", "ckpt-00000004.pt"]

    resumed = subprocess.run(
        [sys.executable, "-m", "contrastive", "-v", *command, str(killed)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stderr and "ckpt-00000004.pt at step 4" in resumed.stderr
    assert "resuming at step 4" in resumed.stdout + resumed.stderr  # the progress report

    # The metrics read as one run (the lost step 5 is logged once, by the resumed run) and
    # the losses after the resume are those of the uninterrupted run.
    after, reference = read_jsonl(metrics_path), read_jsonl(whole / "pretrain" / "metrics.jsonl")
    assert [r["step"] for r in after] == [r["step"] for r in reference] == list(range(1, 9))
    assert [r["epoch"] for r in after] == [r["epoch"] for r in reference] == _EPOCHS
    assert [r["loss"] for r in after] == pytest.approx([r["loss"] for r in reference], rel=0, abs=1e-6)
    ours, theirs = (
        load_state_dict(killed / "pretrain" / "final.pt"),
        load_state_dict(whole / "pretrain" / "final.pt"),
    )
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6, msg=key)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    digits_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(
        tmp_path / "tiny.toml", tiny_pretrain_spec(batch_size=32, max_steps=6, checkpoint_every=1)
    )
    run_dir = tmp_path / "run"
    forward = NTXentLoss.forward
    calls = itertools.count(1)

    def poisoned(self: NTXentLoss, z1: torch.Tensor, z2: torch.Tensor) -> LossOutput:
        out = forward(self, z1, z2)
        return LossOutput(out.loss * float("nan"), out.metrics) if next(calls) >= 4 else out

    monkeypatch.setattr(NTXentLoss, "forward", poisoned)
    with pytest.raises(RunError, match="not finite at step 4") as raised:
        run(load(spec), run_dir=run_dir)
    stage = run_dir / "pretrain"
    latest = latest_checkpoint(stage / "checkpoints")
    assert latest is not None and latest.name == "ckpt-00000003.pt"
    assert str(latest) in str(raised.value)
    state = load_checkpoint(latest)
    assert state["step"] == 3 and state["stage"] == "pretrain"
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert torch.load(latest, map_location="cpu", weights_only=True)["step"] == 3
    assert not (stage / "final.pt").exists() and not (stage / "results.json").exists()
    assert [r["step"] for r in read_jsonl(stage / "metrics.jsonl")] == [1, 2, 3]

    # Without the fault, the same command continues from that checkpoint to the end.
    monkeypatch.setattr(NTXentLoss, "forward", forward)
    outcome = run(load(spec), run_dir=run_dir)
    assert outcome.results["pretrain"]["steps"] == 6
    assert [r["step"] for r in read_jsonl(stage / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert (stage / "final.pt").exists()


def test_nan_between_checks_names_the_first_bad_step_and_saves_nothing_after_it(
    digits_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loss is read back only at log/checkpoint steps; a NaN in between is still caught there,
    named by its own step, and no checkpoint is written from the poisoned weights."""
    spec = write_spec(
        tmp_path / "tiny.toml", tiny_pretrain_spec(batch_size=32, max_steps=8, checkpoint_every=4)
    )
    forward = NTXentLoss.forward
    calls = itertools.count(1)

    def poisoned(self: NTXentLoss, z1: torch.Tensor, z2: torch.Tensor) -> LossOutput:
        out = forward(self, z1, z2)
        return LossOutput(out.loss * float("inf"), out.metrics) if next(calls) in (6, 7) else out

    monkeypatch.setattr(NTXentLoss, "forward", poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(RunError, match="not finite at step 6"):
        run(load(spec, ["runtime.log_every=4"]), run_dir=run_dir)
    latest = latest_checkpoint(run_dir / "pretrain" / "checkpoints")
    assert latest is not None and latest.name == "ckpt-00000004.pt"
    assert [r["step"] for r in read_jsonl(run_dir / "pretrain" / "metrics.jsonl")] == [4]
