"""``contrastive bench``: protocols that measure the framework end to end through its own stages."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

_T = TypeVar("_T")


@click.group("bench")
def bench() -> None:
    """Measure the framework end to end (label efficiency on a spec's data, or on the embedded digits)."""


def _comma_list(
    convert: Callable[[str], _T], check: Callable[[_T], bool], what: str
) -> Callable[..., tuple[_T, ...]]:
    """A click callback turning ``1,10`` into a sorted tuple of distinct values, each checked."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[_T, ...]:
        if value is None:
            return ()
        items = [item.strip() for item in value.split(",")]
        try:
            values = [convert(item) for item in items]
        except ValueError:
            raise click.BadParameter(f"expected a comma-separated list of {what}, got {value!r}") from None
        wrong = [item for item, parsed in zip(items, values, strict=True) if not check(parsed)]
        if wrong:
            raise click.BadParameter(f"expected {what}, got {', '.join(wrong)}")
        return tuple(sorted(set(values)))  # type: ignore[type-var]

    return callback


@bench.command("label-efficiency")
@click.option(
    "--spec",
    metavar="SPEC",
    help="Run the protocol on this spec (a file or a packaged spec's name; docs/label-efficiency.md). "
    "Without it: the digits protocol (digits_1pct / digits_10pct, 1 and 13 labels per class).",
)
@click.option(
    "--labels-per-class",
    "per_class",
    metavar="N,N",
    callback=_comma_list(int, lambda n: n >= 1, "integers >= 1"),
    help="With --spec: label settings of N labels per class, e.g. 1,10 (the default with --spec).",
)
@click.option(
    "--fraction",
    "fractions",
    metavar="P,P",
    callback=_comma_list(float, lambda p: 0.0 < p <= 1.0, "numbers in (0, 1]"),
    help="With --spec: label settings of a share P of every class, e.g. 0.01,0.1.",
)
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
@click.option(
    "--val-per-class",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Hold N images per class out of finetune.dataset (for every seed, disjoint from its labelled "
    "subsets) and choose every arm's setting on their top-1; 0: the spec's finetune.val_dataset, if any.",
)
@click.option(
    "--grid",
    "grid",
    multiple=True,
    metavar="[GROUP:]KEY=V1,V2",
    help="A grid axis (repeatable), e.g. pretrain.loss.temperature=0.2,0.5, finetune.optimizer.lr=0.05,0.1 "
    "or supervised:finetune.optimizer.lr=0.05,0.1; added to the spec's [bench.grid]. "
    "Needs a validation split.",
)
@click.option(
    "--quick",
    is_flag=True,
    help="A few steps per stage and a tiny encoder: a smoke run, after the launch checks of the real "
    "protocol (batch sizes the data can fill, shards for every data-loader worker).",
)
def label_efficiency(
    spec: str | None,
    per_class: tuple[int, ...],
    fractions: tuple[float, ...],
    seeds: int,
    out: Path,
    overrides: tuple[str, ...],
    val_per_class: int,
    grid: tuple[str, ...],
    quick: bool,
) -> None:
    """SimCLRv2 vs supervised training with few labels: five arms per label setting (resumable).

    Arms: supervised (from scratch), linear evaluation of the pretrained encoder, fine-tuned from
    head layer 1, fine-tuned from the encoder, self-distilled; one pretraining per seed serves
    every label setting.
    """
    import attrs

    from contrastive.bench.label_efficiency import (
        DEFAULT_LABELS_PER_CLASS,
        QUICK_OVERRIDES,
        TABLE_FILE,
        Labels,
        digits_protocol,
        launch_checks,
        run_protocol,
        spec_protocol,
    )
    from contrastive.console import ProgressReporter, print_ok

    every = (*(QUICK_OVERRIDES if quick else ()), *overrides)
    if spec is None:
        if per_class or fractions:
            raise click.UsageError(
                "--labels-per-class and --fraction need --spec (the digits protocol is fixed at 1 and 13 "
                "labels per class; --spec digits_1pct runs it with other settings)"
            )
        protocol = digits_protocol(out, range(seeds), every)
    else:
        from contrastive.spec.packaged import find_spec

        if not per_class and not fractions:
            per_class = DEFAULT_LABELS_PER_CLASS
        settings = [Labels(per_class=n) for n in per_class] + [Labels(fraction=p) for p in fractions]
        protocol = spec_protocol(find_spec(spec), settings, out, range(seeds), every)
    protocol = attrs.evolve(protocol, val_per_class=val_per_class, grid=grid)
    if quick:  # the real protocol's launch checks, so that the smoke run fails where it would
        launch_checks(protocol, overrides)
    start = time.perf_counter()
    shown = ProgressReporter()  # one bar over every run, each run's training bar inside it
    run_protocol(protocol, reporter=shown, progress=shown)
    click.echo((out / TABLE_FILE).read_text(), nl=False)
    print_ok(f"wrote {out}/label_efficiency.json, .md and .png in {time.perf_counter() - start:.0f} s")
