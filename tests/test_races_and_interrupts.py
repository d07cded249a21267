"""Issue 14 items 4 and 8 with real processes: one writer per run directory or shard folder, and
SIGTERM/SIGINT stopping a run within seconds, leaving no child process, resumable."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from contrastive.cli import cli
from contrastive.errors import RunLockedError
from contrastive.lock import LOCK_NAME, FolderLock, read_details
from contrastive.runner import run
from contrastive.spec.loader import load
from tests.tiny_specs import subprocess_env, tiny_pretrain_spec, write_spec

pytest_plugins = ["tests.stage_fixtures"]  # digits_data, digits_env

STEPS = 60


def _start(spec: Path, run_dir: Path, data: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "contrastive", "run", str(spec), "--run-dir", str(run_dir)]
    return subprocess.Popen(
        command, env=subprocess_env(data), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(condition, process: subprocess.Popen[str], timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode} early: {process.communicate()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _long_spec(tmp_path: Path, num_workers: int = 0, steps: int = STEPS) -> Path:
    text = tiny_pretrain_spec(batch_size=32, epochs=steps, max_steps=steps, num_workers=num_workers)
    return write_spec(tmp_path / "long.toml", text)


def test_second_run_on_one_directory_stops_at_once_naming_the_holder_and_a_killed_holder_blocks_nothing(
    digits_env: Path, tmp_path: Path
) -> None:
    spec, run_dir = _long_spec(tmp_path, steps=100_000), tmp_path / "run"
    first = _start(spec, run_dir, digits_env)
    try:
        _wait_for(lambda: (run_dir / "pretrain" / "stage_spec.json").exists(), first)
        second = _start(spec, run_dir, digits_env)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 5, err
        assert f"is in use by a run of pid {first.pid} on host " in err and " since " in err
        assert "Traceback" not in err
        assert first.poll() is None  # the first one still trains
    finally:
        first.kill()  # SIGKILL: the lock file stays behind, naming a dead process
        first.communicate(timeout=60)
    assert read_details(run_dir / LOCK_NAME)["pid"] == first.pid
    # The stale lock does not block the next run (a short one, restarting the stage with --force).
    outcome = run(load(spec, ["pretrain.max_steps=2"]), run_dir=run_dir, force=True)
    assert outcome.results["pretrain"] and not (run_dir / LOCK_NAME).exists()


def test_lock_holder_in_another_process_is_named_and_released_when_it_dies(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from contrastive.lock import FolderLock; "
            "FolderLock(Path(sys.argv[1]), 'a shard build').acquire(); "
            "print('held', flush=True); time.sleep(600)",
            str(folder),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"in use by a shard build of pid {holder.pid} on host"):
            FolderLock(folder).acquire()
        # `shards build` into the same folder stops at once with exit 5, naming the holder.
        result = CliRunner().invoke(cli, ["shards", "build", "digits", str(tmp_path)])
        assert result.exit_code == 0  # digits builds into OUT/train and OUT/test, not OUT/shards
        result = CliRunner().invoke(
            cli, ["shards", "subset", str(tmp_path / "train"), str(folder), "--per-class", "1"]
        )
        assert result.exit_code == 5, result.output
        assert f"pid {holder.pid}" in result.output and "Traceback" not in result.output
    finally:
        holder.kill()
        holder.communicate(timeout=60)
    with FolderLock(folder) as lock:  # the kernel released the dead holder's lock
        assert lock.held


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_run_stops_within_seconds_leaves_no_children_and_the_rerun_resumes(
    digits_env: Path, tmp_path: Path, signum: int, code: int
) -> None:
    spec, run_dir = _long_spec(tmp_path, num_workers=2), tmp_path / "run"
    checkpoints = run_dir / "pretrain" / "checkpoints"
    process = _start(spec, run_dir, digits_env)
    try:
        _wait_for(lambda: checkpoints.is_dir() and any(checkpoints.glob("*.pt")), process)
        children = _children(process.pid)
        assert children, "expected data-loader worker processes"
        sent = time.monotonic()
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=60)
    assert process.returncode == code, err
    assert took < 30, took
    name = signal.Signals(signum).name
    assert f"interrupted by {name}; run the same command again to resume" in err
    assert "Traceback" not in err and "Aborted" not in err
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if _alive(pid)], "orphaned child processes"
    assert not (run_dir / LOCK_NAME).exists()

    rerun = _start(spec, run_dir, digits_env)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert (run_dir / "pretrain" / "final.pt").exists()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_a_two_rank_run_stops_torchrun_and_every_worker_in_one_line(
    digits_env: Path, tmp_path: Path, signum: int, code: int
) -> None:
    """As Ctrl-C in a terminal: the signal goes to the command's whole process group."""
    spec, run_dir = _long_spec(tmp_path, num_workers=1), tmp_path / "run"
    checkpoints = run_dir / "pretrain" / "checkpoints"
    command = [sys.executable, "-m", "contrastive", "run", str(spec), "--run-dir", str(run_dir)]
    process = subprocess.Popen(
        [*command, "--nproc-per-node", "2"],
        env=subprocess_env(digits_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: checkpoints.is_dir() and any(checkpoints.glob("*.pt")), process, timeout=240)
        tree = _children(process.pid)
        assert len(tree) >= 5, "expected torchrun, 2 ranks and their data-loader workers"
        os.killpg(process.pid, signum)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            for pid in [process.pid, *_children(process.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.communicate(timeout=60)
    assert process.returncode == code, err
    assert "Traceback" not in out + err and "SignalException" not in err
    assert err.count(f"interrupted by {signal.Signals(signum).name}; run the same command again") == 1
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in tree if _alive(pid)], "orphaned processes"
