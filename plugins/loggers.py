"""Built-in loggers: ``jsonl`` (always on), ``tensorboard``, ``mlflow`` and ``wandb``.

Each builds a sink for one stage of a run, on rank 0 only, writing under the run directory:

- ``jsonl``: ``<run>/<stage>/metrics.jsonl``, one JSON object per logged step (what the curves,
  the summary and ``bench`` read). Images and texts are not written there.
- ``tensorboard``: event files in ``<run>/tensorboard/<stage>`` (one TensorBoard run per stage):
  every metric as a scalar (``lr`` included), the first step's augmented views as images, the
  resolved spec as text. ``tensorboard --logdir <run>/tensorboard``.
- ``mlflow``: a local store in ``<run>/mlruns`` (SQLite ``mlflow.db``, artifacts in ``artifacts/``;
  MLflow 3 keeps its plain-file store in maintenance mode), experiment named after the spec's
  experiment, one MLflow run per stage: the resolved spec flattened to params, the metrics, the
  spec and the views as artifacts. ``mlflow ui --backend-store-uri sqlite:///<run>/mlruns/mlflow.db``.
- ``wandb``: an offline W&B run per stage under ``<run>/wandb`` (project: the experiment name,
  group: the run directory's name), the resolved spec as its config; ``wandb sync`` uploads it.

The optional packages come with the extras ``contrastive[tensorboard]``, ``[mlflow]``, ``[wandb]``;
a missing one stops the run before training with a :class:`contrastive.errors.MissingExtraError`.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from contrastive import Component, hookimpl, option
from contrastive.errors import MissingExtraError
from contrastive.interfaces import MetricLogger
from contrastive.metrics_log import MetricsLog

#: MLflow's limits: params per ``log_batch`` call and characters of a param value.
_MLFLOW_BATCH = 100
_MLFLOW_VALUE_CHARS = 6000


def _require(module: str, package: str, extra: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(what, package, extra) from exc


def _as_uint8_hwc(images: torch.Tensor) -> list[Any]:
    """``float [N, 3, S, S]`` in [0, 1] to a list of ``uint8 [S, S, 3]`` numpy arrays."""
    data = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return [image.permute(1, 2, 0).numpy() for image in data]


def flatten(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted keys and leaf values of nested mappings (lists kept as values)."""
    for key, value in config.items():
        if isinstance(value, Mapping):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@attrs.frozen
class JsonlOptions:
    """Options of the ``jsonl`` logger (none: it is always on)."""


@attrs.frozen
class TensorBoardOptions:
    """Options of the ``tensorboard`` logger."""

    flush_seconds: float = option(30.0, "Flush the event file at least this often (seconds)", min=0.0)
    images: int = option(8, "Augmented training views logged at the first step (0: none)", min=0)


@attrs.frozen
class MlflowOptions:
    """Options of the ``mlflow`` logger."""

    tracking_uri: str = option(
        "",
        "Tracking URI (empty: SQLite mlruns/mlflow.db in the run, artifacts beside it) or a server URI",
    )
    experiment: str = option("", "MLflow experiment (empty: the spec's experiment.name)")
    images: int = option(8, "Augmented training views saved as artifacts at the first step (0: none)", min=0)


@attrs.frozen
class WandbOptions:
    """Options of the ``wandb`` logger."""

    mode: str = option(
        "offline",
        'W&B mode: "offline" (files only; upload later with wandb sync) or "online"',
        choices=("offline", "online"),
    )
    project: str = option("", "W&B project (empty: the spec's experiment.name)")
    images: int = option(8, "Augmented training views logged at the first step (0: none)", min=0)


class JsonlLogger:
    """``<stage>/metrics.jsonl``: :class:`contrastive.metrics_log.MetricsLog` as a logger."""

    def __init__(self, path: Path, start_step: int) -> None:
        self.log = MetricsLog(path, enabled=True, after_step=start_step)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.log.write(metrics)

    def log_text(self, name: str, text: str) -> None:
        """Not written: the run directory already holds the resolved spec."""

    def log_images(self, step: int, name: str, images: torch.Tensor) -> None:
        """Not written: JSON lines hold scalars only."""

    def close(self) -> None:
        """Nothing to release: every record is appended and closed as it is written."""


