"""Wall time of the digits demo: today's code and spec against this checkout's, alternating.

``contrastive run digits_1pct`` is what a new user runs first. This script runs it (all three
stages, each in a fresh run directory) as separate processes:

- ``before``: the code and ``specs/digits_1pct.toml`` of ``--baseline-ref`` (default ``370a7b2``,
  the commit before the speed-ups), extracted with ``git archive`` into a temporary folder and put
  first on ``PYTHONPATH`` (the entry points of this checkout's install resolve to its modules);
- ``after``: this checkout and its ``specs/digits_1pct.toml``;
- any ``--variant NAME='--set key=value ...'``: this checkout with those overrides (to measure
  a candidate setting before it goes into the spec).

Cases alternate within every round (the order reversed every other round), so that load from
other users of a shared machine hits every case alike; each case's wall time and CPU time (its
processes and data workers) is summed over the rounds and printed with its ratio to ``before``.
Each run's stage wall times (``results.json``) and accuracies (kNN top-1 after pretraining, top-1
after fine-tuning and distillation) are printed too.

Run: ``python benchmarks/demo_speed.py`` (the whole demo, two rounds: about 25 minutes alone on
2 cores); ``--scale 0.2`` shortens every stage's epochs to a fifth (the accuracies then mean
nothing, the ratio is still the demo's).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs

REPO = Path(__file__).resolve().parent.parent
#: Epochs of each stage in the demo spec (scaled by ``--scale``).
EPOCHS = {"pretrain": 50, "finetune": 400, "distill": 60}
#: The accuracy each stage's results.json reports.
ACCURACY = {"pretrain": "knn_top1", "finetune": "top1", "distill": "top1"}


@attrs.frozen
class Case:
    """One configuration: spec file, extra ``--set`` overrides, ``PYTHONPATH`` (None: this checkout)."""

    name: str
    spec: Path
    sets: tuple[str, ...] = ()
    pythonpath: str | None = None


@attrs.define
class Totals:
    """Sums over the rounds of one case."""

    wall: float = 0.0
    cpu: float = 0.0
    runs: int = 0


def extract_baseline(ref: str, into: Path) -> Path:
    """``contrastive``, ``plugins`` (as ``contrastive_plugins``) and ``specs`` of ``ref`` under ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "contrastive", "plugins", "specs"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "contrastive_plugins").symlink_to(into / "plugins", target_is_directory=True)
    return into


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_case(
    case: Case, run_dir: Path, scale: float, data: Path, stage: str | None = None
) -> tuple[float, float, dict[str, str]]:
    """One demo run (or its ``stage`` alone): wall seconds, CPU seconds, ``stage: "wall s, accuracy"``."""
    command = [sys.executable, "-m", "contrastive", "run", str(case.spec), "--run-dir", str(run_dir)]
    if stage is not None:
        command += ["--stage", stage]
    if scale != 1.0:
        for name, epochs in EPOCHS.items():
            command += ["--set", f"{name}.epochs={max(1, round(epochs * scale))}"]
    for item in case.sets:
        command += ["--set", item]
    env = {**os.environ, "CONTRASTIVE_DATA": str(data)}
    if case.pythonpath is not None:
        env["PYTHONPATH"] = case.pythonpath
    cpu_before, start = _children_cpu(), time.perf_counter()
    process = subprocess.run(command, env=env, capture_output=True, text=True, cwd=run_dir.parent)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu_before
    if process.returncode != 0:
        raise SystemExit(
            f"{case.name}: the demo failed with exit code {process.returncode}:\n{process.stderr}"
        )
    stages = {}
    for name, key in ACCURACY.items():
        if stage is None or name == stage:
            results = json.loads((run_dir / name / "results.json").read_text())
            stages[name] = (
                f"{results['wall_seconds']:.1f} s, {key} {100 * results.get(key, float('nan')):.1f}"
            )
    return wall, cpu, stages


def parse_variant(text: str) -> tuple[str, tuple[str, ...]]:
    """``NAME=--set a=b --set c=d`` to ``(NAME, ("a=b", "c=d"))``."""
    name, _, rest = text.partition("=")
    words = shlex.split(rest)
    if not name or len(words) % 2 or any(flag != "--set" for flag in words[::2]):
        raise SystemExit(f"--variant {text!r}: expected NAME='--set key=value ...'")
    return name, tuple(words[1::2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-ref", default="370a7b2", help="git ref of 'before' (default: 370a7b2)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every stage's epochs (default 1)")
    parser.add_argument(
        "--variant", action="append", default=[], help="NAME='--set key=value ...' (repeatable)"
    )
    parser.add_argument("--stage", choices=sorted(EPOCHS), help="run this stage only (default: all three)")
    parser.add_argument("--after-first", action="store_true", help="start each even round with 'after'")
    parser.add_argument("--no-after", action="store_true", help="leave out 'after' (measure variants only)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="demo_speed_") as tmp:
        root = Path(tmp)
        baseline = extract_baseline(args.baseline_ref, root / "baseline")
        cases = [Case("before", baseline / "specs" / "digits_1pct.toml", pythonpath=str(baseline))]
        if not args.no_after:
            after = Case("after", REPO / "specs" / "digits_1pct.toml")
            cases.insert(0, after) if args.after_first else cases.append(after)
        for text in args.variant:
            name, sets = parse_variant(text)
            cases.append(Case(name, REPO / "specs" / "digits_1pct.toml", sets))
        data = root / "data"
        totals = {case.name: Totals() for case in cases}
        print(f"digits demo, epochs x{args.scale}, {args.rounds} alternating rounds, {os.cpu_count()} CPUs")
        for round_ in range(args.rounds):
            for case in cases if round_ % 2 == 0 else cases[::-1]:
                run_dir = root / f"{case.name}-{round_}" / "run"
                run_dir.parent.mkdir()
                wall, cpu, stages = run_case(case, run_dir, args.scale, data, args.stage)
                total = totals[case.name]
                total.wall, total.cpu, total.runs = total.wall + wall, total.cpu + cpu, total.runs + 1
                detail = "; ".join(f"{stage} {text}" for stage, text in stages.items())
                print(
                    f"  round {round_} {case.name:>10}: wall {wall:7.1f} s, cpu {cpu:7.1f} s ({detail})",
                    flush=True,
                )
        before = totals["before"]
        print("\ncase        wall (sum)   cpu (sum)   wall ratio to before   speed-up")
        for name, total in totals.items():
            ratio = total.wall / before.wall
            print(
                f"{name:>10} {total.wall:10.1f} s {total.cpu:9.1f} s   {ratio:8.3f}"
                f"               x{before.wall / total.wall:.2f}"
            )


if __name__ == "__main__":
    main()
