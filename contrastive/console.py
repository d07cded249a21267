"""Everything the command line shows a person (rich lives here and in the CLI only)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console, JustifyMethod
from rich.progress import BarColumn, Task, TaskID
from rich.progress import Progress as RichProgress
from rich.table import Table
from rich.text import Text

from contrastive.errors import ContrastiveError, SpecError
from contrastive.progress import LineProgress, NullProgress, Progress, clock_text


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
    """The ``list-plugins`` table: component (``category.name``), plugin with its distribution and
    version, summary. Component and plugin names are never broken across lines (on a narrow
    terminal the summary wraps instead)."""
    table = Table(title="contrastive plugins", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("component", no_wrap=True)
    table.add_column("plugin (distribution version)", min_width=14)
    table.add_column("summary", overflow="fold", min_width=16)
    for record in records:
        provider = Text(record["plugin"], no_wrap=True)
        provider.append(f"\n({record['distribution']} {record['version']})".replace(" )", ")"))
        table.add_row(f"{record['category']}.{record['name']}", provider, record["summary"])
    console = stdout_console()
    if not console.is_terminal:
        console.width = max(console.width, 200)  # piped or captured: never cut names off
    console.print(table)


def print_component(record: dict[str, str], rows: Sequence[tuple[str, str, str, str]]) -> None:
    """``show-plugin``: a component's provenance, then one row per option (key, type, default,
    meaning with its constraints)."""
    console = stdout_console()
    if not console.is_terminal:
        console.width = max(console.width, 200)
    where = f"{record['distribution']} {record['version']}".strip()
    console.print(
        f"{record['category']}.{record['name']}: {record['summary']}\n"
        f"plugin {record['plugin']!r}" + (f" ({where})" if where else ""),
        markup=False,
        highlight=False,
    )
    if not rows:
        console.print("No options.", highlight=False)
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("option", no_wrap=True)
    table.add_column("type", overflow="fold")
    table.add_column("default", overflow="fold")
    table.add_column("meaning", overflow="fold", min_width=20)
    for key, kind, default, meaning in rows:
        table.add_row(key, kind, default, meaning)
    console.print(table)


def print_ok(message: str) -> None:
    """A success line on stdout."""
    stdout_console().print(f"[green]{message}[/]", highlight=False)


class ProgressReporter:
    """Progress for a person: rich bars on a terminal, plain lines otherwise.

    Implements both :class:`contrastive.engine.Reporter` (a training stage's steps) and
    :class:`contrastive.progress.Progress` (any other long step: shard builds, feature passes,
    linear evaluation, a benchmark's runs). Bars nest: while more than one is open they are shown
    together; a finished inner bar is printed above the live ones and leaves the display. Without
    a terminal, training steps print one line per logged step and other steps print a line every
    10% (:class:`contrastive.progress.LineProgress`), unless ``plain_lines`` is False (a command
    whose output is meant for a program, e.g. ``--json``).

    Args:
        console: Where to show progress; default: standard error.
        plain_lines: Whether to write the other steps' plain lines when not on a terminal.
    """

    def __init__(self, console: Console | None = None, plain_lines: bool = True) -> None:
        self.console = console or stderr_console()
        self.live: _FittedProgress | None = None
        self.stages: dict[str, TaskID] = {}
        self.open: list[TaskID] = []  # Progress tasks, innermost last
        self.lines: Progress = LineProgress(write=self._print_line) if plain_lines else NullProgress()

    # --- contrastive.engine.Reporter ----------------------------------------------------------

    def stage_started(self, stage: str, total_steps: int, start_step: int) -> None:
        """Open a bar (or print a line) for the stage."""
        resumed = f" (resuming at step {start_step})" if start_step else ""
        if not self.console.is_terminal:
            self._print_line(f"{stage}: {total_steps} steps{resumed}")
            return
        self.stages[stage] = self._add(stage + resumed, total_steps, start_step)

    def step(self, stage: str, step: int, metrics: dict[str, float]) -> None:
        """Update the bar or print a log line."""
        status = _status(metrics)
        task = self.stages.get(stage)
        if self.live is not None and task is not None:
            self.live.update(task, completed=step, status=status)
        else:
            self._print_line(f"{stage} step {step}: {status}")

    def stage_finished(self, stage: str) -> None:
        """Close the stage's bar."""
        task = self.stages.pop(stage, None)
        if task is not None:
            self._close(task)

    # --- contrastive.progress.Progress --------------------------------------------------------

    def start(self, total: int | None, label: str) -> None:
        """Open a (nested) bar, or write its first plain line."""
        if not self.console.is_terminal:
            self.lines.start(total, label)
            return
        self.open.append(self._add(label, total, 0))

    def advance(self, n: int = 1) -> None:
        """Count ``n`` finished units of the innermost open bar (thread-safe)."""
        if not self.console.is_terminal:
            self.lines.advance(n)
        elif self.live is not None and self.open:
            self.live.advance(self.open[-1], n)

    def finish(self) -> None:
        """Close the innermost open bar (shown full when it ended early, e.g. a converged fit)."""
        if not self.console.is_terminal:
            self.lines.finish()
            return
        if self.live is None or not self.open:
            return
        task = self.open.pop()
        state = self.live.tasks[self._position(task)]
        if 0 < state.completed < (state.total or 0):
            self.live.update(task, total=state.completed)
        self._close(task)

    # --- shared ---------------------------------------------------------------------------------

    def _print_line(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False)

    def _add(self, description: str, total: int | None, completed: int) -> TaskID:
        if self.live is None:
            self.live = _FittedProgress(console=self.console)
            self.live.start()
        return self.live.add_task(description, total=total, completed=completed, status="")

    def _position(self, task: TaskID) -> int:
        assert self.live is not None
        return [t.id for t in self.live.tasks].index(task)

    def _close(self, task: TaskID) -> None:
        """Stop the task's clock; the last open bar stops the display (which keeps its rows),
        an earlier one is printed above the live bars and removed."""
        if self.live is None:
            return
        self.live.stop_task(task)
        if self.stages or self.open:
            row = self.live.make_tasks_table([self.live.tasks[self._position(task)]])
            self.live.remove_task(task)
            self.live.console.print(row)
        else:
            self.live.stop()
            self.live = None


#: Narrowest progress bar worth drawing, and the widest one drawn.
_BAR_WIDTHS = (10, 40)
#: Narrowest cut-down metrics column worth showing.
_STATUS_MIN = 12


class _FittedProgress(RichProgress):
    """A rich progress display whose rows fit the console width (see :func:`fitted_table`)."""

    def __init__(self, console: Console) -> None:
        self.screen = console  # rich lays out a first frame before ``self.console`` exists
        super().__init__(console=console)

    def make_tasks_table(self, tasks: Iterable[Task]) -> Table:
        """The rows of ``tasks`` laid out for the console's current width."""
        return fitted_table(list(tasks), self.screen.width)


def fitted_table(tasks: Sequence[Task], width: int) -> Table:
    """Progress rows ``name bar done/total elapsed ETA metrics`` that fit ``width`` columns.

    The name, the counts and the elapsed time are always shown in full. What width is left goes
    to the ETA (shown while running), then the bar (10 to 40 columns), then the metrics (cut with
    an ellipsis); each is left out when too little is left for it.
    """
    rows = [task for task in tasks if task.visible]
    cells = [_cells(task) for task in rows]

    def widest(key: str) -> int:
        return max((cell_len(row[key]) for row in cells), default=0)

    room = width - (widest("name") + 1 + widest("counts") + 1 + widest("elapsed"))
    eta = widest("remaining") if 0 < widest("remaining") < room else 0
    room -= eta + 1 if eta else 0
    status = widest("status")
    low, high = _BAR_WIDTHS
    bar = 0
    if room > low:
        bar = max(low, min(high, room - 1 - (status + 1 if status else 0)))
        room -= bar + 1
    status = min(status, room - 1) if room - 1 >= min(status, _STATUS_MIN) else 0

    table = Table.grid(padding=(0, 1))
    layout: list[tuple[str, int]] = [("name", widest("name"))]
    layout += [("bar", bar)] if bar else []
    layout += [("counts", widest("counts")), ("elapsed", widest("elapsed"))]
    layout += [("remaining", eta)] if eta else []
    layout += [("status", status)] if status > 0 else []
    for key, size in layout:
        justify: JustifyMethod = "right" if key in ("counts", "elapsed") else "left"
        table.add_column(width=size, no_wrap=True, overflow="ellipsis", justify=justify)
    for task, row in zip(rows, cells, strict=True):
        table.add_row(
            *(
                BarColumn(bar_width=bar).render(task)
                if key == "bar"
                else Text(row[key], style=_STYLES.get(key, ""))
                for key, _ in layout
            )
        )
    return table


_STYLES = {"name": "bold", "remaining": "cyan", "elapsed": "yellow"}


def _cells(task: Task) -> dict[str, str]:
    """The texts of one progress row."""
    completed = int(task.completed)
    if task.total is None:
        counts = str(completed)
    else:
        total = int(task.total)
        counts = f"{completed:>{len(str(total))}}/{total}"
    elapsed = task.finished_time if task.finished and task.finished_time is not None else task.elapsed
    if task.finished or task.stop_time is not None:
        eta = ""
    elif task.time_remaining is None:
        eta = "ETA -:--:--"
    else:
        eta = f"ETA {clock_text(task.time_remaining)}"
    return {
        "name": task.description,
        "counts": counts,
        "elapsed": clock_text(elapsed or 0.0),
        "remaining": eta,
        "status": str(task.fields.get("status", "")),
    }


def _status(metrics: dict[str, float]) -> str:
    parts = []
    for key in ("loss", "lr", "images_per_second"):
        if key in metrics:
            label = "img/s" if key == "images_per_second" else key
            parts.append(f"{label} {metrics[key]:.4g}")
    parts += [f"{k} {v:.3f}" for k, v in metrics.items() if _is_accuracy(k)]
    return "  ".join(parts)


def _is_accuracy(key: str) -> bool:
    """Whether a logged metric is a share in [0, 1] worth showing beside the loss."""
    return "acc" in key or key.startswith("knn") or key in ("agreement", "top1", "top5")


def print_plan(records: Sequence[dict[str, Any]]) -> None:
    """A dry run's plan: per stage its epochs, steps per epoch, total steps and what would happen.

    Args:
        records: One per selected stage, with ``stage``, ``epochs``, ``steps_per_epoch`` and
            ``steps`` (None: unknown), ``capped`` (cut by ``max_steps``), ``skipped`` (already
            complete) and ``resume_at`` (an interrupted stage's checkpoint step; 0: none).
    """
    table = Table(title="plan (dry run, one process)")
    for column in ("stage", "epochs", "steps/epoch", "total steps", "action"):
        table.add_column(column, justify="right" if "steps" in column or column == "epochs" else "left")
    for record in records:
        per_epoch = record["steps_per_epoch"]
        steps = "?" if record["steps"] is None else str(record["steps"])
        steps += " (max_steps)" if record["capped"] else ""
        if record["skipped"]:
            action = "skip: already complete"
        elif per_epoch is not None and per_epoch < 1:
            action = "fails: fewer samples than one batch"
        elif record.get("resume_at"):
            action = f"resume at step {record['resume_at']}"
        else:
            action = "run"
        table.add_row(
            record["stage"],
            str(record["epochs"]),
            "?" if per_epoch is None else str(per_epoch),
            steps,
            action,
        )
    stdout_console().print(table)


def print_summary(run_dir: str, results: dict[str, dict[str, Any]], skipped: tuple[str, ...]) -> None:
    """The end-of-run table: stage, labelled images, top-1, top-5, time, note.

    A stage without a test top-1 (pretraining) shows its last kNN monitor top-1 instead, marked
    ``(kNN)``.
    """
    table = Table(title=f"contrastive run: {run_dir}")
    for column in ("stage", "labelled images", "top-1", "top-5", "time", "note"):
        table.add_column(column)
    for stage, result in results.items():
        table.add_row(
            stage,
            str(result.get("labelled_images", "")),
            _top1(result),
            _percent(result.get("top5")),
            f"{result.get('wall_seconds', 0.0):.0f} s",
            "done earlier" if stage in skipped else "",
        )
    stdout_console().print(table)


def _top1(result: dict[str, Any]) -> str:
    """A stage's test top-1, else its last kNN monitor top-1 (marked), else ``-``."""
    if result.get("top1") is None and result.get("knn_top1") is not None:
        return f"{_percent(result['knn_top1'])} (kNN)"
    return _percent(result.get("top1"))


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}%"
