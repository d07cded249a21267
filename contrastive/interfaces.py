"""What the stages expect of built components: the contracts between core and plugins.

Each hookspec in :mod:`contrastive.hookspecs` names the interface its components' builders return.
These are structural (``typing.Protocol``): a plugin implements them without importing anything
but the names it wants to annotate with.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn

#: A normalization factory: ``norm_layer(num_features)`` returns a module for ``[B, C, H, W]`` or
#: ``[B, C]`` inputs (BatchNorm-like, with ``weight``/``bias`` when it has parameters).
NormLayer = Callable[[int], nn.Module]

#: A learning-rate schedule: absolute learning rate at a 0-based optimizer step.
Schedule = Callable[[int], float]


class LossOutput(NamedTuple):
    """What every loss returns.

    Attributes:
        loss: Scalar tensor to minimise (float32).
        metrics: Named detached scalars to log, e.g. ``{"contrastive_accuracy": tensor(0.9)}``.
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


class Batch(NamedTuple):
    """One batch as the data pipeline yields it (already on CPU, collated in the workers).

    Attributes:
        images: ``uint8 [B, V, 3, S, S]``: V views (2 for pretraining, 1 otherwise) of S px.
        labels: ``int64 [B]``: class index, ``-1`` where the sample carries no label.
        mask: ``bool [B]``: False for padding rows added so that every rank has the same batch
            count in evaluation; such rows never count in a metric.
        skipped: Number of samples skipped as undecodable while this batch was assembled.
    """

    images: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    skipped: int = 0


@runtime_checkable
class Augmentation(Protocol):
    """A view generator split into a per-sample part (workers) and a batched part (device).

    Attributes:
        num_views: Views made of each image (2 for SimCLR pretraining, 1 otherwise).
        size: Side S of the square views, in pixels.
    """

    num_views: int
    size: int

    def per_sample(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Geometric part, run in data-loader workers.

        Args:
            image: ``uint8 [3, H, W]`` RGB image.
            generator: Source of randomness (seeded per worker); None uses the global RNG.

        Returns:
            ``uint8 [V, 3, S, S]``.
        """
        ...

    def on_device(self, views: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Batched photometric part, run on the training device.

        Args:
            views: ``uint8 [B, V, 3, S, S]`` on the training device.
            generator: Generator on the same device; None uses the global RNG.

        Returns:
            ``float32 [B, V, 3, S, S]``, values in [0, 1] unless the options ask for normalization.
        """
        ...


@runtime_checkable
class DataSource(Protocol):
    """One split of a data set, streamed to every rank.

    Attributes:
        num_samples: Samples in the split (from the shard index).
        num_classes: Number of classes (0 when the split carries no labels).
    """

    num_samples: int
    num_classes: int

    def steps_per_epoch(self, global_batch_size: int) -> int:
        """Batches every rank yields per training epoch (the same on every rank)."""
        ...

    def train_batches(
        self,
        *,
        augmentation: Augmentation,
        global_batch_size: int,
        rank: int,
        world_size: int,
        epoch: int,
        seed: int,
        num_workers: int,
        start_step: int = 0,
    ) -> Iterator[Batch]:
        """Shuffled training batches of ``global_batch_size // world_size`` samples.

        Yields exactly ``steps_per_epoch(global_batch_size) - start_step`` batches on every rank.
        """
        ...

    def eval_batches(
        self,
        *,
        augmentation: Augmentation,
        batch_size: int,
        rank: int,
        world_size: int,
        num_workers: int,
    ) -> Iterator[Batch]:
        """Every sample of the split exactly once across all ranks, padded rows masked out."""
        ...


class Encoder(Protocol):
    """An image encoder: ``float32 [B, 3, S, S]`` to features ``[B, feature_dim]``."""

    feature_dim: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class Head(Protocol):
    """A head on encoder features: ``[B, in_dim]`` to ``[B, out_dim]``."""

    out_dim: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class ParamRole(enum.Enum):
    """What a trainable parameter is, so an optimizer can treat kinds of parameters differently.

    Every trainable parameter of a stage's model has exactly one role, decided by the model's
    structure (never by parameter names), in this order of precedence:

    Attributes:
        NORMALIZATION: Scale and shift of a normalization module (a subclass of torch's
            ``_NormBase`` — BatchNorm, SyncBatchNorm, InstanceNorm — or of GroupNorm, LayerNorm,
            RMSNorm; the built-in ``batch_norm`` and ``global_bn`` are). SimCLR's
            ``batch_normalization`` variables.
        BIAS: Any other parameter with at most one dimension: biases (the classifier's included),
            the affine parameters of a normalization layer of another type, learnable scalars.
            SimCLR's ``bias`` variables.
        CLASSIFIER: The multi-dimensional parameters of the supervised classifier that fine-tuning
            and distillation train on top of the encoder. SimCLR's ``head_supervised`` kernel.
        WEIGHT: Everything else: convolution kernels and linear weights of encoder and head.
    """

    NORMALIZATION = "normalization"
    BIAS = "bias"
    CLASSIFIER = "classifier"
    WEIGHT = "weight"


class RoledParameter(NamedTuple):
    """One trainable parameter with its qualified name in the model and its role."""

    name: str
    param: torch.nn.Parameter
    role: ParamRole


class ParameterRoles:
    """A model's trainable parameters (``requires_grad``), each once, in model order, with roles.

    What an optimizer builder receives besides the model: core decides the roles (it knows which
    module is the classifier), the optimizer decides what each role gets.
    """

    def __init__(self, entries: Iterator[RoledParameter] | list[RoledParameter]) -> None:
        self._entries = tuple(entries)

    def __iter__(self) -> Iterator[RoledParameter]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def params(self, role: ParamRole) -> list[torch.nn.Parameter]:
        """The parameters of one role, in model order."""
        return [entry.param for entry in self._entries if entry.role is role]

    def role_of(self, param: torch.Tensor) -> ParamRole:
        """The role of ``param`` (matched by identity).

        Raises:
            KeyError: ``param`` is not one of the trainable parameters.
        """
        for entry in self._entries:
            if entry.param is param:
                return entry.role
        raise KeyError("not a trainable parameter of this model")

    def counts(self) -> dict[ParamRole, int]:
        """Number of parameter tensors of each role (roles without any are left out)."""
        found: dict[ParamRole, int] = {}
        for entry in self._entries:
            found[entry.role] = found.get(entry.role, 0) + 1
        return found
