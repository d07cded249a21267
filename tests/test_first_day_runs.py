"""Issue 25 bugs 1, 2, 3 and 5: a user's first day without surprises (run directory, dry run,
plugin errors, signals).

1. Nothing is written into the run directory before every check passed and the first stage built
   its components: the corrected command then runs without ``--force``, no ``*.replaced-N``.
2. ``--dry-run`` writes nothing (not even the digits shards) and reports what a run would hit first.
3. An exception raised by plugin code is a plugin error naming the component and its distribution
   (exit 3, traceback under ``-v``), never a skipped sample.
5. SIGINT / SIGTERM write a checkpoint at the interrupted step; the rerun resumes there and ends
   bit-identical to an uninterrupted run (one process and two gloo ranks).
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from contrastive import registry as plugins
from contrastive.checkpoint import list_checkpoints
from contrastive.cli import cli
from contrastive.errors import Interrupted, PluginCodeError
from contrastive.interrupts import Interrupts
from contrastive.lock import FolderLock
from contrastive.registry import Registry, discover_entry_points, load_registry
from contrastive.runner import run
from contrastive.spec.loader import load
from tests import fake_plugins
from tests._multiprocess import run_distributed
from tests.conftest import entry_point
from tests.tiny_specs import (
    DIGITS_SPEC,
    TINY_DIGITS_OVERRIDES,
    subprocess_env,
    tiny_pretrain_spec,
    write_spec,
)

pytest_plugins = ["tests.stage_fixtures"]  # digits_data, digits_env

FIRST_DAY_DIST = "contrastive-firstday"
TINY_ENCODER = 'name = "resnet"\ndepth = 18\ncifar_stem = true\nbase_width = 4'


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def _sets(*overrides: str) -> list[str]:
    return [item for o in overrides for item in ("--set", o)]


def _registry() -> Registry:
    buggy = entry_point("firstday", fake_plugins.FirstDay(), FIRST_DAY_DIST, "0.1.0")
    return load_registry([*discover_entry_points(), buggy], disabled=())


@pytest.fixture
def buggy_plugin_installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI's registry also finds the test's buggy plugin."""
    buggy = entry_point("firstday", fake_plugins.FirstDay(), FIRST_DAY_DIST, "0.1.0")
    found = discover_entry_points()
    monkeypatch.setattr(plugins, "discover_entry_points", lambda: [*found, buggy])
    yield


def _replaced(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob("*.replaced-*"))


# --- bug 1: nothing written before every check passes -------------------------------------------


def test_a_missing_finetune_init_writes_nothing_and_the_corrected_command_runs_without_force(
    digits_env: Path, tmp_path: Path
) -> None:
    run_dir, pretrained = tmp_path / "run", tmp_path / "pretrained"
    base = [
        "run",
        str(DIGITS_SPEC),
        "--stage",
        "finetune",
        "--run-dir",
        str(run_dir),
        *_sets(*TINY_DIGITS_OVERRIDES),
    ]
    missing = tmp_path / "missing.pt"
    result = _cli(*base, "--set", f"finetune.init={missing}")
    assert result.exit_code == 5, result.output
    assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())
    assert "finetune.init" in result.output and str(missing) in result.output

    result = _cli(
        "run",
        str(DIGITS_SPEC),
        "--stage",
        "pretrain",
        "--run-dir",
        str(pretrained),
        *_sets(*TINY_DIGITS_OVERRIDES),
    )
    assert result.exit_code == 0, result.output
    result = _cli(*base, "--set", f"finetune.init={pretrained / 'pretrain' / 'final.pt'}")
    assert result.exit_code == 0, result.output
    assert (run_dir / "finetune" / "final.pt").exists() and not _replaced(run_dir)


def test_a_missing_teacher_or_previous_stage_fails_before_anything_is_written(
    digits_env: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    common = ["run", str(DIGITS_SPEC), "--run-dir", str(run_dir), *_sets(*TINY_DIGITS_OVERRIDES)]
    result = _cli(*common, "--stage", "distill", "--set", f"distill.teacher={tmp_path / 'nope.pt'}")
    assert result.exit_code == 5 and "distill.teacher" in result.output, result.output
    result = _cli(*common, "--stage", "distill")  # the run directory holds no finetune result
    assert result.exit_code == 5 and "run the finetune stage first" in result.output, result.output
    assert not run_dir.exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="needs wandb NOT installed")
