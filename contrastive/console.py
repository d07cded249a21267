"""Everything the command line shows a person (rich lives here and in the CLI only)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from contrastive.errors import ContrastiveError, SpecError


def stdout_console() -> Console:
    """Console for results (tables, specs)."""
    return Console(soft_wrap=True)


def stderr_console() -> Console:
    """Console for errors and progress."""
    return Console(stderr=True, soft_wrap=True)


def print_error(error: ContrastiveError) -> None:
    """Show a user error: one line per spec problem, else the message, prefixed with ``error:``."""
    console = stderr_console()
    if isinstance(error, SpecError):
        count = len(error.problems)
        console.print(f"[bold red]error:[/] spec has {count} problem{'s' if count != 1 else ''}:", highlight=False)
        for problem in error.problems:
            console.print(f"  {problem}", markup=False, highlight=False)
    else:
        console.print("[bold red]error:[/] ", end="", highlight=False)
        console.print(str(error), markup=False, highlight=False)


def print_plugins_table(records: Sequence[dict[str, str]]) -> None:
    """The ``list-plugins`` table: plugin, distribution, version, category, component, summary."""
    table = Table(title="contrastive plugins", show_lines=False)
    for column in ("plugin", "distribution", "version", "category", "component", "summary"):
        table.add_column(column, overflow="fold")
    for record in records:
        table.add_row(
            record["plugin"],
            record["distribution"],
            record["version"],
            record["category"],
            record["name"],
            record["summary"],
        )
    stdout_console().print(table)


def print_ok(message: str) -> None:
    """A success line on stdout."""
    stdout_console().print(f"[green]{message}[/]", highlight=False)
