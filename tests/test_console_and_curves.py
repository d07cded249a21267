"""Progress a person can follow (plain lines, rich bars that fit the terminal) and stage curves
that show what a stage achieved (held-out top-1, teacher agreement, one-point series)."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from rich.console import Console
from rich.progress import Progress as RichProgress
from torch import nn

from contrastive.console import ProgressReporter, fitted_table
from contrastive.data.imagefolder import build_imagefolder
from contrastive.evaluate import extract_features
from contrastive.interfaces import Batch
from contrastive.linear_eval import fit_linear_probe
from contrastive.progress import LineProgress, tracked
from contrastive.stages.results import curves_figure, plot_curves
from tests.test_shards import make_tree

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CLOCK = re.compile(r"\d+:\d\d:\d\d")


class Recorder:
    """A :class:`contrastive.progress.Progress` that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...] | tuple[str, int | None, str] | tuple[str, int]] = []

    def start(self, total: int | None, label: str) -> None:
        self.calls.append(("start", total, label))

    def advance(self, n: int = 1) -> None:
        self.calls.append(("advance", n))

    def finish(self) -> None:
        self.calls.append(("finish",))

    def advanced(self) -> int:
        return sum(c[1] for c in self.calls if c[0] == "advance" and isinstance(c[1], int))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- plain lines ----------------------------------------------------------------------------------


def test_line_progress_writes_counts_every_tenth_with_eta() -> None:
    lines: list[str] = []
    clock = FakeClock()
    progress = LineProgress(write=lines.append, clock=clock)
    progress.start(200, "writing shards")
    for _ in range(200):
        clock.now += 0.5
        progress.advance()
    progress.finish()
    assert lines[0] == "writing shards: 0/200"
    assert [line.split(": ")[1].split(" ")[0] for line in lines[1:-1]] == [
        f"{20 * i}/200" for i in range(1, 10)
    ]
    assert lines[1] == "writing shards: 20/200 (10%), 0:00:10 elapsed, ETA 0:01:30"
    assert lines[-1] == "writing shards: 200/200 done in 0:01:40"


def test_line_progress_nests_and_big_advances_write_one_line() -> None:
    lines: list[str] = []
    progress = LineProgress(write=lines.append, clock=FakeClock())
    with tracked(progress, 3, "runs") as advance_runs:
        with tracked(progress, 1000, "features") as advance:
            advance(550)  # past five tenths at once: one line
            advance(450)
        advance_runs(1)
    assert lines == [
        "runs: 0/3",
        "features: 0/1000",
        "features: 550/1000 (55%), 0:00:00 elapsed, ETA 0:00:00",
        "features: 1000/1000 done in 0:00:00",
        "runs: 1/3 (33%), 0:00:00 elapsed, ETA 0:00:00",
        "runs: 1/3 done in 0:00:00",
    ]


def test_reporter_writes_plain_lines_when_not_on_a_terminal() -> None:
    out = io.StringIO()
    reporter = ProgressReporter(Console(file=out, force_terminal=False, width=100))
    reporter.start(50, "features of digits:train (images)")
    reporter.advance(25)
    reporter.advance(25)
    reporter.finish()
    text = out.getvalue()
    assert "\x1b" not in text
    assert "features of digits:train (images): 25/50 (50%)" in text
    assert "50/50 done in" in text
    quiet = io.StringIO()
    muted = ProgressReporter(Console(file=quiet, force_terminal=False), plain_lines=False)
    muted.start(10, "x")
    muted.advance(10)
    muted.finish()
    assert quiet.getvalue() == ""


# --- rich bars ------------------------------------------------------------------------------------


def _last_frame(text: str) -> str:
    """The last line a terminal shows after the live display's redraws."""
    frames = [ANSI.sub("", part) for part in re.split(r"\r|\n", text)]
    return [frame for frame in frames if frame.strip()][-1]


