"""A stage's results in the run directory: ``final.pt`` (a record of
:mod:`contrastive.stages.records`), ``curves.png`` and, written last because it marks the stage
complete, ``results.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from contrastive import atomic
from contrastive.checkpoint import load_checkpoint, save_final
from contrastive.engine import TrainResult, read_metrics
from contrastive.errors import RunError
from contrastive.stages.context import StageContext
from contrastive.stages.records import ClassifierRecord, PretrainRecord

FINAL = "final.pt"
RESULTS = "results.json"
CURVES = "curves.png"

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
        plot_curves(directory / "metrics.jsonl", directory / CURVES, title=name)
        atomic.write_json(directory / RESULTS, results)
    return results


def plot_curves(metrics: Path, out: Path, title: str) -> None:
    """Loss (and any accuracy metric) against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = read_metrics(metrics)
    records = [r for r in everything if "loss" in r]
    accuracy_keys = sorted({k for r in everything for k in r if "acc" in k or k.startswith("knn")})
    figure, axes = plt.subplots(1, 2 if accuracy_keys else 1, figsize=(10 if accuracy_keys else 5, 3.5))
    loss_axis = axes[0] if accuracy_keys else axes
    loss_axis.plot([r["step"] for r in records], [r["loss"] for r in records])
    loss_axis.set(title=f"{title}: loss", xlabel="step", ylabel="loss")
    if accuracy_keys:
        for key in accuracy_keys:
            points = [(r["step"], r[key]) for r in everything if key in r]
            axes[1].plot([p[0] for p in points], [p[1] for p in points], label=key)
        axes[1].set(title=f"{title}: accuracy", xlabel="step", ylim=(0, 1))
        axes[1].legend()
    figure.tight_layout()
    atomic.write_with(out, lambda handle: figure.savefig(handle, format="png", dpi=80))
    plt.close(figure)
