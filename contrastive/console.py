"""Everything the command line shows a person (rich lives here and in the CLI only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
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
        console.print(
            f"[bold red]error:[/] spec has {count} problem{'s' if count != 1 else ''}:", highlight=False
        )
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
    console = stdout_console()
    if not console.is_terminal:
        console.width = max(console.width, 200)  # piped or captured: never cut names off
    console.print(table)


def print_ok(message: str) -> None:
    """A success line on stdout."""
    stdout_console().print(f"[green]{message}[/]", highlight=False)


class ProgressReporter:
    """Training progress for a person: a rich bar on a terminal, plain log lines otherwise.

    Implements :class:`contrastive.engine.Reporter`.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or stderr_console()
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    def stage_started(self, stage: str, total_steps: int, start_step: int) -> None:
        """Open a bar (or print a line) for the stage."""
        resumed = f" (resuming at step {start_step})" if start_step else ""
        if not self.console.is_terminal:
            self.console.print(f"{stage}: {total_steps} steps{resumed}", highlight=False)
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            stage + resumed, total=total_steps, completed=start_step, status=""
        )

    def step(self, stage: str, step: int, metrics: dict[str, float]) -> None:
        """Update the bar or print a log line."""
        status = _status(metrics)
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=step, status=status)
        else:
            self.console.print(f"{stage} step {step}: {status}", highlight=False)

    def stage_finished(self, stage: str) -> None:
        """Close the bar."""
        if self.progress is not None:
            self.progress.stop()
            self.progress, self.task = None, None


def _status(metrics: dict[str, float]) -> str:
    parts = []
    for key in ("loss", "lr", "images_per_second"):
        if key in metrics:
            label = "img/s" if key == "images_per_second" else key
            parts.append(f"{label} {metrics[key]:.4g}")
    parts += [f"{k} {v:.3f}" for k, v in metrics.items() if "acc" in k or k.startswith("knn")]
    return "  ".join(parts)


def print_summary(run_dir: str, results: dict[str, dict[str, Any]], skipped: tuple[str, ...]) -> None:
    """The end-of-run table: stage, labelled images, top-1, top-5, time."""
    table = Table(title=f"contrastive run: {run_dir}")
    for column in ("stage", "labelled images", "top-1", "top-5", "time", "note"):
        table.add_column(column)
    for stage, result in results.items():
        table.add_row(
            stage,
            str(result.get("labelled_images", "")),
            _percent(result.get("top1")),
            _percent(result.get("top5")),
            f"{result.get('wall_seconds', 0.0):.0f} s",
            "done earlier" if stage in skipped else "",
        )
    stdout_console().print(table)


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}%"
