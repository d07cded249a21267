"""Counterparts of ``benchmarks/faults.py``'s ``elastic`` and ``two-nodes`` scenarios.

- ``torchrun --max-restarts 1`` with rank 0 SIGKILLed mid-run: the job completes by itself and its
  final weights equal an uninterrupted 2-rank run's (with torch 2.14 the restart failed to connect
  until the ranks met in a store of their own attempt: ``contrastive.distributed``);
- two torchrun agents of one rank each (``--nnodes 2``, c10d rendezvous on 127.0.0.1) train exactly
  like one agent of two ranks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.tiny_specs import load_state_dict, read_jsonl, subprocess_env, tiny_pretrain_spec, write_spec

pytest_plugins = ["tests.stage_fixtures"]  # digits_data, digits_env

STEPS = 8
TIMEOUT = 300


def _torchrun(*flags: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *flags, "-m", "contrastive", "run"]


def _start(command: list[str], data: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(command, env=subprocess_env(data), stdout=handle, stderr=subprocess.STDOUT)


def _wait(process: subprocess.Popen[bytes], log: Path) -> None:
    try:
        code = process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"hung:\n{log.read_text(errors='replace')[-3000:]}") from None
    assert code == 0, log.read_text(errors="replace")[-3000:]


def _rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def _workers(agent: int) -> dict[int, int]:
    """Rank to pid of the processes torchrun started below ``agent``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == agent:
                rank = _rank_of(int(entry.name))
                if rank is not None:
                    found[rank] = int(entry.name)
    return found


def _last_step(run_dir: Path) -> int:
    path = run_dir / "pretrain" / "metrics.jsonl"
    with contextlib.suppress(OSError, ValueError):
        records = read_jsonl(path)
        return int(records[-1]["step"]) if records else 0
    return 0


def _same_weights(a: Path, b: Path) -> None:
    ours, theirs = load_state_dict(a / "pretrain" / "final.pt"), load_state_dict(b / "pretrain" / "final.pt")
    assert ours.keys() == theirs.keys()
    assert [key for key in ours if not torch.equal(ours[key], theirs[key])] == []


@pytest.fixture(scope="module")
def two_rank_reference(digits_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The spec, and an uninterrupted 2-rank run of it (one torchrun agent)."""
    folder = tmp_path_factory.mktemp("elastic")
    text = tiny_pretrain_spec(batch_size=32, epochs=STEPS, max_steps=STEPS, checkpoint_every=2)
    # The same thread count however the ranks are spread (the budget gives a lone rank 2 here).
    text = text.replace("[runtime]\n", "[runtime]\nthreads = 1\n", 1)
    spec = write_spec(folder / "tiny.toml", text)
    run_dir = folder / "reference"
    log = folder / "reference.log"
    _wait(
        _start(
            [*_torchrun("--standalone", "--nproc-per-node=2"), str(spec), "--run-dir", str(run_dir)],
            digits_data,
            log,
        ),
        log,
    )
    return spec, run_dir


def test_a_restart_after_rank_0_was_killed_finishes_with_the_uninterrupted_weights(
    digits_env: Path, tmp_path: Path, two_rank_reference: tuple[Path, Path]
) -> None:
    spec, reference = two_rank_reference
    run_dir, log = tmp_path / "run", tmp_path / "elastic.log"
    command = [*_torchrun("--standalone", "--nproc-per-node=2", "--max-restarts=1"), str(spec)]
    agent = _start([*command, "--run-dir", str(run_dir)], digits_env, log)
    try:
        deadline = time.monotonic() + TIMEOUT
        while _last_step(run_dir) < 3:
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[
                -3000:
            ]
            time.sleep(0.02)
        workers = _workers(agent.pid)
        assert sorted(workers) == [0, 1]
        os.kill(workers[0], signal.SIGKILL)
        _wait(agent, log)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert "restart" in log.read_text(errors="replace").lower()
    _same_weights(run_dir, reference)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_agents_of_one_rank_train_like_one_agent_of_two(
    digits_env: Path, tmp_path: Path, two_rank_reference: tuple[Path, Path]
) -> None:
    spec, reference = two_rank_reference
    port = _free_port()
    flags = ("--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}")
    command = [*_torchrun(*flags, f"--rdzv-id=test-{port}"), str(spec), "--run-dir", str(tmp_path / "run")]
    logs = [tmp_path / "node-a.log", tmp_path / "node-b.log"]
    agents = [_start(command, digits_env, log) for log in logs]
    try:
        for agent, log in zip(agents, logs, strict=True):
            _wait(agent, log)
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    first = read_jsonl(tmp_path / "run" / "pretrain" / "metrics.jsonl")[0]
    assert first["loss"] == read_jsonl(reference / "pretrain" / "metrics.jsonl")[0]["loss"]
    _same_weights(tmp_path / "run", reference)
