"""The thread budget on a shared machine: the digits demo alone and two demos at once.

Four cases, each a shortened digits demo (``contrastive run digits_1pct`` with fewer epochs; the
same work in every case) started as separate processes:

- ``alone, threads=T``: one demo with ``runtime.threads = T`` (the old behaviour: torch's default,
  one intra-op thread per core, beside the data worker);
- ``alone, budget``: one demo with ``runtime.threads = 0`` (the usable cores minus the data workers);
- ``two at once, threads=T`` and ``two at once, budget``: two demos started together.

Prints, per case, the wall time and the CPU time (user + system of the demo processes and their data
workers) and both as ratios to ``alone, threads=T`` measured in the same run. The machine is shared,
so only the ratios mean anything. Run: ``python benchmarks/threads.py`` (default: 4 pretraining, 4
fine-tuning and 4 distillation epochs, T = the usable cores).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs


@attrs.frozen
class Measured:
    """One case: seconds of wall time and of CPU time (all its processes together)."""

    case: str
    wall: float
    cpu: float


def _command(run_dir: Path, threads: int, epochs: int) -> list[str]:
    sets = [
        f"runtime.threads={threads}",
        f"pretrain.epochs={epochs}",
        f"finetune.epochs={epochs}",
        f"distill.epochs={epochs}",
        "pretrain.monitor_every=1000",
    ]
    command = [sys.executable, "-m", "contrastive", "run", "digits_1pct", "--run-dir", str(run_dir)]
    for item in sets:
        command += ["--set", item]
    return command


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(case: str, copies: int, threads: int, epochs: int, workdir: Path) -> Measured:
    """Start ``copies`` demos at once and wait for all of them."""
    cpu = _children_cpu()
    start = time.perf_counter()
    processes = [
        subprocess.Popen(
            _command(workdir / f"{case.replace(' ', '_').replace(',', '')}-{i}", threads, epochs),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(copies)
    ]
    for process in processes:
        _, err = process.communicate()
        if process.returncode:
            raise SystemExit(f"{case}: a demo failed with exit code {process.returncode}:\n{err.decode()}")
    return Measured(case, time.perf_counter() - start, _children_cpu() - cpu)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each stage (default 4)")
    parser.add_argument(
        "--threads", type=int, default=0, help="T, the fixed thread count compared (default: usable cores)"
    )
    args = parser.parse_args(argv)
    fixed = args.threads or len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        measure("warm-up (builds the digits shards)", 1, fixed, 1, workdir)
        rows = [
            measure(f"alone, threads={fixed}", 1, fixed, args.epochs, workdir),
            measure("alone, budget", 1, 0, args.epochs, workdir),
            measure(f"two at once, threads={fixed}", 2, fixed, args.epochs, workdir),
            measure("two at once, budget", 2, 0, args.epochs, workdir),
        ]
    base = rows[0]
    print(f"{'case':<26} {'wall s':>8} {'cpu s':>8} {'wall/base':>10} {'cpu/base':>9}")
    for row in rows:
        ratios = f"{row.wall / base.wall:10.2f} {row.cpu / base.cpu:9.2f}"
        print(f"{row.case:<26} {row.wall:8.1f} {row.cpu:8.1f} {ratios}")


if __name__ == "__main__":
    main()