def test_rich_progress_renders_an_eta_on_a_terminal() -> None:
    out = io.StringIO()
    reporter = ProgressReporter(Console(file=out, force_terminal=True, width=100, color_system=None))
    reporter.start(100, "features")
    for _ in range(3):
        reporter.advance(10)
        time.sleep(0.02)  # time between samples for rich's speed estimate
    assert reporter.live is not None
    reporter.live.refresh()
    frame = _last_frame(out.getvalue())
    assert re.search(r"features .*30/100 \d:\d\d:\d\d ETA \d:\d\d:\d\d", frame), frame
    reporter.finish()
    assert reporter.live is None
    assert "ETA" not in _last_frame(out.getvalue())  # finished: elapsed only


def test_nested_bars_print_the_finished_inner_one_above_the_outer() -> None:
    out = io.StringIO()
    reporter = ProgressReporter(Console(file=out, force_terminal=True, width=100, color_system=None))
    reporter.start(2, "label-efficiency runs")
    reporter.stage_started("pretrain", 4, 0)
    reporter.step("pretrain", 4, {"loss": 1.0})
    reporter.stage_finished("pretrain")
    assert reporter.live is not None  # the outer bar is still live
    reporter.advance(1)
    reporter.finish()
    text = ANSI.sub("", out.getvalue())
    assert re.search(r"pretrain .*4/4 0:00:00", text)
    assert re.search(r"label-efficiency runs .*1/1 0:00:00", _last_frame(out.getvalue()))


def _finished_stage(description: str, elapsed: float) -> RichProgress:
    clock = FakeClock()
    progress = RichProgress(get_time=clock)
    task = progress.add_task(description, total=250, status="")
    clock.now = elapsed
    progress.update(
        task,
        completed=250,
        status="loss 4.123  lr 0.3  img/s 1234  knn_top1 0.500  accuracy 0.998  agreement 0.950",
    )
    return progress


