"""Built-in losses: NT-Xent (SimCLR's contrastive loss across ranks), cross-entropy, distillation.

Every loss returns :class:`contrastive.interfaces.LossOutput` with a float32 scalar, computed in
float32 even under autocast.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from contrastive import Component, hookimpl, option
from contrastive import distributed as cdist
from contrastive.interfaces import LossKind, LossOutput

#: What one step adds to ``nt_xent``'s memory of negatives (option ``queue_keys``).
QueueKeys = Literal["one_view", "both_views"]

#: Value given to masked logits (a self-similarity): far below any cosine / temperature.
MASKED_LOGIT = -1e9


@attrs.frozen
class NTXentOptions:
    """Options of ``nt_xent``."""

    temperature: float = option(
        0.1, "Softmax temperature of the cosine similarities.", min=0.0, min_exclusive=True
    )
    queue_size: int = option(
        0,
        "Negatives remembered from earlier steps, newest first (SimCLRv2's MoCo-style memory; "
        "pretrain.memory_momentum sets its encoder). 0: none, as in the official code.",
        min=0,
    )
    queue_keys: QueueKeys = option(
        "one_view",
        "What one step adds to the memory: one_view, one key per image (view 2's, as MoCo, whose "
        "memory SimCLRv2 adopts, enqueues one key per image); both_views, the keys of both views.",
    )

    def loss_kind(self) -> LossKind:
        """Called on the two views' projections (capability of losses)."""
        return LossKind.CONTRASTIVE

    def remembers_negatives(self) -> bool:
        """A memory of negatives when ``queue_size`` > 0 (capability of losses)."""
        return self.queue_size > 0


@attrs.frozen
class CrossEntropyOptions:
    """Options of ``cross_entropy``."""

    label_smoothing: float = option(
        0.0, "Share of the target mass spread over all classes.", min=0.0, max=1.0
    )

    def loss_kind(self) -> LossKind:
        """Called on logits and labels (capability of losses)."""
        return LossKind.SUPERVISED


@attrs.frozen
class DistillationOptions:
    """Options of ``distillation``."""

    temperature: float = option(
        1.0, "Temperature tau of both teacher and student softmax.", min=0.0, min_exclusive=True
    )
    labelled_weight: float = option(
        0.0, "Weight of an added cross-entropy term on labelled rows (targets != -1).", min=0.0
    )
    scale_by_temperature_squared: bool = option(
        False, "Multiply the soft-target term by tau^2 (keeps gradient size independent of tau)."
    )

    def loss_kind(self) -> LossKind:
        """Called on student and teacher logits (capability of losses)."""
        return LossKind.DISTILLATION

    def uses_labels(self) -> bool:
        """The labelled term is on when it has weight (capability of losses)."""
        return self.labelled_weight > 0.0


def _float32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.float() for t in tensors]