class TensorBoardLogger:
    """Event files for one stage, read by TensorBoard (and its ``EventAccumulator``)."""

    def __init__(self, options: TensorBoardOptions, logdir: Path, start_step: int) -> None:
        _require("tensorboard", "tensorboard", "tensorboard", "the tensorboard logger")
        from torch.utils.tensorboard import SummaryWriter

        self.options = options
        # purge_step: a resumed stage hides what the interrupted run logged after its checkpoint
        self.writer = SummaryWriter(
            str(logdir), flush_secs=max(1, round(options.flush_seconds)), purge_step=start_step or None
        )

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if key != "step":
                self.writer.add_scalar(key, float(value), global_step=step)

    def log_text(self, name: str, text: str) -> None:
        # TensorBoard renders text as Markdown: indent four spaces so TOML shows as code
        self.writer.add_text(name, "\n".join("    " + line for line in text.splitlines()), global_step=0)

    def log_images(self, step: int, name: str, images: torch.Tensor) -> None:
        if self.options.images:
            shown = images[: self.options.images].detach().float().clamp(0, 1).cpu()
            self.writer.add_images(name, shown, global_step=step, dataformats="NCHW")

    def close(self) -> None:
        self.writer.close()


def tracking_uri(directory: Path) -> str:
    """The local MLflow store of a run directory: SQLite ``<run>/mlruns/mlflow.db`` (MLflow 3 keeps
    its plain-file store in maintenance mode only), artifacts in ``<run>/mlruns/artifacts``."""
    return "sqlite:///" + str((directory / "mlruns" / "mlflow.db").resolve())


class MlflowLogger:
    """One MLflow run per stage: params, metrics, artifacts."""

    def __init__(
        self, options: MlflowOptions, directory: Path, stage: str, start_step: int, config: Mapping[str, Any]
    ) -> None:
        mlflow = _require("mlflow", "mlflow", "mlflow", "the mlflow logger")
        from mlflow.entities import Metric, Param

        self._metric = Metric
        self.options = options
        store = (directory / "mlruns").resolve()
        if not options.tracking_uri:
            store.mkdir(parents=True, exist_ok=True)
        self.client = mlflow.MlflowClient(tracking_uri=options.tracking_uri or tracking_uri(directory))
        name = options.experiment or str(config.get("experiment", {}).get("name", "contrastive"))
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            experiment_id = found.experiment_id
        else:  # artifacts beside the database unless a server decides
            artifacts = None if options.tracking_uri else (store / "artifacts").as_uri()
            experiment_id = self.client.create_experiment(name, artifact_location=artifacts)
        run = None
        if start_step:  # a resumed stage continues its MLflow run
            runs = self.client.search_runs(
                [experiment_id],
                filter_string=f"tags.`contrastive.run_dir` = '{directory.resolve()}' "
                f"and tags.`contrastive.stage` = '{stage}'",
                max_results=1,
            )
            run = runs[0] if runs else None
        if run is None:
            tags = {"contrastive.run_dir": str(directory.resolve()), "contrastive.stage": stage}
            run = self.client.create_run(experiment_id, run_name=stage, tags=tags)
            params = [
                Param(key, str(value)[:_MLFLOW_VALUE_CHARS]) for key, value in flatten(config) if value != ""
            ]
            for start in range(0, len(params), _MLFLOW_BATCH):
                self.client.log_batch(run.info.run_id, params=params[start : start + _MLFLOW_BATCH])
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.run_id = run.info.run_id

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        entries = [self._metric(k, float(v), now, step) for k, v in metrics.items() if k != "step"]
        self.client.log_batch(self.run_id, metrics=entries)

    def log_text(self, name: str, text: str) -> None:
        self.client.log_text(self.run_id, text, f"{name}.toml")

    def log_images(self, step: int, name: str, images: torch.Tensor) -> None:
        for index, image in enumerate(_as_uint8_hwc(images[: self.options.images])):
            self.client.log_image(self.run_id, image, f"{name}/step{step}_{index}.png")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbLogger:
    """One W&B run per stage, offline by default (files under ``<run>/wandb``)."""

    def __init__(
        self, options: WandbOptions, directory: Path, stage: str, start_step: int, config: Mapping[str, Any]
    ) -> None:
        self.wandb = _require("wandb", "wandb", "wandb", "the wandb logger")
        self.options = options
        (directory / "wandb").mkdir(parents=True, exist_ok=True)
        project = options.project or str(config.get("experiment", {}).get("name", "contrastive"))
        self.run = self.wandb.init(
            mode=options.mode,
            dir=str(directory),
            project=project,
            group=directory.resolve().name,
            name=stage,
            job_type=stage,
            config=dict(config),
            settings=self.wandb.Settings(console="off", x_disable_stats=True, silent=True),
            reinit="create_new",
        )
        self.start_step = start_step

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log({k: float(v) for k, v in metrics.items() if k != "step"}, step=step)

    def log_text(self, name: str, text: str) -> None:
        path = Path(self.run.dir) / f"{name}.toml"
        path.write_text(text, encoding="utf-8")
        self.run.save(str(path), base_path=self.run.dir, policy="now")

    def log_images(self, step: int, name: str, images: torch.Tensor) -> None:
        arrays = _as_uint8_hwc(images[: self.options.images])
        if arrays:
            self.run.log({name: [self.wandb.Image(a) for a in arrays]}, step=step)

    def close(self) -> None:
        self.run.finish()


