"""Built-in learning-rate schedules: linear warmup then cosine decay (SimCLR), and constant.

A schedule is a pure function of the 0-based optimizer step, so resuming from a checkpoint needs
only the step count. The base learning rate is scaled by the global batch size ``B`` first:

- ``"sqrt"``: ``base_lr * sqrt(B)`` (SimCLRv2: 0.1 * sqrt(4096) = 6.4 for pretraining);
- ``"linear"``: ``base_lr * B / 256`` (SimCLR v1: 0.3 * 4096 / 256 = 4.8);
- ``"none"``: ``base_lr``.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import attrs

from contrastive import Component, ContrastiveError, hookimpl, option
from contrastive.steps import StepCount

log = logging.getLogger(__name__)

Scaling = Literal["linear", "sqrt", "none"]

#: Warmup length, as a fraction of all epochs, when neither warmup option is set (SimCLRv2: the
#: learning rate rises linearly over the first 5% of the epochs, i.e. 40 of 800).
DEFAULT_WARMUP_FRACTION = 0.05


class ScheduleError(ContrastiveError, ValueError):
    """Schedule options that contradict each other or the training length."""


def scaled_learning_rate(base_lr: float, global_batch_size: int, scaling: Scaling) -> float:
    """The peak learning rate for a global batch of ``global_batch_size`` samples.

    Args:
        base_lr: Learning rate before scaling.
        global_batch_size: Samples per optimizer step, summed over ranks.
        scaling: ``"sqrt"``, ``"linear"`` (per 256 samples) or ``"none"``.

    Returns:
        The scaled learning rate.
    """
    if scaling == "sqrt":
        return base_lr * math.sqrt(global_batch_size)
    if scaling == "linear":
        return base_lr * global_batch_size / 256
    return base_lr


def _check_inputs(global_batch_size: int, steps_per_epoch: int, epochs: int) -> None:
    for name, value in (
        ("global_batch_size", global_batch_size),
        ("steps_per_epoch", steps_per_epoch),
        ("epochs", epochs),
    ):
        if value < 1:
            raise ScheduleError(f"a schedule needs {name} >= 1, got {value}")


# --------------------------------------------------------------------------------------------------
# warmup_cosine
# --------------------------------------------------------------------------------------------------


@attrs.frozen
class WarmupCosine:
    """Linear warmup from 0 to ``peak_lr``, then cosine decay to 0 at ``total_steps``.

    ``lr(s) = peak * s / W`` for ``s < W``; ``peak * (1 + cos(pi * (s - W) / (T - W))) / 2`` for
    ``W <= s <= T``; 0 after ``T``. As in SimCLR's reference schedule, ``lr(0)`` is 0 when there is
    a warmup and the decay reaches 0 at step ``T`` (one past the last update of a run of ``T``
    steps).

    Attributes:
        peak_lr: Learning rate at the end of warmup.
        warmup_steps: ``W``, steps of linear warmup (0: start at the peak).
        total_steps: ``T``, the stage's steps (:class:`contrastive.steps.StepCount`).
    """

    peak_lr: float
    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        """Learning rate at the 0-based optimizer ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step < self.warmup_steps:
            return self.peak_lr * step / self.warmup_steps
        if step >= self.total_steps:
            return 0.0
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@attrs.frozen
class WarmupCosineOptions:
    """Options of ``warmup_cosine`` (SimCLRv2 pretraining values)."""

    warmup_epochs: float = option(
        0.0, "Linear warmup length in epochs; 0 means use warmup_fraction.", min=0.0
    )
    warmup_fraction: float | None = option(
        None,
        "Warmup length as a fraction of all epochs; unset means 0.05 (SimCLRv2) unless warmup_epochs is set.",
        min=0.0,
        max=1.0,
    )
    scaling: Literal["linear", "sqrt", "none"] = option(
        "sqrt", "Batch-size scaling of the base learning rate: sqrt, linear (per 256), none."
    )

    def __attrs_post_init__(self) -> None:
        if self.warmup_epochs > 0 and self.warmup_fraction is not None:
            raise ScheduleError(
                f"set only one of warmup_epochs ({self.warmup_epochs}) and warmup_fraction "
                f"({self.warmup_fraction})"
            )

    def warmup_in_epochs(self, epochs: int) -> float:
        """Warmup length in epochs for a run of ``epochs`` epochs."""
        if self.warmup_epochs > 0:
            return self.warmup_epochs
        fraction = DEFAULT_WARMUP_FRACTION if self.warmup_fraction is None else self.warmup_fraction
        return fraction * epochs