def _labelled_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Mean cross-entropy over rows with ``targets != -1``; a graph-connected zero when there are none.

    Args:
        logits: float32 ``[B, C]``.
        targets: int64 ``[B]``, ``-1`` where unlabelled.
        smoothing: Label smoothing in [0, 1].

    Returns:
        Scalar float32.
    """
    if not bool((targets != -1).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets, ignore_index=-1, label_smoothing=smoothing)


class NTXentLoss(nn.Module):
    """Normalized-temperature cross-entropy over both views, with columns from every rank.

    Each of the ``2B`` local rows (view-1 then view-2 projections, L2-normalised) is scored against
    all ``2 * B * world_size`` columns gathered from every rank with gradient; its positive is the
    other view of the same sample, its own column is masked out. As in SimCLR's official
    ``add_contrastive_loss`` (``tf2/objective.py``), the loss is the sum of the two directions'
    means — view-1 rows against everything plus view-2 rows against everything, each averaged over
    the ``B`` samples — i.e. twice the mean over the ``2B`` rows. The scale matters: under LARS
    with coupled weight decay, halving the loss would double the relative weight decay on adapted
    weights and halve the step of the excluded ones. The mean over ranks (what DDP's gradient
    averaging optimises) equals the loss of one process on the combined batch, gradients included.

    With ``queue_size`` > 0 the module is a :class:`contrastive.interfaces.NegativeMemory`: every
    row is also scored against up to ``queue_size`` remembered keys (L2-normalised, no gradient),
    appended as further negative columns. :meth:`remember` adds a step's keys from every rank,
    newest first (rank order, view 1 then view 2, as the columns), dropping the oldest; the memory
    is the module's extra state, so it travels with ``state_dict``.

    Attributes:
        temperature: Softmax temperature.
        queue_size: Most keys remembered (0: no memory).
        memory: ``float32 [M, D]`` remembered keys, newest first (``M <= queue_size``); empty at first.
    """

    def __init__(self, temperature: float, queue_size: int = 0, queue_keys: QueueKeys = "one_view") -> None:
        super().__init__()
        self.temperature = temperature
        self.queue_size = queue_size
        self.queue_keys: QueueKeys = queue_keys
        self.memory = torch.zeros(0, 0)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, queue_size={self.queue_size}, queue_keys={self.queue_keys}"

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> LossOutput:
        """Loss of one step on this rank.

        Args:
            z1: ``[B, D]`` projections of view 1 (``B`` samples on this rank, equal on every rank).
            z2: ``[B, D]`` projections of view 2, row ``i`` the same sample as ``z1[i]``.

        Returns:
            The cross-entropy summed over the ``2B`` local rows divided by ``B`` (float32), and
            ``contrastive_accuracy``, the share of local rows whose highest logit is their positive.
        """
        if z1.shape != z2.shape or z1.dim() != 2:
            raise ValueError(
                f"nt_xent needs two [B, D] tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
            )
        with torch.autocast(device_type=z1.device.type, enabled=False):
            logits, targets = self._logits(z1, z2)
            loss = F.cross_entropy(logits, targets, reduction="sum") / z1.shape[0]
        accuracy = (logits.detach().argmax(dim=1) == targets).float().mean()
        return LossOutput(loss, {"contrastive_accuracy": accuracy})

    def remember(self, keys1: torch.Tensor, keys2: torch.Tensor) -> None:
        """Add this step's keys of every rank to the memory, newest first; keep ``queue_size``.

        With ``queue_keys = "one_view"`` only view 2's keys are added (``N = B * world`` rows, rank
        order); with ``"both_views"`` all ranks' view-1 keys, then all view-2 keys (``2N`` rows).

        Args:
            keys1: ``[B, D]`` memory-network projections of view 1 on this rank.
            keys2: ``[B, D]`` the same for view 2.
        """
        if self.queue_size == 0:
            raise ValueError("nt_xent remembers no negatives with queue_size = 0")
        if keys1.shape != keys2.shape or keys1.dim() != 2:
            raise ValueError(
                f"nt_xent keys must be two [B, D] tensors of one shape, got {tuple(keys1.shape)} "
                f"and {tuple(keys2.shape)}"
            )
        with torch.no_grad():
            k1, k2 = (F.normalize(k, dim=1) for k in _float32(keys1, keys2))
            # No graph under no_grad: plain all-gathers.
            new = _gather_views(k1, k2) if self.queue_keys == "both_views" else _gather_rows(k2)
            old = self._memory_like(new)
            # A new tensor, not an in-place write: this step's logits still hold the old memory.
            self.memory = torch.cat([new, old])[: self.queue_size]

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        """The memory, for ``state_dict`` (checkpoints)."""
        return {"memory": self.memory}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the memory from ``state_dict``."""
        memory = state["memory"]
        if memory.dim() != 2 or memory.shape[0] > self.queue_size:
            raise ValueError(
                f"the saved memory holds {tuple(memory.shape)} keys, more than queue_size {self.queue_size}"
            )
        self.memory = memory

    def _memory_like(self, columns: torch.Tensor) -> torch.Tensor:
        """The memory on ``columns``' device and dtype (empty when nothing is remembered yet).

        Raises:
            ValueError: The remembered keys have another dimension than ``columns``.
        """
        if self.memory.numel() == 0:
            return columns.new_zeros(0, columns.shape[1])
        if self.memory.shape[1] != columns.shape[1]:
            raise ValueError(
                f"nt_xent remembers {self.memory.shape[1]}-d keys, the projections are {columns.shape[1]}-d"
            )
        return self.memory.to(device=columns.device, dtype=columns.dtype)

    def _logits(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked logits ``[2B, 2N + M]`` of the local rows and their positives' columns ``[2B]``.

        Columns are all ranks' view-1 rows (``N = B * world``, rank order), then all view-2 rows,
        then the ``M`` remembered keys.
        """
        batch = z1.shape[0]
        h1, h2 = (F.normalize(z, dim=1) for z in _float32(z1, z2))
        rows = torch.cat([h1, h2], dim=0)
        world = cdist.world_size()
        columns = _gather_views(h1, h2)
        if self.queue_size:
            columns = torch.cat([columns, self._memory_like(columns)])
        # Scaling the [2B, D] rows rather than the [2B, 2N] logits saves two passes over the logits.
        logits = (rows / self.temperature) @ columns.T
        total = world * batch
        local = torch.arange(batch, device=z1.device) + cdist.rank() * batch
        own = torch.cat([local, local + total])
        positive = torch.cat([local + total, local])
        # In place on the product (matmul does not keep its output for backward): no [2B, 2N] copy.
        logits[torch.arange(2 * batch, device=z1.device), own] = MASKED_LOGIT
        return logits, positive


def _gather_views(h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
    """Both views' rows from every rank: ``[B, D]`` twice to ``[2N, D]`` (``N = B * world``), all
    ranks' view-1 rows in rank order, then all view-2 rows; with gradient to the local rows.

    One collective for both views: ``[world * 2, B, D]`` to ``[2, world * B, D]`` to ``[2N, D]``.
    """
    batch, dim = h1.shape
    gathered = cdist.gather_with_grad(torch.stack([h1, h2]))
    return gathered.reshape(-1, 2, batch, dim).transpose(0, 1).reshape(-1, dim)


def _gather_rows(h: torch.Tensor) -> torch.Tensor:
    """One view's rows from every rank: ``[B, D]`` to ``[N, D]`` (``N = B * world``), rank order."""
    return cdist.gather_with_grad(h)


class CrossEntropyLoss(nn.Module):
    """Cross-entropy over labelled rows (``targets == -1`` ignored), with optional label smoothing.

    Attributes:
        label_smoothing: Share of the target mass spread over all classes.
    """

    def __init__(self, label_smoothing: float) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> LossOutput:
        """Loss of one batch.

        Args:
            logits: ``[B, C]`` class scores.
            targets: int64 ``[B]`` class indices, ``-1`` where unlabelled.

        Returns:
            Mean cross-entropy over labelled rows (zero when none is labelled) and ``accuracy``,
            the share of labelled rows whose argmax is the target (zero when none is labelled).
        """
        with torch.autocast(device_type=logits.device.type, enabled=False):
            (logits32,) = _float32(logits)
            loss = _labelled_cross_entropy(logits32, targets, self.label_smoothing)
        return LossOutput(loss, {"accuracy": _accuracy(logits32.detach(), targets)})


def _accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Share of rows with ``targets != -1`` whose argmax is the target; 0 when none is labelled."""
    labelled = targets != -1
    hits = (logits.argmax(dim=1) == targets) & labelled
    return hits.sum().float() / labelled.sum().clamp(min=1).float()


class DistillationLoss(nn.Module):
    """Soft-target distillation: cross-entropy of the student against the teacher at temperature tau.

    ``loss = mean_rows(-sum_c softmax(t / tau)_c * log_softmax(s / tau)_c)``, times ``tau^2`` when
    asked, plus ``labelled_weight`` times the cross-entropy of the student on labelled rows.

    Attributes:
        temperature: tau, shared by teacher and student.
        labelled_weight: Weight of the labelled cross-entropy term.
        scale_by_temperature_squared: Whether the soft term is multiplied by tau^2.
    """

    def __init__(
        self, temperature: float, labelled_weight: float, scale_by_temperature_squared: bool
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.labelled_weight = labelled_weight
        self.scale_by_temperature_squared = scale_by_temperature_squared

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, labelled_weight={self.labelled_weight}, "
            f"scale_by_temperature_squared={self.scale_by_temperature_squared}"
        )

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None = None
    ) -> LossOutput:
        """Loss of one batch.

        Args:
            student_logits: ``[B, C]``.
            teacher_logits: ``[B, C]`` (detached here: no gradient reaches the teacher).
            targets: Optional int64 ``[B]``, ``-1`` where unlabelled; used by the labelled term.

        Returns:
            The loss (float32) and ``agreement``, the share of rows where the student's argmax is
            the teacher's.
        """
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student and teacher logits differ in shape: {tuple(student_logits.shape)} "
                f"and {tuple(teacher_logits.shape)}"
            )
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            student, teacher = _float32(student_logits, teacher_logits.detach())
            loss = self._soft_term(student, teacher)
            if self.labelled_weight > 0.0 and targets is not None:
                loss = loss + self.labelled_weight * _labelled_cross_entropy(student, targets, 0.0)
        agreement = (student.detach().argmax(dim=1) == teacher.argmax(dim=1)).float().mean()
        return LossOutput(loss, {"agreement": agreement})

    def _soft_term(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        tau = self.temperature
        soft_targets = torch.softmax(teacher / tau, dim=1)
        term = -(soft_targets * torch.log_softmax(student / tau, dim=1)).sum(dim=1).mean()
        return term * tau**2 if self.scale_by_temperature_squared else term


def _build_nt_xent(options: NTXentOptions) -> NTXentLoss:
    return NTXentLoss(options.temperature, options.queue_size, options.queue_keys)


def _build_cross_entropy(options: CrossEntropyOptions) -> CrossEntropyLoss:
    return CrossEntropyLoss(options.label_smoothing)


def _build_distillation(options: DistillationOptions) -> DistillationLoss:
    return DistillationLoss(
        options.temperature, options.labelled_weight, options.scale_by_temperature_squared
    )


@hookimpl
def contrastive_register_losses() -> list[Component]:
    """The built-in losses."""
    return [
        Component(
            name="nt_xent",
            build=_build_nt_xent,
            options=NTXentOptions,
            summary="SimCLR NT-Xent over both views, negatives from every rank and optionally a memory.",
        ),
        Component(
            name="cross_entropy",
            build=_build_cross_entropy,
            options=CrossEntropyOptions,
            summary="Cross-entropy on labelled rows (targets -1 ignored), optional label smoothing.",
        ),
        Component(
            name="distillation",
            build=_build_distillation,
            options=DistillationOptions,
            summary="Student against the teacher's softened predictions, plus optional labelled term.",
        ),
    ]
