"""The ``contrastive`` command line: the only place that turns errors into messages and exit codes."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from contrastive import __version__
from contrastive.errors import ContrastiveError

_TRACEBACK_KEY = "traceback"


class _Group(click.Group):
    """Click group that shows ContrastiveError as a clean message (a traceback only on request)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ContrastiveError as error:
            if ctx.meta.get(_TRACEBACK_KEY):
                raise
            from contrastive.console import print_error

            print_error(error)
            ctx.exit(error.exit_code)


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


@cli.command()
@click.argument("spec", type=click.Path(path_type=Path))
@overrides_option
def validate(spec: Path, overrides: tuple[str, ...]) -> None:
    """Check a spec and report every problem at once (exit 0 and "spec is valid" when none)."""
    from contrastive.console import print_ok
    from contrastive.spec.loader import load

    load(spec, overrides)
    print_ok("spec is valid")


@cli.command("show-spec")
@click.argument("spec", type=click.Path(path_type=Path))
@overrides_option
def show_spec(spec: Path, overrides: tuple[str, ...]) -> None:
    """Print the resolved spec, every default filled in, as TOML."""
    from contrastive.rundir import resolved_text
    from contrastive.spec.loader import load

    click.echo(resolved_text(load(spec, overrides)), nl=False)


@cli.command()
@click.argument("spec", type=click.Path(path_type=Path))
@overrides_option
@click.option("--stage", "stages", multiple=True, help="Run only this stage (repeatable).")
@click.option("--run-dir", type=click.Path(path_type=Path), help="Run directory (default runs/<experiment name>).")
@click.option("--force", is_flag=True, help="Reuse a run directory that holds a run of a different spec.")
def run(spec: Path, overrides: tuple[str, ...], stages: tuple[str, ...], run_dir: Path | None, force: bool) -> None:
    """Validate SPEC, prepare the run directory and run its stages in order."""
    from contrastive.console import print_ok
    from contrastive.rundir import prepare
    from contrastive.spec.loader import load

    loaded = load(spec, overrides)
    unknown = [s for s in stages if s not in loaded.spec.stages()]
    if unknown:
        raise click.BadParameter(
            f"{', '.join(unknown)} not in this spec (it has: {', '.join(loaded.spec.stages())})",
            param_hint="--stage",
        )
    directory = prepare(loaded, run_dir, force=force)
    print_ok(f"run directory {directory}: wrote spec.resolved.toml and plugins.json")


def _register_subcommands() -> None:
    from contrastive.cli.shards import shards

    cli.add_command(shards)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        _register_subcommands()
    except ImportError:  # pragma: no cover - partial installs
        pass
    cli.main(args=argv, prog_name="contrastive", standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
