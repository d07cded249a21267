"""A stage's results in the run directory: ``final.pt`` (a record of
:mod:`contrastive.stages.records`), ``curves.png`` and, written last because it marks the stage
complete, ``results.json``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from contrastive import atomic
from contrastive.checkpoint import load_checkpoint, save_final
from contrastive.engine import TrainResult
from contrastive.errors import RunError
from contrastive.metrics_log import read_metrics
from contrastive.stages.context import StageContext
from contrastive.stages.records import ClassifierRecord, PretrainRecord

FINAL = "final.pt"
RESULTS = "results.json"
CURVES = "curves.png"

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_Record = TypeVar("_Record", PretrainRecord, ClassifierRecord)


def load_final(path: Path, kind: type[_Record]) -> _Record:
    """Load a stage's ``final.pt`` and check that it holds a record of ``kind``."""
    if not path.exists():
        raise RunError(f"{path} does not exist: run the previous stage first, or give a checkpoint path")
    return kind.from_state(load_checkpoint(path), str(path))


def finish(
    ctx: StageContext,
    name: str,
    final: PretrainRecord | ClassifierRecord,
    result: TrainResult,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Write ``final.pt``, the curves and, last (it marks the stage complete), ``results.json``."""
    results = {
        "stage": name,
        "steps": result.steps,
        "wall_seconds": round(result.wall_seconds, 3),
        "images_per_second": round(result.images_per_second, 3),
        **extra,
    }
    if ctx.session.is_main:
        directory = ctx.session.directory
        save_final(directory / FINAL, final.to_state())
        plot_curves(directory / "metrics.jsonl", directory / CURVES, title=name, final=results)
        atomic.write_json(directory / RESULTS, results)
    return results


#: Series with at most this many points are drawn with a marker at every point.
MARKER_POINTS = 20

#: Legend names of the share-valued metrics the stages log (others keep their own name).
SHARE_LABELS = {
    "accuracy": "training-batch accuracy",
    "agreement": "teacher agreement",
    "knn_top1": "kNN top-1",
}


def is_share(key: str) -> bool:
    """Whether a logged metric is a share in [0, 1] (drawn on the accuracy axes)."""
    return "acc" in key or key.startswith("knn") or key == "agreement"


def curves_figure(
    records: Sequence[Mapping[str, Any]], title: str, final: Mapping[str, Any] | None = None
) -> Figure:
    """Loss against step and, when there are any, the share-valued metrics against step.

    The accuracy axes run from 0 to a little above 1 (so that a series at 1.0 stays visible) and
    also show the stage's held-out evaluation, ``final["top1"]`` (and ``top5``), as points at the
    last step. Series of few points are drawn with markers (a single point is otherwise invisible).

    Args:
        records: The stage's ``metrics.jsonl`` records.
        title: Stage name, the start of every axes title.
        final: The stage's results (``steps``, ``top1``, ``top5``), if known.

    Returns:
        The figure (not attached to pyplot: nothing to close).
    """
    from matplotlib.figure import Figure

    losses = [r for r in records if "loss" in r]
    keys = sorted({k for r in records for k in r if is_share(k)})
    final = final or {}
    evaluations = [k for k in ("top1", "top5") if final.get(k) is not None]
    shares = bool(keys or evaluations)
    figure = Figure(figsize=(10 if shares else 5, 3.5))
    axes = figure.subplots(1, 2) if shares else [figure.subplots(1, 1)]
    _line(axes[0], [(r["step"], r["loss"]) for r in losses], "loss")
    axes[0].set(title=f"{title}: loss", xlabel="step", ylabel="loss")
    if shares:
        for key in keys:
            _line(axes[1], [(r["step"], r[key]) for r in records if key in r], SHARE_LABELS.get(key, key))
        last = final.get("steps", max((r["step"] for r in records), default=0))
        for key, marker in zip(evaluations, ("*", "D"), strict=False):
            axes[1].plot(
                [last],
                [float(final[key])],
                marker=marker,
                markersize=10,
                linestyle="none",
                label=f"eval {key[:3]}-{key[3:]} ({float(final[key]):.3f})",
            )
        axes[1].set(title=f"{title}: accuracy", xlabel="step", ylim=(0, 1.05))
        axes[1].legend(loc="lower right")
    figure.tight_layout()
    return figure


def _line(axis: Axes, points: Sequence[tuple[float, float]], label: str) -> None:
    """One series, with markers when it has few points."""
    marker = "o" if len(points) <= MARKER_POINTS else None
    axis.plot([p[0] for p in points], [p[1] for p in points], marker=marker, markersize=4, label=label)


def plot_curves(metrics: Path, out: Path, title: str, final: Mapping[str, Any] | None = None) -> None:
    """:func:`curves_figure` of a ``metrics.jsonl``, written to ``out`` as a PNG."""
    figure = curves_figure(read_metrics(metrics), title, final)
    atomic.write_with(out, lambda handle: figure.savefig(handle, format="png", dpi=80))