def _render(progress: RichProgress, width: int) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system=None)
    console.print(fitted_table(progress.tasks, width))
    return [ANSI.sub("", line) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize("width", [100, 60])
def test_finished_bar_keeps_name_counts_and_elapsed_in_full(width: int) -> None:
    for description in ("pretrain", "pretrain (resuming at step 100)"):
        (line,) = _render(_finished_stage(description, 5025.0), width)
        assert len(line) <= width
        assert line.startswith(description + " ")
        assert " 250/250 1:23:45" in line
        assert "ETA" not in line
    (wide,) = _render(_finished_stage("pretrain", 5025.0), 100)
    assert "━" in wide and "loss 4.123" in wide


def test_narrow_running_bar_keeps_eta_and_drops_metrics_first() -> None:
    clock = FakeClock()
    progress = RichProgress(get_time=clock)
    task = progress.add_task("finetune", total=1000, status="loss 0.25  lr 0.1  img/s 800  accuracy 1.000")
    for step in (100, 200, 300):
        clock.now += 10.0
        progress.update(task, completed=step)
    (line,) = _render(progress, 40)
    assert line.startswith("finetune ") and " 300/1000 0:00:30 ETA 0:01:" in line and "loss" not in line
    (line,) = _render(progress, 70)
    assert "━" in line and "ETA 0:01:" in line and "loss" in line and line.endswith("…")


def test_training_bar_end_to_end_at_100_and_60_columns() -> None:
    for width in (100, 60):
        out = io.StringIO()
        reporter = ProgressReporter(Console(file=out, force_terminal=True, width=width, color_system=None))
        reporter.stage_started("pretrain", 250, 0)
        for step in range(50, 251, 50):
            reporter.step(
                "pretrain", step, {"loss": 4.1, "lr": 0.3, "images_per_second": 1234.0, "knn_top1": 0.5}
            )
        reporter.stage_finished("pretrain")
        frame = _last_frame(out.getvalue())
        assert frame.startswith("pretrain ") and " 250/250 " in frame and CLOCK.search(frame), frame
        assert len(frame) <= width


# --- library functions report progress ----------------------------------------------------------


def test_extract_features_reports_the_rows_it_encoded() -> None:
    batches = [
        Batch(
            torch.zeros(4, 1, 3, 2, 2, dtype=torch.uint8), torch.arange(4), torch.ones(4, dtype=torch.bool)
        ),
        Batch(
            torch.zeros(4, 1, 3, 2, 2, dtype=torch.uint8), torch.arange(4), torch.tensor([1, 1, 0, 0]).bool()
        ),
    ]
    recorder = Recorder()
    features, _ = extract_features(
        nn.Flatten(), batches, "cpu", lambda x: x.float(), progress=recorder, total=6, label="bank"
    )
    assert features.shape[0] == 6
    assert recorder.calls == [("start", 6, "bank"), ("advance", 4), ("advance", 2), ("finish",)]


def test_linear_probe_reports_lbfgs_iterations() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(60, 4, generator=generator)
    labels = (features[:, 0] > 0).long()
    recorder = Recorder()
    probe = fit_linear_probe(features, labels, 2, max_iter=50, progress=recorder)
    assert recorder.calls[0] == ("start", 50, "linear probe (L-BFGS iterations)")
    assert recorder.calls[-1] == ("finish",)
    assert 0 < recorder.advanced() <= probe.iterations


def test_shard_build_reports_samples_written_and_kept(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", [3, 2])
    recorder = Recorder()
    build_imagefolder(tmp_path / "tree", tmp_path / "out", maxcount=2, progress=recorder)
    assert recorder.calls[0] == ("start", 5, f"writing {tmp_path / 'out'} (samples)")
    assert recorder.calls[-1] == ("finish",) and recorder.advanced() == 5
    again = Recorder()
    build_imagefolder(tmp_path / "tree", tmp_path / "out", maxcount=2, progress=again)
    assert again.advanced() == 5  # already complete: everything counts as done


# --- curves ---------------------------------------------------------------------------------------


def _labels(axes: Axes) -> list[str]:
    return [str(line.get_label()) for line in axes.get_lines()]


def test_finetune_curves_show_eval_top1_and_keep_one_visible() -> None:
    records = [{"step": s, "epoch": 0, "loss": 1 / s, "accuracy": 1.0} for s in range(1, 51)]
    figure = curves_figure(records, "finetune", {"steps": 50, "top1": 0.81, "top5": 0.97})
    _, accuracy = figure.axes
    assert _labels(accuracy) == ["training-batch accuracy", "eval top-1 (0.810)", "eval top-5 (0.970)"]
    top1 = accuracy.get_lines()[1]
    assert np.asarray(top1.get_xydata()).tolist() == [[50.0, 0.81]]  # at the last step
    low, high = accuracy.get_ylim()
    assert low <= 0 and high > 1.0  # a series pinned at 1.0 is not cut off by the frame
    assert accuracy.get_lines()[0].get_marker() in (None, "None", "")  # 50 points: a plain line


def test_short_series_get_markers() -> None:
    figure = curves_figure([{"step": 10, "epoch": 0, "knn_top1": 0.42}], "pretrain")
    (knn,) = figure.axes[1].get_lines()
    assert knn.get_label() == "kNN top-1" and knn.get_marker() == "o"


def test_distill_curves_show_teacher_agreement_and_eval_top1(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    records = [{"step": s, "epoch": 0, "loss": 2.0 / s, "agreement": 0.5 + s / 100} for s in range(1, 31)]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    figure = curves_figure(records, "distill", {"steps": 30, "top1": 0.7})
    assert _labels(figure.axes[1]) == ["teacher agreement", "eval top-1 (0.700)"]
    plot_curves(metrics, tmp_path / "curves.png", "distill", {"steps": 30, "top1": 0.7})
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
