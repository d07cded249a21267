"""The ``contrastive`` command line: the only place that turns errors into messages and exit codes."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from contrastive import __version__
from contrastive.errors import ContrastiveError, FileSystemError, Interrupted
from contrastive.steps import StepCount

if TYPE_CHECKING:
    from contrastive.spec.loader import LoadedSpec

_TRACEBACK_KEY = "traceback"

#: Set for the processes ``--nproc-per-node`` starts: the launcher prints the interruption line once.
LAUNCHED_ENV = "CONTRASTIVE_LAUNCHED"


class SignalLog:
    """The SIGINT / SIGTERM this command received (its handler raises :class:`Interrupted`)."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def handle(self, signum: int, frame: Any) -> None:
        """Signal handler: remember ``signum`` and unwind like Ctrl-C (exit ``128 + signum``)."""
        self.received.append(signum)
        raise Interrupted(signum)


class _Group(click.Group):
    """Click group that shows ContrastiveError as a clean message (a traceback only on request)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return self._invoke_noting_signals(ctx)
        except ContrastiveError as error:
            if ctx.meta.get(_TRACEBACK_KEY):
                raise
            from contrastive.console import print_error

            print_error(error)
            ctx.exit(error.exit_code)
        except OSError as error:  # the file system refused: one line, exit 6
            if ctx.meta.get(_TRACEBACK_KEY):
                raise
            from contrastive.console import print_error

            failure = FileSystemError(_os_error_text(error))
            print_error(failure)
            ctx.exit(failure.exit_code)
        except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM (SignalLog.handle)
            signum = interrupt.signum if isinstance(interrupt, Interrupted) else signal.SIGINT
            if os.environ.get(LAUNCHED_ENV) != "1":  # under --nproc-per-node the launcher says it once
                name = signal.Signals(signum).name
                click.echo(f"interrupted by {name}; run the same command again to resume", err=True)
            ctx.exit(128 + signum)

    def _invoke_noting_signals(self, ctx: click.Context) -> Any:
        """Invoke; a failure after a signal arrived is that interruption (a rank whose peer stopped
        on the same signal can fail in a collective before its own handler runs)."""
        try:
            return super().invoke(ctx)
        except Exception as error:
            received = ctx.obj.received if isinstance(ctx.obj, SignalLog) else []
            if received and not isinstance(error, click.exceptions.Exit | click.ClickException):
                raise Interrupted(received[0]) from error
            raise


def _os_error_text(error: OSError) -> str:
    """``cannot write PATH: Permission denied`` from an OSError."""
    reason = error.strerror or str(error)
    where = error.filename if error.filename is not None else ""
    if where and error.filename2 is not None:
        where = f"{where} -> {error.filename2}"
    return f"file system error at {where}: {reason}" if where else f"file system error: {reason}"


#: A spec file, or the name of a packaged spec (``contrastive specs`` lists them); a local file wins.
spec_argument = click.argument("spec", metavar="SPEC")

overrides_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a spec value, e.g. --set pretrain.epochs=100 (repeatable; validated like the file).",
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="contrastive")
@click.option("--traceback", is_flag=True, help="Show the Python traceback of an error (for debugging).")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, traceback: bool, verbose: int) -> None:
    """SimCLRv2 from one declarative spec: pretrain, fine-tune on few labels, distill."""
    ctx.meta[_TRACEBACK_KEY] = traceback
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@cli.command("list-plugins")
@click.option("--category", help="Only this category (augmentations, encoders, heads, losses, ...).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of records instead of a table.")
def list_plugins(category: str | None, as_json: bool) -> None:
    """List every installed component with the plugin and distribution that provides it."""
    from contrastive.console import print_plugins_table
    from contrastive.plugins import load_registry

    records = [entry.as_record() for entry in load_registry().components(category)]
    if as_json:
        click.echo(json.dumps(records, indent=2))
    else:
        print_plugins_table(records)


@cli.command("specs")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of records instead of a table.")
def specs_command(as_json: bool) -> None:
    """List the ready specs that come with the package (run one with `contrastive run NAME`)."""
    from contrastive.spec.packaged import packaged_specs, specs_folder, summary

    records = [
        {"name": name, "summary": summary(path), "path": str(path)} for name, path in packaged_specs().items()
    ]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(caption=f"in {specs_folder()}; run one with: contrastive run NAME")
    table.add_column("name", no_wrap=True)
    table.add_column("what")
    for record in records:
        table.add_row(record["name"], record["summary"])
    Console().print(table)


@cli.command()
@spec_argument
@overrides_option
def validate(spec: str, overrides: tuple[str, ...]) -> None:
    """Check a spec (a file or a packaged spec's name) and report every problem at once."""
    from contrastive.console import print_ok
    from contrastive.spec.loader import load
    from contrastive.spec.packaged import find_spec

    load(find_spec(spec), overrides)
    print_ok("spec is valid")


@cli.command("show-spec")
@spec_argument
@overrides_option
def show_spec(spec: str, overrides: tuple[str, ...]) -> None:
    """Print the resolved spec (a file or a packaged spec's name), every default filled in, as TOML."""
    from contrastive.rundir import resolved_text
    from contrastive.spec.loader import load
    from contrastive.spec.packaged import find_spec

    click.echo(resolved_text(load(find_spec(spec), overrides)), nl=False)


@cli.command()
@spec_argument
@overrides_option
@click.option("--stage", "stages", multiple=True, help="Run only this stage (repeatable).")
@click.option(
    "--run-dir", type=click.Path(path_type=Path), help="Run directory (default runs/<experiment name>)."
)
@click.option("--force", is_flag=True, help="Reuse a run directory that holds a run of a different spec.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check the spec, every stage's data and the run directory; write nothing, run no stage.",
)
@click.option(
    "--nproc-per-node",
    type=click.IntRange(min=1),
    help="Start torchrun with this many processes on this machine (same as torchrun ... -m contrastive run).",
)
def run(
    spec: str,
    overrides: tuple[str, ...],
    stages: tuple[str, ...],
    run_dir: Path | None,
    force: bool,
    dry_run: bool,
    nproc_per_node: int | None,
) -> None:
    """Run SPEC's stages in order (pretrain, finetune, distill); rerunning resumes.

    SPEC is a spec file or the name of a packaged spec (`contrastive specs` lists them).
    """
    from contrastive.console import ProgressReporter, print_ok, print_summary
    from contrastive.rundir import check_run_dir
    from contrastive.runner import preflight
    from contrastive.runner import run as run_stages
    from contrastive.spec.loader import load
    from contrastive.spec.packaged import find_spec

    loaded = load(find_spec(spec), overrides)
    unknown = [s for s in stages if s not in loaded.spec.stages()]
    if unknown:
        from contrastive.plugins import close_matches

        hints = [close_matches(s, loaded.spec.stages()) for s in unknown]
        named = [f'{s} (did you mean "{h[0]}"?)' if h else s for s, h in zip(unknown, hints, strict=True)]
        raise click.BadParameter(
            f"{', '.join(named)} not in this spec (it has: {', '.join(loaded.spec.stages())})",
            param_hint="--stage",
        )
    selected = [s for s in loaded.spec.stages() if not stages or s in stages]
    if nproc_per_node is not None:
        # Everything the ranks would check first, checked once here: no worker starts for nothing.
        preflight(loaded, selected, nproc_per_node)
        check_run_dir(loaded, run_dir, force=force)
        sys.exit(_launch_torchrun(nproc_per_node, sys.argv[1:]))
    if dry_run:
        from contrastive.console import print_plan

        sources = preflight(loaded, selected, 1)
        directory = check_run_dir(loaded, run_dir, force=force)
        print_ok(f"run directory {directory}: spec and data checked, nothing written (dry run)")
        print_plan(_dry_run_plan(loaded, selected, directory, sources))
        return
    outcome = run_stages(loaded, run_dir=run_dir, stages=stages, force=force, reporter=ProgressReporter())
    if outcome.is_main:
        print_summary(str(outcome.run_dir), outcome.results, outcome.skipped)


def _dry_run_plan(
    loaded: LoadedSpec, selected: list[str], directory: Path, sources: dict[str, Any]
) -> list[dict[str, Any]]:
    """What ``run`` would do with each selected stage, read without writing anything.

    Each record holds ``stage``, ``epochs``, ``steps_per_epoch`` and ``steps`` (the total, capped by
    ``max_steps``; both None when the dataset does not count its batches) on one process,
    ``capped`` (whether ``max_steps`` cut it, or bounds an unknown total) and ``skipped``
    (whether :func:`contrastive.runner.complete_stages` says the run would skip it).

    Args:
        loaded: The spec, its data checked.
        selected: The stages to run, in order.
        directory: The run directory (it may not exist).
        sources: The data sources :func:`contrastive.runner.preflight` opened.
    """
    from contrastive.runner import complete_stages

    complete = complete_stages(loaded, directory, selected)
    records: list[dict[str, Any]] = []
    for name in selected:
        table = getattr(loaded.spec, name)
        source = sources.get(f"{name}.dataset")
        counted = getattr(source, "steps_per_epoch", None)
        per_epoch = int(counted(table.batch_size)) if callable(counted) else None
        steps = None
        if per_epoch is not None:
            samples = int(getattr(source, "num_samples", per_epoch * table.batch_size))
            steps = StepCount(table.steps, samples, table.batch_size, table.epochs, per_epoch).total
        capped = bool(table.max_steps) and (steps is None or table.max_steps < steps)
        records.append(
            {
                "stage": name,
                "epochs": table.epochs,
                "steps_per_epoch": per_epoch,
                "steps": table.max_steps if capped else steps,
                "capped": capped,
                "skipped": name in complete,
            }
        )
    return records


def _launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Re-run this command under torchrun (single node), without --nproc-per-node."""
    import subprocess

    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            kept.append(arg)
    command = [sys.executable, "-m", "contrastive.cli.launch", "--standalone", f"--nproc-per-node={nproc}"]
    # torchrun runs in its own session: a signal reaches it once, forwarded from here (Ctrl-C in a
    # terminal would otherwise reach it twice), and it stops its workers before it exits.
    env = {**os.environ, LAUNCHED_ENV: "1"}
    child = subprocess.Popen([*command, "-m", "contrastive", *kept], start_new_session=True, env=env)
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise Interrupted(received[0])
    return code


@cli.command()
@click.argument("stage_dir", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
def export(stage_dir: Path, out: Path) -> None:
    """Write the encoder of a finished stage (RUN_DIR/STAGE) as a plain state_dict to OUT."""
    from contrastive.console import print_ok
    from contrastive.export import export as export_encoder

    path, torchvision_name = export_encoder(stage_dir, out)
    loadable = f"; loads into torchvision.models.{torchvision_name}()" if torchvision_name else ""
    print_ok(f"wrote {path}{loadable}")


def _add_subcommands() -> None:
    from contrastive.cli.bench import bench
    from contrastive.cli.evaluate import eval_command
    from contrastive.cli.importer import import_group
    from contrastive.cli.shards import shards

    cli.add_command(shards)
    cli.add_command(bench)
    cli.add_command(import_group)
    cli.add_command(eval_command)


_add_subcommands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (SIGINT and SIGTERM unwind and exit 130 / 143)."""
    signals = SignalLog()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signals.handle)
    cli.main(args=argv, prog_name="contrastive", standalone_mode=True, obj=signals)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
