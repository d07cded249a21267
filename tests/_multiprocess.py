"""Run a function in several real processes joined by a gloo process group (for tests).

Usage, from a test module::

    from tests._multiprocess import run_distributed

    def _work(rank: int, world_size: int, x: torch.Tensor) -> torch.Tensor:
        return contrastive.distributed.gather_with_grad(x[rank : rank + 1])

    def test_gather() -> None:
        results = run_distributed(_work, torch.arange(2.0))  # one result per rank

The function must be defined at module level (it is pickled by reference into spawned
processes) and receives ``(rank, world_size, *args)``; what it returns must be picklable and comes
back in rank order. Each process sees torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), runs on one CPU thread, and by default finds the
default process group already initialised on gloo (pass ``init_process_group=False`` to let the
function call :func:`contrastive.distributed.setup` itself). An exception in any process fails the
caller (:class:`DistributedFailure`, an AssertionError) with every process's traceback; a hang
fails it after ``timeout`` seconds.

Spawning costs a few seconds: put several checks into one function rather than one run each.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

_ADDRESS = "127.0.0.1"
_PORT_RETRIES = 3
_GRACE_S = 5.0  # after one process fails, time the others get to fail with their own errors


class DistributedFailure(AssertionError):
    """A spawned process raised or died; the message holds every process's traceback."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_ADDRESS, 0))
        port: int = sock.getsockname()[1]
        return port


def _worker(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    result_dir: str,
    init: bool,
    timeout: float,
    args: tuple[Any, ...],
) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": _ADDRESS,
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world_size),
        }
    )
    torch.set_num_threads(1)
    try:
        if init:
            dist.init_process_group(
                backend="gloo",
                init_method="env://",
                rank=rank,
                world_size=world_size,
                timeout=datetime.timedelta(seconds=timeout),
            )
        result = fn(rank, world_size, *args)
        torch.save(result, Path(result_dir) / f"rank{rank}.pt")
        if dist.is_available() and dist.is_initialized():
            # Rank 0 hosts the store: it must not exit while others still use it (e.g. to connect
            # a subgroup that rank 0 is not in).
            dist.barrier()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _failures(context: mp.ProcessContext) -> str:
    """Every process's traceback (the first process to die is not always the cause)."""
    parts = []
    for index, path in enumerate(context.error_files):
        if path and os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path, "rb") as fh:
                parts.append(f"-- process {index} raised:\n{pickle.load(fh)}")
        elif context.processes[index].exitcode not in (0, None):
            parts.append(f"-- process {index} exited with code {context.processes[index].exitcode}")
    return "\n".join(parts)


def _join(context: mp.ProcessContext, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=max(0.1, deadline - time.monotonic()), grace_period=_GRACE_S):
            if time.monotonic() >= deadline:
                for process in context.processes:
                    if process.is_alive():
                        process.terminate()
                for process in context.processes:
                    process.join(5)
                raise AssertionError(f"distributed run did not finish within {timeout:.0f} s (deadlock?)")
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        raise DistributedFailure(_failures(context) or str(exc)) from None


def run_distributed(
    fn: Callable[..., Any],
    *args: Any,
    world_size: int = 2,
    timeout: float = 120.0,
    init_process_group: bool = True,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes on gloo.

    Args:
        fn: Module-level function (picklable by reference).
        *args: Picklable arguments passed to every process (tensors included).
        world_size: Number of processes.
        timeout: Seconds before a hung run fails (also the gloo collective timeout).
        init_process_group: Initialise the default gloo group before calling ``fn``.

    Returns:
        ``fn``'s return value of each rank, in rank order.

    Raises:
        DistributedFailure: A process raised or died (every process's traceback included).
        AssertionError: The run did not finish within ``timeout``.
    """
    for attempt in range(_PORT_RETRIES):
        with tempfile.TemporaryDirectory(prefix="contrastive-mp-") as result_dir:
            context = mp.start_processes(
                _worker,
                args=(fn, world_size, free_port(), result_dir, init_process_group, timeout, args),
                nprocs=world_size,
                join=False,
                start_method="spawn",
            )
            try:
                _join(context, timeout)
            except DistributedFailure as exc:
                if "address already in use" in str(exc).lower() and attempt + 1 < _PORT_RETRIES:
                    continue  # another process took the port between our probe and the bind
                raise
            return [
                torch.load(Path(result_dir) / f"rank{rank}.pt", weights_only=False)
                for rank in range(world_size)
            ]
    raise AssertionError("unreachable")  # pragma: no cover
