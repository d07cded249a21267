"""How many optimizer steps a stage trains, and where its epochs end (the stage option ``steps``).

Two rules, for ``N`` samples, global batch ``G`` and ``E`` epochs:

- ``"official"`` (SimCLR's ``get_train_steps``, ``simclr_tf2/model.py``): ``N * E // G + 1`` steps
  over one endless stream that reads the epochs' shuffled orders one after another, so a batch may
  hold the end of one epoch and the start of the next and no sample is left out. Epoch ``e`` (the
  kNN monitor's unit) is the steps from ``e * N // G`` to ``(e + 1) * N // G``; the extra step
  makes a last, one-step epoch ``E``. ``x`` epochs of warmup are ``int(x * N // G)`` steps, as
  ``WarmUpAndCosineDecay`` counts them.
- ``"per_epoch"``: ``N // G`` steps per epoch, each epoch a fresh order whose last ``N mod G``
  samples are left out; ``E * (N // G)`` steps; ``x`` epochs are ``round(x * (N // G))`` steps.

Every rank runs the same count: it depends on ``N`` and ``G`` only.
"""

from __future__ import annotations

from typing import Literal

import attrs

#: The step rules (stage option ``steps``).
StepRule = Literal["official", "per_epoch"]


@attrs.frozen
class StepCount:
    """The steps of one stage.

    Attributes:
        rule: ``"official"`` or ``"per_epoch"`` (see the module docstring).
        num_samples: ``N``, samples in the training split.
        global_batch_size: ``G``, samples per step summed over ranks.
        epochs: ``E``.
        per_epoch: Whole global batches in one epoch: ``N // G`` unless the data set counts them
            otherwise (``DataSource.steps_per_epoch``); the ``"per_epoch"`` rule's unit.
    """

    rule: StepRule
    num_samples: int
    global_batch_size: int
    epochs: int
    per_epoch: int = attrs.field(
        default=attrs.Factory(lambda self: self.num_samples // self.global_batch_size, takes_self=True)
    )

    @property
    def total(self) -> int:
        """Steps of the stage (before ``max_steps``)."""
        if self.rule == "official":
            return self.num_samples * self.epochs // self.global_batch_size + 1
        return self.per_epoch * self.epochs

    @property
    def passes(self) -> int:
        """Epochs the loop runs: ``E``, plus the official rule's one-step epoch ``E``."""
        return self.epochs + 1 if self.rule == "official" else self.epochs

    def epoch_start(self, epoch: int) -> int:
        """First step of ``epoch`` (``total`` once past the last)."""
        if self.rule == "official":
            return min(epoch * self.num_samples // self.global_batch_size, self.total)
        return min(epoch * self.per_epoch, self.total)

    def epoch_of(self, step: int) -> int:
        """The epoch that runs ``step`` (0-based; ``step`` < ``total``)."""
        if self.rule == "official":
            # The largest e with e * N // G <= step, i.e. e * N < (step + 1) * G.
            return ((step + 1) * self.global_batch_size - 1) // self.num_samples
        return step // self.per_epoch

    def steps_for(self, epochs: float) -> int:
        """Steps in ``epochs`` epochs (a warmup's length)."""
        if self.rule == "official":
            return int(epochs * self.num_samples // self.global_batch_size)
        return round(epochs * self.per_epoch)

    def describe(self) -> str:
        """``"N * E // G + 1"`` or ``"E x N // G"`` with the numbers, for messages."""
        if self.rule == "official":
            n, e, g = self.num_samples, self.epochs, self.global_batch_size
            return f"{n} * {e} // {g} + 1 = {self.total}"
        return f"{self.epochs} x {self.per_epoch} = {self.total}"
