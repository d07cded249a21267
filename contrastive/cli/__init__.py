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

from contrastive.errors import ContrastiveError, FileSystemError, Interrupted
from contrastive.interrupts import Interrupts
from contrastive.steps import StepCount
from contrastive.version import __version__

if TYPE_CHECKING:
    from contrastive.rundir import RunDirectory
    from contrastive.spec.loader import LoadedSpec

_TRACEBACK_KEY = "traceback"

#: Set for the processes ``--nproc-per-node`` starts: the launcher prints the interruption line once.
LAUNCHED_ENV = "CONTRASTIVE_LAUNCHED"


#: ``ctx.meta`` key of the ``-v`` count (a plugin's traceback is shown from ``-v`` on).
_VERBOSE_KEY = "verbose"


class _Group(click.Group):
    """Click group that shows ContrastiveError as a clean message (a traceback only on request)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return self._invoke_noting_signals(ctx)
        except ContrastiveError as error:
            if ctx.meta.get(_TRACEBACK_KEY):
                raise
            from contrastive.console import print_error
            from contrastive.environment import installation_problem

            error = installation_problem(error) or error  # a plugin failing on a broken torchvision
            print_error(error)
            details = getattr(error, "details", "")
            if details and ctx.meta.get(_VERBOSE_KEY):
                click.echo(details.rstrip(), err=True)
            ctx.exit(error.exit_code)
        except OSError as error:  # the file system refused: one line, exit 6
            if ctx.meta.get(_TRACEBACK_KEY):
                raise
            from contrastive.console import print_error

            failure = FileSystemError(_os_error_text(error))
            print_error(failure)
            ctx.exit(failure.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as error:  # a broken installation is not a bug: one line, exit 3
            from contrastive.environment import installation_problem

            problem = installation_problem(error)
            if problem is None or ctx.meta.get(_TRACEBACK_KEY):
                raise
            from contrastive.console import print_error

            print_error(problem)
            ctx.exit(problem.exit_code)
        except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM (Interrupts.handle)
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
            received = ctx.obj.received if isinstance(ctx.obj, Interrupts) else []
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
    ctx.meta[_VERBOSE_KEY] = verbose
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@cli.command("list-plugins")
@click.option("--category", help="Only this category (augmentations, encoders, heads, losses, ...).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of records instead of a table.")
def list_plugins(category: str | None, as_json: bool) -> None:
    """List every installed component with the plugin and distribution that provides it."""
    from contrastive.console import print_plugins_table
    from contrastive.registry import load_registry

    records = [entry.as_record() for entry in load_registry().components(category)]
    if as_json:
        click.echo(json.dumps(records, indent=2))
    else:
        print_plugins_table(records)


@cli.command("show-plugin")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON record instead of a table.")
def show_plugin(name: str, as_json: bool) -> None:
    """Show a component's options: type, default, constraints and meaning of each.

    NAME is CATEGORY.COMPONENT (losses.nt_xent) or a component name that only one category has.
    """
    from contrastive.console import print_component
    from contrastive.contracts import select
    from contrastive.errors import UnknownComponentError
    from contrastive.registry import load_registry
    from contrastive.spec.reference import option_rows

    entries = [e for e in select(load_registry(), name) if "." in name or e.name == name]
    if len(entries) != 1:
        choices = ", ".join(f"{e.category}.{e.name}" for e in entries)
        what = f"names {len(entries)} components ({choices})" if entries else "is a plugin, not a component"
        raise UnknownComponentError(
            f"{name!r} {what}; give CATEGORY.NAME as `contrastive list-plugins` shows it"
        )
    entry = entries[0]
    rows = option_rows(entry.options)
    if as_json:
        options = [dict(zip(("name", "type", "default", "meaning"), row, strict=True)) for row in rows]
        click.echo(json.dumps({**entry.as_record(), "options": options}, indent=2))
    else:
        print_component(entry.as_record(), rows)


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

    _check_contracts(load(find_spec(spec), overrides))
    print_ok("spec is valid")


def _check_contracts(loaded: LoadedSpec) -> None:
    """Build the components the spec names on dummy inputs (:mod:`contrastive.contracts`).

    Raises:
        ContractError: A component breaks what core relies on (exit 3), one line per rule.
        SpecError: The spec chose a component that cannot serve its stage (a one-view
            augmentation for pretraining).
    """
    from contrastive.contracts import ContractError, check_spec, view_problems
    from contrastive.errors import SpecError

    violations = check_spec(loaded)
    if violations:
        raise ContractError(violations)
    problems = view_problems(loaded)
    if problems:
        raise SpecError(problems)


@cli.command("check-plugin")
@click.argument("name")
@click.option(
    "--size",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Side of the dummy images an encoder is run on.",
)
def check_plugin(name: str, size: int) -> None:
    """Build components on dummy inputs and check what core relies on (exit 3 on a violation).

    NAME is CATEGORY.COMPONENT (encoders.resnet), a component name alone, a plugin's entry-point
    name (all its components) or a distribution name, as `contrastive list-plugins` shows them.
    Components are checked with their default options (`validate SPEC` checks a spec's own).
    """
    from contrastive.console import print_ok
    from contrastive.contracts import NOT_BUILT, ContractError, check_component, required_options, select
    from contrastive.registry import load_registry

    entries = select(load_registry(), name)
    violations = [v for entry in entries for v in check_component(entry, size=size)]
    if violations:
        raise ContractError(violations)
    names = ", ".join(f"{e.category}.{e.name}" for e in entries)
    options_only = sorted({e.category for e in entries if e.category in NOT_BUILT})
    note = f" ({' and '.join(options_only)}: options only, they need data)" if options_only else ""
    unbuilt = [
        f"{e.category}.{e.name} (needs {', '.join(required_options(e))})"
        for e in entries
        if e.category not in NOT_BUILT and required_options(e)
    ]
    if unbuilt:
        note += f"; options only, not built without a spec's required options: {', '.join(unbuilt)}"
    print_ok(f"{len(entries)} checked, no violation: {names}{note}")


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
    from contrastive.rundir import RunDirectory
    from contrastive.runner import check_inputs, preflight
    from contrastive.runner import run as run_stages
    from contrastive.spec.loader import load
    from contrastive.spec.packaged import find_spec

    loaded = load(find_spec(spec), overrides)
    _check_contracts(loaded)
    unknown = [s for s in stages if s not in loaded.spec.stages()]
    if unknown:
        from contrastive.registry import close_matches

        hints = [close_matches(s, loaded.spec.stages()) for s in unknown]
        named = [f'{s} (did you mean "{h[0]}"?)' if h else s for s, h in zip(unknown, hints, strict=True)]
        raise click.BadParameter(
            f"{', '.join(named)} not in this spec (it has: {', '.join(loaded.spec.stages())})",
            param_hint="--stage",
        )
    selected = [s for s in loaded.spec.stages() if not stages or s in stages]
    if dry_run:
        from contrastive.console import print_plan

        pending: list[str] = []
        sources = preflight(loaded, selected, nproc_per_node or 1, pending=pending)
        place = RunDirectory.check(loaded, run_dir, force=force)
        check_inputs(loaded, selected, place.path)
        place.check_unlocked()
        print_ok(f"run directory {place.path}: spec and data checked, nothing written (dry run)")
        for line in pending:
            click.echo(f"  {line} (a real run does this first)")
        print_plan(_dry_run_plan(place, selected, sources))
        return
    if nproc_per_node is not None:
        # Everything the ranks would check first, checked once here: no worker starts for nothing.
        # (the ranks check again, as one rank can only trust what its own process checked)
        preflight(loaded, selected, nproc_per_node)
        place = RunDirectory.check(loaded, run_dir, force=force)
        check_inputs(loaded, selected, place.path)
        place.check_unlocked()
        sys.exit(_launch_torchrun(nproc_per_node, sys.argv[1:]))
    interrupts = click.get_current_context().obj
    outcome = run_stages(
        loaded,
        run_dir=run_dir,
        stages=stages,
        force=force,
        reporter=ProgressReporter(),
        interrupts=interrupts if isinstance(interrupts, Interrupts) else None,
    )
    if outcome.is_main:
        print_summary(str(outcome.run_dir), outcome.results, outcome.skipped)


def _dry_run_plan(place: RunDirectory, selected: list[str], sources: dict[str, Any]) -> list[dict[str, Any]]:
    """What ``run`` would do with each selected stage, read without writing anything.

    Each record holds ``stage``, ``epochs``, ``steps_per_epoch`` and ``steps`` (the total, capped by
    ``max_steps``; both None when the dataset does not count its batches) on one process,
    ``capped`` (whether ``max_steps`` cut it, or bounds an unknown total), ``skipped``
    (whether :meth:`contrastive.rundir.RunDirectory.complete_stages` says the run would skip it)
    and ``resume_at`` (the step an interrupted stage resumes at; 0: it starts afresh).

    Args:
        place: The run directory (it may not exist), its spec's data checked.
        selected: The stages to run, in order.
        sources: The data sources :func:`contrastive.runner.preflight` opened.
    """
    complete = place.complete_stages(selected)
    records: list[dict[str, Any]] = []
    upstream_runs = False
    for name in selected:
        table = getattr(place.loaded.spec, name)
        finished = (place.path / name / "results.json").exists()
        resume_at = 0 if name in complete or (upstream_runs and finished) else place.resume_step(name)
        upstream_runs = upstream_runs or name not in complete
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
                "resume_at": resume_at,
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


#: :data:`contrastive.export.FORMATS`, repeated so that loading the command line does not import
#: torch; a test checks they agree.
EXPORT_FORMATS = ("state_dict", "safetensors", "onnx", "torchscript")


@cli.command()
@click.argument("stage_dir", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "format_",
    type=click.Choice(EXPORT_FORMATS),
    default="state_dict",
    show_default=True,
    help="state_dict: torch.save of the weights; safetensors: weights and metadata; onnx (extra "
    "contrastive[onnx]) and torchscript: the network with the evaluation scaling folded in, input "
    "uint8 [batch, 3, S, S], class names and preprocessing as metadata.",
)
@click.option(
    "--what",
    type=click.Choice(["encoder", "classifier"]),
    default="encoder",
    show_default=True,
    help="The encoder alone (features), or the classifier: encoder, kept head layers, linear "
    "layer (a finetune or distill stage).",
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists (default: refuse).")
def export(stage_dir: Path, out: Path, format_: str, what: str, force: bool) -> None:
    """Export a finished stage (RUN_DIR/STAGE): its encoder or classifier, to OUT.

    The default (a plain state_dict of the encoder) loads into the torchvision network the
    encoder names, where there is one. OUT is written atomically and never replaced without
    --force.
    """
    from contrastive.console import print_ok
    from contrastive.export import export_model

    result = export_model(stage_dir, out, format=format_, what=what, force=force)
    notes = []
    if result.torchvision_name:
        notes.append(f"loads into torchvision.models.{result.torchvision_name}()")
    if result.max_difference is not None:
        notes.append(f"onnxruntime matches PyTorch to {result.max_difference:.2g}")
    detail = f"; {'; '.join(notes)}" if notes else ""
    print_ok(f"wrote {result.path} ({result.what}, {result.format}){detail}")


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Classes per image.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list: one row per image.")
@click.option(
    "--csv",
    "csv_out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write a CSV file (path, class_1, probability_1, ...) instead of printing.",
)
@click.option("--force", is_flag=True, help="Replace the --csv file if it exists (default: refuse).")
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Images per batch."
)
@click.option("--device", default=None, help="Torch device (default: cuda if available, else cpu).")
def predict(
    model: Path,
    inputs: tuple[Path, ...],
    top_k: int,
    as_json: bool,
    csv_out: Path | None,
    force: bool,
    batch_size: int,
    device: str | None,
) -> None:
    """Classify images with a finished stage (RUN_DIR/finetune or distill) or an exported
    classifier (.onnx, TorchScript, .safetensors).

    INPUTS are image files, folders (searched recursively) and shard sets (folders holding
    index.json). Every image gets the stage's evaluation view. Images that cannot be read are
    reported on standard error and skipped; the exit code is 0 when at least one image was
    classified, 4 when none could be.
    """
    if as_json and csv_out is not None:
        raise click.BadParameter("give --json or --csv, not both", param_hint="--json/--csv")
    if csv_out is not None and csv_out.exists() and not force:
        raise click.BadParameter(f"{csv_out} exists (pass --force to replace it)", param_hint="--csv")
    import torch

    from contrastive.console import ProgressReporter, print_ok
    from contrastive.errors import DataError
    from contrastive.predict import open_model
    from contrastive.predict import predict as run_predict

    loaded = open_model(model, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    result = run_predict(
        loaded,
        list(inputs),
        top_k=top_k,
        batch_size=batch_size,
        progress=ProgressReporter(plain_lines=not as_json),
    )
    for failure in result.failures:  # one unwrapped line each, for grep
        click.echo(f"warning: skipped {failure.path}: {failure.reason}", err=True)
    if not result.predictions:
        raise DataError(f"no image could be classified ({len(result.failures)} inputs skipped)")
    skipped = f"; {len(result.failures)} skipped (see the warnings above)" if result.failures else ""
    if as_json:
        click.echo(json.dumps([row.to_json() for row in result.predictions], indent=2))
    elif csv_out is not None:
        from contrastive.predict import write_csv

        write_csv(csv_out, result, top_k)
        print_ok(f"classified {len(result.predictions)} images{skipped}; wrote {csv_out}")
        return
    else:
        for row in result.predictions:
            top = ", ".join(f"{name} {p:.3f}" for name, _, p in row.top)
            click.echo(f"{row.path}\t{top}")
    if result.failures:
        click.echo(f"classified {len(result.predictions)} images; {len(result.failures)} skipped", err=True)


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
    signals = Interrupts()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signals.handle)
    cli.main(args=argv, prog_name="contrastive", standalone_mode=True, obj=signals)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
