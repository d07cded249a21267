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


# --- a run's output: monitor lines, summary, dry-run plan (issue 12 items 4 and 5) ------------------

pytest_plugins = ["tests.stage_fixtures"]  # digits_data: the digits shards, built once per session

#: A pretraining of 2 epochs x 2 steps (40 images, batches of 16) with the kNN monitor every epoch.
MONITORED_OVERRIDES = (
    "pretrain.epochs=2",
    "pretrain.batch_size=16",
    "pretrain.max_steps=0",
    "pretrain.monitor_every=1",
    'pretrain.dataset={name = "digits", split = "train", labelled = false, labels_per_class = 4}',
)
MONITORED_SPEC = """
[pretrain.monitor_train]
name = "digits"
split = "train"
labels_per_class = 2

[pretrain.monitor_test]
name = "digits"
split = "test"
labels_per_class = 2

[pretrain.eval_augmentation]
name = "center_crop"
size = 8
crop_fraction = 1.0
"""


@pytest.fixture(scope="module")
def monitored_run(digits_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A tiny pretraining with a kNN monitor run through the command line (output not a terminal):
    its spec, run directory and output."""
    from click.testing import CliRunner

    from contrastive.cli import cli
    from contrastive.data.digits import DATA_ENV
    from tests.tiny_specs import tiny_pretrain_spec, write_spec

    base = tmp_path_factory.mktemp("monitored")
    spec = write_spec(base / "spec.toml", tiny_pretrain_spec() + MONITORED_SPEC)
    sets = [item for override in MONITORED_OVERRIDES for item in ("--set", override)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATA_ENV, str(digits_data))
        result = CliRunner().invoke(cli, ["run", str(spec), *sets, "--run-dir", str(base / "run")])
    assert result.exit_code == 0, result.output
    return spec, base / "run", result.output


def test_each_monitored_step_is_one_plain_line(monitored_run: tuple[Path, Path, str]) -> None:
    _, run_dir, output = monitored_run
    steps = [line for line in output.splitlines() if line.startswith("pretrain step ")]
    numbers = [line.split(":")[0] for line in steps]
    # 40 images, batch 16, 2 epochs, SimCLR's count (steps = "official"): 40 * 2 // 16 + 1 = 6 steps;
    # epochs end after steps 40 // 16 = 2, 80 // 16 = 5 and the extra step 6.
    assert numbers == [f"pretrain step {n}" for n in range(1, 7)], output  # each step once
    monitored = [line for line in steps if "knn_top1" in line]
    assert [line.split(":")[0] for line in monitored] == [f"pretrain step {n}" for n in (2, 5, 6)], output
    assert all("loss " in line for line in monitored)  # the step's own numbers and the monitor's
    assert "knn_top1" in json.loads((run_dir / "pretrain" / "results.json").read_text())


def test_summary_shows_pretraining_knn_top1(
    monitored_run: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, run_dir, output = monitored_run
    knn = json.loads((run_dir / "pretrain" / "results.json").read_text())["knn_top1"]
    (row,) = [line for line in output.splitlines() if line.startswith("│ pretrain")]
    assert f"{100 * knn:.1f}% (kNN)" in row, output
    from contrastive.console import print_summary

    results = {
        "pretrain": {"labelled_images": 0, "knn_top1": 0.464, "wall_seconds": 3.0},
        "finetune": {"labelled_images": 10, "top1": 0.8, "top5": 0.95, "knn_top1": 0.1, "wall_seconds": 1.0},
        "distill": {"labelled_images": 0, "wall_seconds": 2.0},
    }
    print_summary("runs/x", results, ("pretrain",))
    rows = {line.split("│")[1].strip(): line for line in capsys.readouterr().out.splitlines() if "│" in line}
    assert "46.4% (kNN)" in rows["pretrain"] and "done earlier" in rows["pretrain"]
    assert "80.0%" in rows["finetune"] and "kNN" not in rows["finetune"]  # a test top-1 wins
    assert "kNN" not in rows["distill"] and "-" in rows["distill"]


def _plan_rows(output: str) -> dict[str, list[str]]:
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in output.splitlines() if "│" in line]
    return {row[0]: row[1:] for row in cells}


def test_dry_run_prints_each_stage_steps_and_what_it_would_skip(
    monitored_run: tuple[Path, Path, str], digits_env: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from contrastive.cli import cli
    from tests.tiny_specs import files_snapshot

    spec, run_dir, _ = monitored_run
    sets = [item for override in MONITORED_OVERRIDES for item in ("--set", override)]
    runner = CliRunner()
    fresh = runner.invoke(cli, ["run", str(spec), *sets, "--run-dir", str(tmp_path / "new"), "--dry-run"])
    assert fresh.exit_code == 0, fresh.output
    assert _plan_rows(fresh.output)["pretrain"] == ["2", "2", "6", "run"], fresh.output  # 40 * 2 // 16 + 1
    capped = runner.invoke(
        cli,
        [
            "run",
            str(spec),
            *sets,
            "--set",
            "pretrain.max_steps=3",
            "--run-dir",
            str(tmp_path / "new"),
            "--dry-run",
        ],
    )
    assert capped.exit_code == 0, capped.output
    assert _plan_rows(capped.output)["pretrain"] == ["2", "2", "3 (max_steps)", "run"], capped.output
    assert not (tmp_path / "new").exists()  # a dry run writes nothing
    before = files_snapshot(run_dir)
    done = runner.invoke(cli, ["run", str(spec), *sets, "--run-dir", str(run_dir), "--dry-run"])
    assert done.exit_code == 0, done.output
    assert _plan_rows(done.output)["pretrain"] == ["2", "2", "6", "skip: already complete"], done.output
    assert files_snapshot(run_dir) == before


# --- the label-efficiency protocol counts its runs ------------------------------------------------


class RecordingReporter(Recorder):
    """A Progress and engine Reporter recording both kinds of call in one list."""

    def stage_started(self, stage: str, total_steps: int, start_step: int) -> None:
        self.calls.append(("stage_started", stage))

    def step(self, stage: str, step: int, metrics: dict[str, float]) -> None:
        """Not recorded."""

    def stage_finished(self, stage: str) -> None:
        self.calls.append(("stage_finished", stage))


def test_label_efficiency_counts_every_run_with_stage_bars_inside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typing import Any

    from contrastive.bench import label_efficiency as bench
    from contrastive.engine import Reporter
    from contrastive.progress import Progress as ProgressProtocol

    def fake_run(spec: Path, overrides: Any, run_dir: Path, stage: str, reporter: Reporter) -> dict[str, Any]:
        reporter.stage_started(stage, 2, 0)
        reporter.stage_finished(stage)
        return {"top1": 0.5, "wall_seconds": 1.0}

    def fake_linear(*args: Any, progress: ProgressProtocol | None = None, **kwargs: Any) -> dict[str, Any]:
        with tracked(progress, 3, "features") as advance:
            advance(3)
        return {"top1": 0.4}

    monkeypatch.setattr(bench, "_run_one", fake_run)
    monkeypatch.setattr(bench, "linear_arm", fake_linear)
    monkeypatch.setattr(bench, "subset_overrides", lambda loaded, labels, seed: [])
    shown = RecordingReporter()
    protocol = bench.digits_protocol(tmp_path / "out", range(2), bench.QUICK_OVERRIDES)
    rows = bench.run_protocol(protocol, reporter=shown, progress=shown)
    runs = 2 * (2 * len(bench.ARMS) + 1)  # seeds x settings x arms + one pretraining per seed
    assert len(rows) == 2 * 2 * len(bench.ARMS)
    assert shown.calls[0] == ("start", runs, "label-efficiency runs") and shown.calls[-1] == ("finish",)
    depth, outer, stages, inner = 0, 0, 0, 0
    for call in shown.calls:
        if call[0] == "start":
            depth += 1
        elif call[0] == "finish":
            depth -= 1
        elif call[0] == "advance":
            outer += call[1] if depth == 1 else 0
            inner += call[1] if depth == 2 else 0
        elif call[0] == "stage_started":
            assert depth == 1  # every training bar inside the runs bar
            stages += 1
    assert outer == runs and depth == 0
    assert stages == 2 * (1 + 2 * (len(bench.ARMS) - 1))  # every trained arm and pretraining
    assert inner == 3 * 2 * 2  # the linear arm's passes nest in the runs bar


def test_bench_cli_passes_one_reporter_as_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typing import Any

    from click.testing import CliRunner

    from contrastive.bench import label_efficiency as bench
    from contrastive.cli import cli

    seen: list[tuple[Any, Any]] = []

    def fake_protocol(protocol: Any, reporter: Any = None, progress: Any = None) -> list[Any]:
        seen.append((reporter, progress))
        (protocol.out / bench.TABLE_FILE).parent.mkdir(parents=True)
        (protocol.out / bench.TABLE_FILE).write_text("| arm |\n")
        return []

    monkeypatch.setattr(bench, "run_protocol", fake_protocol)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["bench", "label-efficiency", "--seeds", "1", "--quick", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    ((reporter, progress),) = seen
    assert isinstance(reporter, ProgressReporter) and progress is reporter