def build_warmup_cosine(
    options: WarmupCosineOptions,
    *,
    base_lr: float,
    global_batch_size: int,
    steps_per_epoch: int,
    epochs: int,
    steps: StepCount | None = None,
) -> WarmupCosine:
    """The warmup-cosine schedule of a run.

    With ``steps`` (the stage's step rule) the run's length and the warmup's are counted by it
    (officially ``N * E // G + 1`` and ``int(warmup_epochs * N // G)``, as SimCLR's
    ``WarmUpAndCosineDecay``); without, ``epochs * steps_per_epoch`` and
    ``round(warmup_epochs * steps_per_epoch)``.

    Raises:
        ScheduleError: A non-positive input, or a warmup longer than the run.
    """
    _check_inputs(global_batch_size, steps_per_epoch, epochs)
    warmup_epochs = options.warmup_in_epochs(epochs)
    if warmup_epochs > epochs:
        raise ScheduleError(f"warmup_epochs ({warmup_epochs:g}) exceeds the run's {epochs} epochs")
    if steps is None:
        steps = StepCount("per_epoch", steps_per_epoch * global_batch_size, global_batch_size, epochs)
    schedule = WarmupCosine(
        peak_lr=scaled_learning_rate(base_lr, global_batch_size, options.scaling),
        warmup_steps=steps.steps_for(warmup_epochs),
        total_steps=steps.total,
    )
    log.info(
        "warmup_cosine: peak lr %.4g after %d warmup steps, 0 at step %d",
        schedule.peak_lr,
        schedule.warmup_steps,
        schedule.total_steps,
    )
    return schedule


# --------------------------------------------------------------------------------------------------
# constant
# --------------------------------------------------------------------------------------------------


@attrs.frozen
class Constant:
    """The same learning rate at every step.

    Attributes:
        lr: The (scaled) learning rate.
    """

    lr: float

    def __call__(self, step: int) -> float:
        """Learning rate at the 0-based optimizer ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return self.lr


@attrs.frozen
class ConstantOptions:
    """Options of ``constant``."""

    scaling: Literal["linear", "sqrt", "none"] = option(
        "sqrt", "Batch-size scaling of the base learning rate: sqrt, linear (per 256), none."
    )


def build_constant(
    options: ConstantOptions,
    *,
    base_lr: float,
    global_batch_size: int,
    steps_per_epoch: int,
    epochs: int,
    steps: StepCount | None = None,
) -> Constant:
    """A constant schedule at the scaled learning rate (``steps_per_epoch``/``epochs`` are checked only)."""
    _check_inputs(global_batch_size, steps_per_epoch, epochs)
    return Constant(lr=scaled_learning_rate(base_lr, global_batch_size, options.scaling))


@hookimpl
def contrastive_register_schedules() -> list[Component]:
    """The built-in schedules."""
    return [
        Component(
            name="warmup_cosine",
            build=build_warmup_cosine,
            options=WarmupCosineOptions,
            summary="Linear warmup to the batch-scaled peak, then cosine decay to zero (SimCLR).",
        ),
        Component(
            name="constant",
            build=build_constant,
            options=ConstantOptions,
            summary="A constant batch-scaled learning rate (e.g. for fine-tuning experiments).",
        ),
    ]
