"""``contrastive shards``: build, index, subset and inspect WebDataset tar shards.

The main CLI registers the :data:`shards` group; errors are :class:`contrastive.errors.DataError`
and become messages and exit codes there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from contrastive.errors import DataError


@click.group("shards")
def shards() -> None:
    """Write, index, subset and inspect WebDataset tar shards."""


@shards.group("build")
def build() -> None:
    """Write a shard set (with its index.json) from a source."""


def _layout_options(
    *, maxcount: int, workers_help: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options every builder takes: --maxcount, --maxsize, --workers and --seed."""
    options = (
        click.option(
            "--maxcount",
            default=maxcount,
            show_default=True,
            type=click.IntRange(min=1),
            help="Most samples per shard.",
        ),
        click.option(
            "--maxsize",
            default=1_000_000_000,
            show_default=True,
            type=click.IntRange(min=1),
            help="Most bytes per shard.",
        ),
        click.option(
            "--workers", default=1, show_default=True, type=click.IntRange(min=1), help=workers_help
        ),
        click.option("--seed", default=0, show_default=True, help="Seed of the shuffle across shards."),
    )

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _echo_index(out: Path, total: int, num_shards: int, num_classes: int) -> None:
    click.echo(f"{out}: {total} samples in {num_shards} shards, {num_classes} classes")


@build.command("imagefolder")
@click.argument("src", type=click.Path(path_type=Path, file_okay=False))
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@_layout_options(maxcount=1000, workers_help="Shards written at once.")
@click.option(
    "--labels",
    "labels",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Classes by file name instead of class folders (SRC may be flat, e.g. the ImageNet val set): "
    "lines of '<file name> <class>', or lines of '<class>' in sorted file-name order.",
)
def build_imagefolder(
    src: Path, out: Path, maxcount: int, maxsize: int, workers: int, seed: int, labels: Path | None
) -> None:
    """Write the ImageNet-style tree SRC (one folder per class) as shuffled shards in OUT.

    Images keep their original bytes (key jpg, or png etc. by their real format) with cls (class
    index: sorted folder names) and json (original file name, class). With --labels FILE the
    classes come from FILE instead, and SRC may be one flat folder (class index: sorted class
    names of FILE). Rerunning an interrupted build resumes it; the set is complete when
    OUT/index.json exists.
    """
    from contrastive.console import ProgressReporter
    from contrastive.data.imagefolder import build_imagefolder as run

    progress = ProgressReporter()
    index = run(
        src,
        out,
        labels=labels,
        maxcount=maxcount,
        maxsize=maxsize,
        workers=workers,
        seed=seed,
        progress=progress,
    )
    _echo_index(out, index.total, len(index.shards), len(index.classes))


@build.command("cifar")
@click.argument("src", metavar="DIR_OR_TARBALL", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--coarse", is_flag=True, help="CIFAR-100: the 20 coarse classes instead of the 100 fine ones.")
@_layout_options(maxcount=200, workers_help="Threads encoding images and writing shards.")
def build_cifar(
    src: Path, out: Path, coarse: bool, maxcount: int, maxsize: int, workers: int, seed: int
) -> None:
    """Write CIFAR-10 or CIFAR-100 as OUT/train (50,000) and OUT/test (10,000).

    DIR_OR_TARBALL is the python-version archive (cifar-10-python.tar.gz,
    cifar-100-python.tar.gz; read without extracting) or the folder it extracts to. Images are
    stored as lossless 32x32 PNG with cls and json (file name, class); class names come from the
    archive's meta file. Its pickles are read as plain data only: one that would call anything
    else is refused. Rerunning an interrupted build resumes it.
    """
    from contrastive.console import ProgressReporter
    from contrastive.data.cifar import build_cifar as run

    indexes = run(
        src,
        out,
        labels="coarse" if coarse else "fine",
        maxcount=maxcount,
        maxsize=maxsize,
        workers=workers,
        seed=seed,
        progress=ProgressReporter(),
    )
    for split, index in indexes.items():
        _echo_index(out / split, index.total, len(index.shards), len(index.classes))


@build.command("digits")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
def build_digits(out: Path) -> None:
    """Write scikit-learn's handwritten digits as OUT/train (1,297) and OUT/test (500).

    The 8x8 images (16 gray levels, scaled to 0..255) are stored losslessly as PNG; the test split
    is a fixed class-stratified draw of 500 images (seed 0).
    """
    from contrastive.data.digits import write_digits
    from contrastive.data.index import read_index

    write_digits(out)
    for split in ("train", "test"):
        index = read_index(out / split)
        _echo_index(out / split, index.total, len(index.shards), len(index.classes))


def _synthetic_command(name: str, summary: str) -> None:
    """Register ``shards build NAME OUT`` for a procedurally generated set."""

    @build.command(name, help=summary)
    @click.argument("out", type=click.Path(path_type=Path, file_okay=False))
    @click.option("--train-per-class", default=200, show_default=True, type=click.IntRange(min=1))
    @click.option("--test-per-class", default=50, show_default=True, type=click.IntRange(min=1))
    @click.option(
        "--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of every image."
    )
    def command(out: Path, train_per_class: int, test_per_class: int, seed: int) -> None:
        from contrastive.data.index import read_index
        from contrastive.data.synthetic import write_synthetic

        write_synthetic(name, out, train_per_class=train_per_class, test_per_class=test_per_class, seed=seed)
        for split in ("train", "test"):
            index = read_index(out / split)
            _echo_index(out / split, index.total, len(index.shards), len(index.classes))


_synthetic_command(
    "shapes",
    "Write 10 classes of geometric shapes (random colour, place, size, angle; 32 px RGB) as OUT/train "
    "and OUT/test, generated from --seed (contrastive.data.synthetic).",
)
_synthetic_command(
    "textures",
    "Write 10 classes of oriented gratings (5 orientations x 2 frequencies, random colours, phase and "
    "a distractor; 32 px RGB) as OUT/train and OUT/test, generated from --seed (contrastive.data.synthetic).",
)


@shards.command("index")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Shards read at once."
)
@click.option("--force", is_flag=True, help="Replace an existing index.json.")
@click.option(
    "--allow-damaged",
    is_flag=True,
    help="Index the intact shards and leave damaged (truncated, overwritten) ones out, instead of stopping.",
)
def index_command(directory: Path, workers: int, force: bool, allow_damaged: bool) -> None:
    """Write DIR/index.json for shards made elsewhere (jpg/png + cls keys, e.g. public ImageNet copies).

    Damaged shards stop it (exit 4, naming them, no index written) unless --allow-damaged.
    """
    from contrastive.data.scan import index_directory

    index = index_directory(directory, workers=workers, force=force, allow_damaged=allow_damaged)
    _echo_index(directory, index.total, len(index.shards), len(index.classes))
    left_out = (index.build or {}).get("damaged") or []
    if left_out:
        names = ", ".join(left_out)
        click.echo(f"warning: left {len(left_out)} damaged shard(s) out of the index: {names}", err=True)


