"""The one training loop every stage uses.

A stage builds a :class:`StagePlan` (model, loss step, optimizer, schedule, data, augmentation) and
calls :func:`train`. The loop, read top to bottom: resume from the newest checkpoint, then for
each step set the learning rate, move the batch to the device, run the batched augmentation, compute
the loss (under bf16 autocast when asked), agree across ranks that it is finite, step the
optimizer, log, and checkpoint. Checkpoints hold model, optimizer, step, every rank's RNG states and
the data position (epoch and step within it), so a killed run continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import attrs
import torch
import torch.distributed as dist
from torch import nn

from contrastive.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from contrastive.data.skips import check_skipped
from contrastive.distributed import DistInfo
from contrastive.errors import RunError
from contrastive.interfaces import Augmentation, DataSource, LossOutput, MetricLogger, Schedule
from contrastive.metrics_log import MetricsLog

log = logging.getLogger(__name__)

#: Skipped-sample share is only judged after this many samples (or at the stage's last step).
MIN_SAMPLES_FOR_SKIP_CHECK = 1000

#: ``step(views, labels) -> LossOutput``: ``views`` float32 ``[B, V, 3, S, S]`` on the device.
StepFn = Callable[[torch.Tensor, torch.Tensor], LossOutput]


class Reporter(Protocol):
    """Where the loop reports progress (a rich progress bar, plain log lines, or nothing)."""

    def stage_started(self, stage: str, total_steps: int, start_step: int) -> None: ...

    def step(self, stage: str, step: int, metrics: dict[str, float]) -> None: ...

    def stage_finished(self, stage: str) -> None: ...


class NullReporter:
    """Reports nothing (ranks other than 0, tests)."""

    def stage_started(self, stage: str, total_steps: int, start_step: int) -> None:
        """Ignore."""

    def step(self, stage: str, step: int, metrics: dict[str, float]) -> None:
        """Ignore."""

    def stage_finished(self, stage: str) -> None:
        """Ignore."""


@attrs.define
class StagePlan:
    """Everything :func:`train` needs, as a stage built it.

    Attributes:
        name: Stage name (``pretrain``, ``finetune``, ``distill``).
        model: The trainable modules (DDP-wrapped when distributed); checkpointed.
        step: Loss of one batch of views and labels.
        optimizer: Optimizer over ``model``'s parameters.
        schedule: Learning rate at each 0-based step.
        data: Training split.
        augmentation: Its ``on_device`` part runs here, batched.
        epochs: Epochs to train.
        global_batch_size: Batch size summed over ranks.
        max_steps: Stop after this many steps (0: no limit).
        epoch_end: Called with the finished epoch; returns metrics to log (e.g. the kNN monitor).
        state: Further modules whose ``state_dict`` is checkpointed and restored with the model,
            e.g. a momentum encoder and a loss's memory of negatives; None: nothing more.
    """

    name: str
    model: nn.Module
    step: StepFn
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    data: DataSource
    augmentation: Augmentation
    epochs: int
    global_batch_size: int
    max_steps: int = 0
    epoch_end: Callable[[int], dict[str, float]] | None = None
    state: nn.Module | None = None


@attrs.frozen
class LoopSettings:
    """The runtime settings the loop reads, as plain values (a stage builds them from its spec).

    Attributes:
        precision: ``"fp32"``, or ``"bf16"`` for bfloat16 autocast of the forward pass on CUDA.
        log_every: Write a metrics line every this many steps.
        checkpoint_every: Save a checkpoint every this many steps (and at the stage's end).
        keep_checkpoints: How many recent checkpoints to keep.
        num_workers: Data-loader worker processes.
        max_skipped_fraction: Stop when more than this share of samples was skipped.
        channels_last: Whether images and convolutions use the channels_last memory format.
        compile: Whether the stage compiles its model with ``torch.compile``.
    """

    precision: str = "fp32"
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    num_workers: int = 0
    max_skipped_fraction: float = 0.01
    channels_last: bool = False
    compile: bool = False


@attrs.define
class Session:
    """Where a stage runs: process placement, runtime options, output directory, reporting.

    Attributes:
        dist: Rank, world size and device.
        runtime: The runtime settings (:class:`LoopSettings`).
        seed: Experiment seed.
        directory: The stage directory (``<run-dir>/<stage>``).
        reporter: Progress sink (only rank 0 reports).
        loggers: ``loggers(stage, start_step)`` opens the stage's metric loggers
            (:func:`contrastive.metric_loggers.factory`); None: ``metrics.jsonl`` only. Used on rank 0 only.
    """

    dist: DistInfo
    runtime: LoopSettings
    seed: int
    directory: Path
    reporter: Reporter = attrs.Factory(NullReporter)
    loggers: Callable[[str, int], list[MetricLogger]] | None = None

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on CUDA when the spec asks for it, else nothing."""
        enabled = self.runtime.precision == "bf16" and self.dist.device.type == "cuda"
        if not enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


@attrs.frozen
class TrainResult:
    """What the loop measured.

    Attributes:
        steps: Optimizer steps taken in total (including before a resume).
        wall_seconds: Training time in total (including before a resume).
        images_per_second: Global images per second over the steps this process ran.
        last_metrics: The last logged metrics.
    """

    steps: int
    wall_seconds: float
    images_per_second: float
    last_metrics: dict[str, float]


def total_steps(plan: StagePlan) -> int:
    """Steps the plan trains for: epochs times steps per epoch, capped by ``max_steps``."""
    per_epoch = plan.data.steps_per_epoch(plan.global_batch_size)
    if per_epoch < 1:
        raise RunError(
            f"{plan.name}: the data set has {plan.data.num_samples} samples, fewer than one global batch "
            f"of {plan.global_batch_size}; lower {plan.name}.batch_size"
        )
    steps = per_epoch * plan.epochs
    return min(steps, plan.max_steps) if plan.max_steps else steps


def train(plan: StagePlan, session: Session) -> TrainResult:
    """Train ``plan`` to its last step, resuming from the newest checkpoint in the stage directory.

    Raises:
        RunError: The loss became NaN or infinite (the last good checkpoint stays), or a
            checkpoint cannot be loaded.
        DataError: Too many samples were skipped as undecodable.
    """
    device = session.dist.device
    total_steps(plan)  # a data set smaller than one batch fails before anything is opened
    checkpoints = session.directory / "checkpoints"
    generator = torch.Generator(device=device)
    generator.manual_seed(session.seed * 1_000_003 + session.dist.rank)
    step, wall_before = _resume(plan, session, checkpoints, generator)
    loggers = _open_loggers(plan.name, session, step)
    try:
        return _loop(plan, session, loggers, step, wall_before, generator)
    finally:
        for logger in loggers:
            try:
                logger.close()
            except Exception:  # a sink that cannot flush must not hide the stage's own outcome
                log.exception("%s: closing the %s logger failed", plan.name, type(logger).__name__)


def _open_loggers(stage: str, session: Session, step: int) -> list[MetricLogger]:
    """Rank 0's loggers for the stage (``metrics.jsonl`` alone without a factory); none elsewhere."""
    if not session.is_main:
        return []
    if session.loggers is None:
        return [MetricsLog(session.directory / "metrics.jsonl", enabled=True, after_step=step)]
    return session.loggers(stage, step)


def _loop(
    plan: StagePlan,
    session: Session,
    loggers: list[MetricLogger],
    step: int,
    wall_before: float,
    generator: torch.Generator,
) -> TrainResult:
    """:func:`train`'s loop from ``step`` on, reporting to ``loggers``."""
    device = session.dist.device
    per_epoch = plan.data.steps_per_epoch(plan.global_batch_size)
    last_step = total_steps(plan)
    checkpoints = session.directory / "checkpoints"
    session.reporter.stage_started(plan.name, last_step, step)
    health = Health(plan.name, session, per_epoch, checkpoints)
    started, first_step = time.perf_counter(), step
    window_start, window_steps = time.perf_counter(), 0
    metrics: dict[str, float] = {}
    unreported = False  # a logged step whose report waits for the epoch-end monitor
    plan.model.train()
    while step < last_step:
        epoch, start_in_epoch = divmod(step, per_epoch)
        for batch in _epoch_batches(plan, session, epoch, start_in_epoch):
            lr = plan.schedule(step)
            for group in plan.optimizer.param_groups:
                group["lr"] = lr
            images = batch.images.to(device, non_blocking=True)
            labels = batch.labels.to(device, non_blocking=True)
            views = plan.augmentation.on_device(images, generator)
            if step == 0:
                for logger in loggers:
                    logger.log_images(step, "views", views[:4].flatten(0, 1))
            with session.autocast():
                out = plan.step(views, labels)
            health.record(out.loss, batch.skipped, step + 1)
            plan.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            plan.optimizer.step()
            step += 1
            window_steps += 1
            at_log = step % session.runtime.log_every == 0 or step == last_step
            at_checkpoint = step % session.runtime.checkpoint_every == 0 or step == last_step
            if at_log or at_checkpoint:  # the only host syncs: never save or log after a bad step
                loss = health.verify((step - first_step) * plan.global_batch_size, final=step == last_step)
            if at_log:
                elapsed = time.perf_counter() - window_start
                metrics = {
                    "step": step,
                    "epoch": epoch,
                    "loss": loss,
                    "lr": lr,
                    "images_per_second": window_steps * plan.global_batch_size / max(elapsed, 1e-9),
                    **{k: float(v) for k, v in out.metrics.items()},
                }
                for logger in loggers:
                    logger.log_metrics(step, metrics)
                # At an epoch's end the monitor's numbers join this step's line (one report a step).
                unreported = plan.epoch_end is not None and step % per_epoch == 0
                if not unreported:
                    session.reporter.step(plan.name, step, metrics)
                window_start, window_steps = time.perf_counter(), 0
            if at_checkpoint:
                wall = wall_before + time.perf_counter() - started
                _save(plan, session, checkpoints, generator, step, wall)
            if step >= last_step:
                break
        if step % per_epoch == 0 and plan.epoch_end is not None:
            extra = plan.epoch_end(step // per_epoch - 1)
            if extra:
                metrics = {**metrics, **extra}
                for logger in loggers:
                    logger.log_metrics(step, {"step": step, "epoch": step // per_epoch - 1, **extra})
            if extra or unreported:
                session.reporter.step(plan.name, step, metrics)
        unreported = False
    session.reporter.stage_finished(plan.name)
    ran = time.perf_counter() - started
    throughput = (step - first_step) * plan.global_batch_size / ran if step > first_step and ran > 0 else 0.0
    return TrainResult(
        steps=step,
        wall_seconds=wall_before + ran,
        images_per_second=throughput,
        last_metrics=metrics,
    )


def _epoch_batches(plan: StagePlan, session: Session, epoch: int, start: int) -> Iterator[Any]:
    return iter(
        plan.data.train_batches(
            augmentation=plan.augmentation,
            global_batch_size=plan.global_batch_size,
            rank=session.dist.rank,
            world_size=session.dist.world_size,
            epoch=epoch,
            seed=session.seed,
            num_workers=session.runtime.num_workers,
            start_step=start,
        )
    )


class Health:
    """Loss and skipped-sample bookkeeping without a per-step host synchronisation.

    Every step all-reduces its loss on the device (mean over ranks) and adds this rank's skipped
    count on the host; :meth:`verify`, called by every rank at the same log and checkpoint steps,
    sums the skipped counts over ranks, reads the loss back once, and stops the run on a non-finite
    loss (naming the first bad step) or on too many skipped samples. Every rank reads the same
    reduced numbers, so all ranks stop together.
    """

    def __init__(self, stage: str, session: Session, steps_per_epoch: int, checkpoints: Path) -> None:
        self.stage = stage
        self.info = session.dist
        self.limit = session.runtime.max_skipped_fraction
        self.steps_per_epoch = steps_per_epoch
        self.checkpoints = checkpoints
        device = session.dist.device
        self.loss = torch.zeros((), device=device)
        self.local_skipped = 0
        self.first_bad_step = torch.full((), -1.0, device=device)

    def record(self, loss: torch.Tensor, skipped: int, step: int) -> None:
        """Add one step's ``loss`` (this rank's scalar) and ``skipped`` count."""
        mean = loss.detach().float().reshape(()).clone()
        if self.info.is_distributed:
            dist.all_reduce(mean, op=dist.ReduceOp.SUM)
        self.loss = mean / self.info.world_size
        self.local_skipped += skipped
        bad = ~torch.isfinite(self.loss) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, float(step), self.first_bad_step)

    def verify(self, samples: int, *, final: bool) -> float:
        """The last loss, after checking the run is healthy.

        Args:
            samples: Samples delivered since this process started the stage.
            final: Whether this is the stage's last step (the skipped share is judged then even
                below :data:`MIN_SAMPLES_FOR_SKIP_CHECK`).

        Raises:
            RunError: A loss since the last check was NaN or infinite.
            DataError: The share of skipped samples is over ``runtime.max_skipped_fraction``.
        """
        skipped_total = torch.tensor(float(self.local_skipped), device=self.loss.device)
        if self.info.is_distributed:
            dist.all_reduce(skipped_total, op=dist.ReduceOp.SUM)
        loss, skipped, first_bad = torch.stack([self.loss, skipped_total, self.first_bad_step]).tolist()
        if first_bad >= 0:
            bad = int(first_bad)
            raise RunError(_nan_message(self.stage, bad, (bad - 1) // self.steps_per_epoch, self.checkpoints))
        seen = samples + int(skipped)
        if seen >= MIN_SAMPLES_FOR_SKIP_CHECK or final:
            check_skipped(int(skipped), seen, self.limit)
        return float(loss)


def _nan_message(stage: str, step: int, epoch: int, checkpoints: Path) -> str:
    latest = latest_checkpoint(checkpoints)
    kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint had been written yet"
    return (
        f"{stage}: the loss is not finite at step {step} (epoch {epoch}); stopping. {kept}. "
        "Lower the learning rate, check the data, or use fp32."
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)


def _save(
    plan: StagePlan, session: Session, directory: Path, generator: torch.Generator, step: int, wall: float
) -> None:
    rng = {"process": capture_rng_state(), "device": generator.get_state()}
    per_rank = [rng]
    if session.dist.is_distributed:
        per_rank = [{} for _ in range(session.dist.world_size)]
        dist.all_gather_object(per_rank, rng)
    if not session.is_main:
        return
    state = {
        "stage": plan.name,
        "step": step,
        "wall_seconds": wall,
        "model": unwrap(plan.model).state_dict(),
        "optimizer": plan.optimizer.state_dict(),
        "rng": per_rank,
    }
    if plan.state is not None:
        state["state"] = plan.state.state_dict()
    save_checkpoint(directory, step, state, keep=session.runtime.keep_checkpoints)


def _resume(
    plan: StagePlan, session: Session, directory: Path, generator: torch.Generator
) -> tuple[int, float]:
    path = latest_checkpoint(directory)
    if path is None:
        return 0, 0.0
    state = load_checkpoint(path)
    if state.get("stage") != plan.name:
        raise RunError(f"{path} is a checkpoint of stage {state.get('stage')!r}, not {plan.name!r}")
    try:
        unwrap(plan.model).load_state_dict(state["model"])
        plan.optimizer.load_state_dict(state["optimizer"])
        if plan.state is not None:
            plan.state.load_state_dict(state["state"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise RunError(
            f"{path} does not match the model this spec builds ({exc}); "
            "use another --run-dir, or --force after deleting the stage directory"
        ) from exc
    per_rank = state["rng"]
    if len(per_rank) != session.dist.world_size:
        log.warning(
            "%s was written by %d ranks, resuming on %d: random streams continue from rank 0's",
            path,
            len(per_rank),
            session.dist.world_size,
        )
    mine = per_rank[session.dist.rank] if session.dist.rank < len(per_rank) else per_rank[0]
    restore_rng_state(mine["process"])
    generator.set_state(mine["device"])
    log.info("%s: resumed from %s at step %d", plan.name, path, state["step"])
    return int(state["step"]), float(state.get("wall_seconds", 0.0))
