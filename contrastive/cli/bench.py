"""``contrastive bench``: protocols that measure the framework end to end through its own stages."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.group("bench")
def bench() -> None:
    """Measure the framework end to end (label efficiency on the embedded digits data)."""


@bench.command("label-efficiency")
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(min=1), help="Run seeds 0 .. N-1.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("runs/label_efficiency"),
    show_default=True,
    help="Output directory: run directories, label_efficiency.json/.md/.png.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra override for every run of the protocol (repeatable), e.g. --set runtime.device=cpu.",
)
@click.option("--quick", is_flag=True, help="A few steps per stage and a tiny encoder: a smoke run.")
def label_efficiency(seeds: int, out: Path, overrides: tuple[str, ...], quick: bool) -> None:
    """SimCLRv2 vs supervised training with 1 and 13 labels per class on digits (resumable)."""
    from contrastive.bench.label_efficiency import (
        QUICK_OVERRIDES,
        TABLE_FILE,
        Protocol,
        default_specs,
        run_protocol,
    )
    from contrastive.console import ProgressReporter, print_ok

    protocol = Protocol(
        out=out,
        seeds=tuple(range(seeds)),
        specs=default_specs(),
        overrides=(*(QUICK_OVERRIDES if quick else ()), *overrides),
    )
    start = time.perf_counter()
    run_protocol(protocol, reporter=ProgressReporter())
    click.echo((out / TABLE_FILE).read_text(), nl=False)
    print_ok(f"wrote {out}/label_efficiency.json, .md and .png in {time.perf_counter() - start:.0f} s")