@shards.command("subset")
@click.argument("src", type=click.Path(path_type=Path, file_okay=False))
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--list",
    "names_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File of names, one <wnid>_<id>.JPEG per line (the published SimCLR 1%/10% lists).",
)
@click.option("--per-class", type=click.IntRange(min=1), help="Draw this many samples of every class.")
@click.option(
    "--fraction",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    help="Draw this share of every class (rounded half up, at least 1 per class).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the draw and of the shuffle.")
@click.option(
    "--maxcount", default=1000, show_default=True, type=click.IntRange(min=1), help="Most samples per shard."
)
@click.option(
    "--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Shards read/written at once."
)
def subset_command(
    src: Path,
    out: Path,
    names_file: Path | None,
    per_class: int | None,
    fraction: float | None,
    seed: int,
    maxcount: int,
    workers: int,
) -> None:
    """Write a labelled subset of the indexed shard set SRC as its own shard set in OUT."""
    from contrastive.console import ProgressReporter
    from contrastive.data.subsets import write_subset

    if sum(x is not None for x in (names_file, per_class, fraction)) != 1:
        raise DataError("choose the subset with exactly one of --list, --per-class and --fraction")
    index = write_subset(
        src,
        out,
        names_file=names_file,
        per_class=per_class,
        fraction=fraction,
        seed=seed,
        maxcount=maxcount,
        workers=workers,
        progress=ProgressReporter(),
    )
    _echo_index(out, index.total, len(index.shards), len(index.classes))


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def _print_summary(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    overview = Table(title=info["directory"], show_header=False)
    overview.add_row("samples", str(info["total"]))
    overview.add_row("classes", str(info["num_classes"]))
    samples, sizes = info["shard_samples"], info["shard_bytes"]
    overview.add_row("shards", str(info["num_shards"]))
    overview.add_row(
        "samples per shard", f"min {samples['min']}, mean {samples['mean']:.1f}, max {samples['max']}"
    )
    overview.add_row(
        "shard size",
        f"min {_size(sizes['min'])}, mean {_size(sizes['mean'])}, max {_size(sizes['max'])}, "
        f"total {_size(sizes['total'])}",
    )
    if info["build"]:
        overview.add_row("built by", str(info["build"].get("kind", "?")))
    if info["missing"]:
        overview.add_row("[red]missing or changed[/red]", ", ".join(info["missing"][:5]))
    if info["damaged"]:
        overview.add_row("[red]damaged[/red]", "; ".join(d["reason"] for d in info["damaged"][:5]))
    console.print(overview)
    counts: dict[str, int] = info["class_counts"]
    if not counts:
        return
    by_size = sorted(counts.items(), key=lambda item: (item[1], item[0]))
    shown = list(counts.items()) if len(counts) <= 40 else by_size[:10] + by_size[-10:]
    title = "samples per class" + ("" if len(counts) <= 40 else " (10 smallest and 10 largest; --json: all)")
    histogram = Table(title=title)
    histogram.add_column("class")
    histogram.add_column("samples", justify="right")
    histogram.add_column("")
    top = max(counts.values()) or 1
    for name, count in shown:
        histogram.add_row(name, str(count), "█" * max(1, round(30 * count / top)) if count else "")
    console.print(histogram)


@shards.command("inspect")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the full summary as JSON.")
def inspect_command(directory: Path, as_json: bool) -> None:
    """Show the sample and class counts, per-class histogram and shard sizes of DIR.

    Every shard's member headers are read (not the images): shards that are damaged or hold
    another number of samples than indexed are listed; a member no shard may hold (a name
    outside DIR, a link, a device) stops it (exit 4).
    """
    from contrastive.data.summary import summarize

    info = summarize(directory)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        _print_summary(info)