def test_a_missing_logger_extra_fails_before_anything_is_written(digits_env: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    common = [
        "run",
        str(DIGITS_SPEC),
        "--stage",
        "pretrain",
        "--run-dir",
        str(run_dir),
        *_sets(*TINY_DIGITS_OVERRIDES),
    ]
    result = _cli(*common, "--set", 'runtime.loggers=[{name = "wandb"}]')
    assert result.exit_code == 3, result.output
    assert "contrastive[wandb]" in result.output
    assert not run_dir.exists()
    result = _cli(*common)  # the same spec without the logger: no clash, no --force
    assert result.exit_code == 0, result.output
    assert not _replaced(run_dir)


def test_a_plugin_builder_error_writes_nothing_and_names_the_plugin(digits_env: Path, tmp_path: Path) -> None:
    registry, run_dir = _registry(), tmp_path / "run"
    good = write_spec(tmp_path / "good.toml", tiny_pretrain_spec(max_steps=2))
    bad = write_spec(tmp_path / "bad.toml", good.read_text().replace(TINY_ENCODER, 'name = "broken_encoder"'))
    with pytest.raises(PluginCodeError) as failure:
        run(load(bad, registry=registry), run_dir=run_dir)
    assert "encoders 'broken_encoder'" in str(failure.value) and FIRST_DAY_DIST in str(failure.value)
    assert "RuntimeError" in str(failure.value) and "Traceback" in failure.value.details
    assert not run_dir.exists()
    outcome = run(load(good, registry=registry), run_dir=run_dir)  # no clash: nothing was recorded
    assert outcome.results["pretrain"]["steps"] == 2 and not _replaced(run_dir)


def test_a_later_stage_failing_to_build_needs_no_force_for_the_corrected_command(
    digits_env: Path, tmp_path: Path
) -> None:
    registry, run_dir = _registry(), tmp_path / "run"
    scratch = ("finetune.init=scratch", "finetune.from_layer=0", "finetune.encoder.name=broken_encoder")
    with pytest.raises(PluginCodeError, match="encoders 'broken_encoder'"):
        run(load(DIGITS_SPEC, [*TINY_DIGITS_OVERRIDES, *scratch], registry=registry), run_dir=run_dir)
    assert (run_dir / "pretrain" / "final.pt").exists() and not (run_dir / "finetune").exists()
    # The corrected finetune table: pretraining is reused, no --force, nothing set aside.
    outcome = run(load(DIGITS_SPEC, TINY_DIGITS_OVERRIDES, registry=registry), run_dir=run_dir)
    assert outcome.skipped == ("pretrain",) and not _replaced(run_dir)


# --- bug 2: --dry-run writes nothing and reports what a run would hit ---------------------------


def test_dry_run_builds_no_shards_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, run_dir = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    monkeypatch.setenv("CONTRASTIVE_DATA", str(data))
    result = _cli("run", str(DIGITS_SPEC), "--dry-run", "--run-dir", str(run_dir))
    assert result.exit_code == 0, result.output
    assert "would build the digits shards in" in result.output
    assert not list(data.iterdir()) and not run_dir.exists()


def test_dry_run_reports_missing_inputs_a_missing_extra_and_a_locked_run_directory(
    digits_env: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    common = ["run", str(DIGITS_SPEC), "--dry-run", "--run-dir", str(run_dir), *_sets(*TINY_DIGITS_OVERRIDES)]
    result = _cli(*common, "--set", f"finetune.init={tmp_path / 'missing.pt'}")
    assert result.exit_code == 5 and "finetune.init" in result.output, result.output
    result = _cli(*common, "--set", f"distill.teacher={tmp_path / 'missing.pt'}")
    assert result.exit_code == 5 and "distill.teacher" in result.output, result.output
    if importlib.util.find_spec("wandb") is None:
        result = _cli(*common, "--set", 'runtime.loggers=[{name = "wandb"}]')
        assert result.exit_code == 3 and "contrastive[wandb]" in result.output, result.output
    assert not run_dir.exists()
    run_dir.mkdir()
    with FolderLock(run_dir, "a run"):
        result = _cli(*common)
    assert result.exit_code == 5 and "is in use by a run of pid" in result.output, result.output
    assert sorted(p.name for p in run_dir.iterdir()) == []


def test_dry_run_says_an_interrupted_stage_resumes_at_its_checkpoint(
    digits_env: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    common = [
        "run",
        str(DIGITS_SPEC),
        "--stage",
        "pretrain",
        "--run-dir",
        str(run_dir),
        *_sets(*TINY_DIGITS_OVERRIDES),
    ]
    assert _cli(*common).exit_code == 0
    (run_dir / "pretrain" / "results.json").unlink()  # as if stopped after its last checkpoint (step 3)
    result = _cli(*common, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "resume at step 3" in result.output


# --- bug 3: a plugin's exception is the plugin's ----------------------------------------------


@pytest.mark.parametrize(("name", "method"), [("raising", "per_sample"), ("sizeless", "size")])
def test_an_augmentation_raising_is_a_plugin_error_not_skipped_samples(
    digits_env: Path, tmp_path: Path, name: str, method: str
) -> None:
    spec = write_spec(tmp_path / "spec.toml", tiny_pretrain_spec(augmentation=f'name = "{name}"'))
    with pytest.raises(PluginCodeError) as failure:
        run(load(spec, registry=_registry()), run_dir=tmp_path / "run")
    message = str(failure.value)
    assert f"augmentations {name!r}" in message and FIRST_DAY_DIST in message, message
    assert f"{method} raised AttributeError" in message and "not in the data" in message, message
    assert failure.value.exit_code == 3


def test_a_plugin_error_in_a_data_loader_worker_is_one_line_with_its_traceback_under_verbose(
    digits_env: Path, tmp_path: Path, buggy_plugin_installed: None
) -> None:
    text = tiny_pretrain_spec(augmentation='name = "raising_on_square"', num_workers=1)
    spec = write_spec(tmp_path / "spec.toml", text)
    quiet = _cli("run", str(spec), "--run-dir", str(tmp_path / "a"))
    assert quiet.exit_code == 3, quiet.output
    assert "augmentations 'raising_on_square'" in quiet.output and FIRST_DAY_DIST in quiet.output
    assert "Traceback" not in quiet.output and "skipped" not in quiet.output
    verbose = _cli("-v", "run", str(spec), "--run-dir", str(tmp_path / "b"))
    assert verbose.exit_code == 3
    assert "Traceback" in verbose.output and "no_such_method" in verbose.output


# --- bug 5: a signal keeps the progress ----------------------------------------------------------


class _SignalAt:
    """A reporter that delivers ``count`` signals to ``interrupts`` once step ``step`` is reported."""

    def __init__(self, interrupts: Interrupts, step: int, count: int = 1) -> None:
        self.interrupts, self.at, self.count = interrupts, step, count

    def stage_started(self, stage: str, total_steps: int, start_step: int) -> None:
        pass

    def step(self, stage: str, step: int, metrics: dict[str, float]) -> None:
        if step == self.at:
            for _ in range(self.count):
                self.interrupts.handle(signal.SIGINT, None)

    def stage_finished(self, stage: str) -> None:
        pass


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "pretrain" / "final.pt", weights_only=True)
    return {k: v for k, v in state["state_dict"].items() if isinstance(v, torch.Tensor)}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _signal_spec(tmp_path: Path) -> Path:
    # checkpoint_every far beyond the run: the only checkpoint before the end is the signal's.
    text = tiny_pretrain_spec(batch_size=32, epochs=2, max_steps=6, checkpoint_every=1000, deterministic=True)
    return write_spec(tmp_path / "signal.toml", text)


def test_a_signal_checkpoints_the_step_and_the_rerun_matches_an_uninterrupted_run(
    digits_env: Path, tmp_path: Path
) -> None:
    spec = _signal_spec(tmp_path)
    run(load(spec), run_dir=tmp_path / "reference")
    interrupts = Interrupts()
    with pytest.raises(Interrupted) as stopped:
        run(load(spec), run_dir=tmp_path / "run", reporter=_SignalAt(interrupts, 3), interrupts=interrupts)
    assert stopped.value.signum == signal.SIGINT
    checkpoints = tmp_path / "run" / "pretrain" / "checkpoints"
    assert [step for step, _ in list_checkpoints(checkpoints)] == [3]
    result = _cli("run", str(spec), "--run-dir", str(tmp_path / "run"), "--dry-run")
    assert "resume at step 3" in result.output, result.output
    run(load(spec), run_dir=tmp_path / "run", interrupts=Interrupts())
    assert _same(_final(tmp_path / "run"), _final(tmp_path / "reference"))


def test_a_second_signal_stops_at_once_without_the_checkpoint(digits_env: Path, tmp_path: Path) -> None:
    spec = _signal_spec(tmp_path)
    interrupts = Interrupts()
    with pytest.raises(Interrupted):
        run(
            load(spec),
            run_dir=tmp_path / "run",
            reporter=_SignalAt(interrupts, 3, count=2),
            interrupts=interrupts,
        )
    assert not list_checkpoints(tmp_path / "run" / "pretrain" / "checkpoints")


def _two_rank_run(rank: int, world_size: int, spec: str, run_dir: str, stop_at: int) -> str:
    """One rank of a 2-rank run; rank 0 alone receives a signal after step ``stop_at`` (0: none)."""
    torch.set_num_threads(1)
    interrupts = Interrupts()
    reporter = _SignalAt(interrupts, stop_at) if stop_at and rank == 0 else None
    try:
        run(load(Path(spec)), run_dir=Path(run_dir), reporter=reporter, interrupts=interrupts)
    except Interrupted as stopped:
        return f"interrupted {stopped.signum}"
    return "finished"


def test_two_ranks_agree_on_the_signal_step_and_the_rerun_matches(digits_env: Path, tmp_path: Path) -> None:
    spec = _signal_spec(tmp_path)  # the spawned ranks inherit $CONTRASTIVE_DATA from digits_env
    reference = run_distributed(
        _two_rank_run, str(spec), str(tmp_path / "reference"), 0, init_process_group=False
    )
    stopped = run_distributed(_two_rank_run, str(spec), str(tmp_path / "run"), 3, init_process_group=False)
    checkpoints = list_checkpoints(tmp_path / "run" / "pretrain" / "checkpoints")
    resumed = run_distributed(_two_rank_run, str(spec), str(tmp_path / "run"), 0, init_process_group=False)
    assert reference == ["finished", "finished"] and resumed == ["finished", "finished"]
    assert stopped == [f"interrupted {int(signal.SIGINT)}"] * 2  # rank 1 stopped for rank 0's signal
    assert [step for step, _ in checkpoints] == [3]
    assert _same(_final(tmp_path / "run"), _final(tmp_path / "reference"))


def _command(spec: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "contrastive", "run", str(spec), "--run-dir", str(run_dir)]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_real_signal_mid_stage_checkpoints_and_the_rerun_resumes_there_bit_identical(
    digits_env: Path, tmp_path: Path, signum: int, code: int
) -> None:
    text = tiny_pretrain_spec(batch_size=32, epochs=40, max_steps=40, checkpoint_every=1000, num_workers=1)
    spec = write_spec(tmp_path / "long.toml", text)
    env = subprocess_env(digits_env)
    reference = subprocess.run(
        _command(spec, tmp_path / "reference"), env=env, capture_output=True, text=True
    )
    assert reference.returncode == 0, reference.stderr
    run_dir = tmp_path / "run"
    metrics = run_dir / "pretrain" / "metrics.jsonl"
    process = subprocess.Popen(
        _command(spec, run_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.02)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=60)
    assert process.returncode == code, err
    assert "Traceback" not in err
    steps = [step for step, _ in list_checkpoints(run_dir / "pretrain" / "checkpoints")]
    assert len(steps) == 1 and 3 <= steps[0] < 40, steps
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert max(logged) == steps[0]  # the checkpoint is the last step that ran
    rerun = subprocess.run(_command(spec, run_dir), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert _same(_final(run_dir), _final(tmp_path / "reference"))
