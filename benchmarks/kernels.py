"""How far the digits demo's results move with the CPU's float kernels and the thread count.

Runs ``contrastive run SPEC`` (default: the packaged ``digits_1pct``, seed 0) once per
configuration ``CAPABILITY:THREADS[:ISA]``: ``ATEN_CPU_CAPABILITY=CAPABILITY`` (which vectorised
kernels torch's own operators use: ``default``, ``avx2``, ``avx512`` on x86), ``--set
runtime.threads=THREADS`` and, when given, ``ONEDNN_MAX_CPU_ISA=ISA`` (the instruction set oneDNN,
which runs torch's CPU convolutions, may use: ``SSE41``, ``AVX``, ``AVX2``, ``AVX512_CORE``, ...;
``ATEN_CPU_CAPABILITY`` does not reach it, so a CPU with other vector units also convolves with
other kernels). By default every capability this CPU has, at 1 and 2 threads, oneDNN
unrestricted. Prints one row per configuration (pretraining kNN, fine-tuned and distilled top-1,
minutes) and each column's spread (largest minus smallest), the figure the README's demo table
reports. Rerunning with the same ``--out`` reuses finished runs (``contrastive run`` skips
finished stages).

Run: ``python benchmarks/kernels.py [--configs default:1,avx2:2,avx2:2:SSE41] [--set KEY=VALUE ...]
[--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import attrs


@attrs.frozen
class Outcome:
    """The three results of one configuration (fractions; None where a stage wrote none)."""

    config: str
    knn: float | None
    finetuned: float | None
    distilled: float | None
    minutes: float


def available_capabilities() -> list[str]:
    """``default`` and the vector extensions torch can use on this CPU (x86 Linux: from cpuinfo)."""
    found = ["default"]
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return found
    if " avx2" in flags:
        found.append("avx2")
    if " avx512f" in flags and " avx512bw" in flags and " avx512vl" in flags and " avx512dq" in flags:
        found.append("avx512")
    return found


def _result(path: Path, key: str) -> float | None:
    if not path.exists():
        return None
    value = json.loads(path.read_text()).get(key)
    return float(value) if value is not None else None


def parse_config(config: str) -> tuple[str, int, str] | None:
    """``CAPABILITY:THREADS[:ISA]`` as (capability, threads, oneDNN ISA or ""); None if malformed."""
    parts = config.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].isdigit() or int(parts[1]) < 1:
        return None
    isa = parts[2] if len(parts) == 3 else ""
    if len(parts) == 3 and not isa.replace("_", "").isalnum():
        return None
    return parts[0], int(parts[1]), isa.upper()


def run_config(spec: str, config: str, parsed: tuple[str, int, str], sets: list[str], out: Path) -> Outcome:
    """One ``contrastive run`` under ``config``, given as ``parse_config`` returned it."""
    capability, threads, isa = parsed
    name = f"{capability}_t{threads}" + (f"_{isa.lower()}" if isa else "")
    run_dir = out / name
    command = [sys.executable, "-m", "contrastive", "run", spec, "--run-dir", str(run_dir)]
    for item in [f"runtime.threads={threads}", *sets]:
        command += ["--set", item]
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    started = time.perf_counter()
    log = out / f"{name}.log"
    with log.open("a") as sink:  # a rerun over finished runs keeps their training logs
        done = subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        print(f"{config}: exit {done.returncode}, see {log}", file=sys.stderr)
    return Outcome(
        config=config,
        knn=_result(run_dir / "pretrain" / "results.json", "knn_top1"),
        finetuned=_result(run_dir / "finetune" / "results.json", "top1"),
        distilled=_result(run_dir / "distill" / "results.json", "top1"),
        minutes=(time.perf_counter() - started) / 60,
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _spread(values: list[float | None]) -> str:
    present = [v for v in values if v is not None]
    return f"{100 * (max(present) - min(present)):.1f}" if len(present) > 1 else "-"


def table(outcomes: list[Outcome]) -> str:
    """Markdown: a row per configuration and the spread (points) of each result."""
    lines = [
        "| kernels:threads[:oneDNN ISA] | pretraining kNN | fine-tuned | distilled | minutes |",
        "|---|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.config} | {_pct(o.knn)} | {_pct(o.finetuned)} | {_pct(o.distilled)} | {o.minutes:.1f} |"
        )
    columns = ([o.knn for o in outcomes], [o.finetuned for o in outcomes], [o.distilled for o in outcomes])
    lines.append(f"| spread (points) | {' | '.join(_spread(c) for c in columns)} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="digits_1pct", help="spec file or packaged spec name")
    parser.add_argument(
        "--configs",
        default="",
        help="comma-separated CAPABILITY:THREADS[:ONEDNN_ISA] "
        "(default: every capability here at 1 and 2 threads)",
    )
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for every run")
    parser.add_argument("--out", type=Path, default=Path("runs/kernels"), help="run directories and logs")
    args = parser.parse_args(argv)
    configs = (
        args.configs.split(",")
        if args.configs
        else [f"{capability}:{threads}" for capability in available_capabilities() for threads in (1, 2)]
    )
    parsed: dict[str, tuple[str, int, str]] = {}
    for config in configs:
        fields = parse_config(config)
        if fields is None:
            parser.error(f"--configs: {config!r} is not CAPABILITY:THREADS[:ISA] (e.g. avx2:2, avx2:2:SSE41)")
        parsed[config] = fields
    args.out.mkdir(parents=True, exist_ok=True)
    outcomes = [run_config(args.spec, config, f, args.sets, args.out) for config, f in parsed.items()]
    print(table(outcomes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