def build_jsonl(
    options: JsonlOptions, *, directory: Path, stage: str, start_step: int, config: Mapping[str, Any]
) -> MetricLogger:
    """The always-on ``metrics.jsonl`` of the stage."""
    return JsonlLogger(directory / stage / "metrics.jsonl", start_step)


def build_tensorboard(
    options: TensorBoardOptions, *, directory: Path, stage: str, start_step: int, config: Mapping[str, Any]
) -> MetricLogger:
    """TensorBoard event files in ``<run>/tensorboard/<stage>``."""
    return TensorBoardLogger(options, directory / "tensorboard" / stage, start_step)


def build_mlflow(
    options: MlflowOptions, *, directory: Path, stage: str, start_step: int, config: Mapping[str, Any]
) -> MetricLogger:
    """An MLflow run in ``<run>/mlruns`` (or the given tracking URI)."""
    return MlflowLogger(options, directory, stage, start_step, config)


def build_wandb(
    options: WandbOptions, *, directory: Path, stage: str, start_step: int, config: Mapping[str, Any]
) -> MetricLogger:
    """A W&B run, offline under ``<run>/wandb`` unless ``mode = "online"``."""
    return WandbLogger(options, directory, stage, start_step, config)


@hookimpl
def contrastive_register_loggers() -> list[Component]:
    """The built-in loggers."""
    return [
        Component(
            name="jsonl",
            build=build_jsonl,
            options=JsonlOptions,
            summary="metrics.jsonl in the stage directory, one JSON object per logged step (always on).",
        ),
        Component(
            name="tensorboard",
            build=build_tensorboard,
            options=TensorBoardOptions,
            summary="TensorBoard event files: scalars, lr, first-step views, the spec (extra: tensorboard).",
        ),
        Component(
            name="mlflow",
            build=build_mlflow,
            options=MlflowOptions,
            summary="MLflow store in the run's mlruns/: spec as params, metrics, artifacts (extra: mlflow).",
        ),
        Component(
            name="wandb",
            build=build_wandb,
            options=WandbOptions,
            summary="Weights & Biases, offline in the run's wandb/ by default (extra: wandb).",
        ),
    ]
