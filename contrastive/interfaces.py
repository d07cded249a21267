"""What the stages expect of built components: the contracts between core and plugins.

Each hookspec in :mod:`contrastive.hookspecs` names the interface its components' builders return.
These are structural (``typing.Protocol``): a plugin implements them without importing anything
but the names it wants to annotate with.

What core must know of a component before it is built (how many layers a head offers, how a loss
is called, whether an encoder is a torchvision network) is a *capability*: an optional method of
the component's options class (:class:`HeadCapabilities`, :class:`LossCapabilities`,
:class:`EncoderCapabilities`, :class:`AugmentationCapabilities`), read through
:func:`head_layer_count`, :func:`loss_kind`, :func:`loss_uses_labels`,
:func:`loss_remembers_negatives`, :func:`encoder_torchvision_model` and
:func:`augmentation_preprocessing`, or a runtime-checkable protocol (:class:`LabelledSubsets`, of
datasets; :class:`NamedClasses`, of built data sources; :class:`NegativeMemory`, of built losses).
Core never reads an option by name.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol, Self, runtime_checkable

import torch
from torch import nn

from contrastive.errors import PluginError

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


@runtime_checkable
class MetricLogger(Protocol):
    """A sink for one stage's metrics on rank 0: a file, TensorBoard, MLflow, W&B.

    The training loop calls :meth:`log_metrics` at every logged step (and after each kNN monitor
    pass), :meth:`log_images` once with a few augmented training views at the stage's first
    step, and :meth:`close` when the stage ends or fails; the run logs its resolved spec with
    :meth:`log_text` when the stage starts afresh.
    """

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Record named scalars at a 0-based optimizer step (``metrics`` also holds ``step``,
        ``epoch`` and ``lr`` when the loop logs them)."""
        ...

    def log_text(self, name: str, text: str) -> None:
        """Record a named text (the resolved spec as TOML)."""
        ...

    def log_images(self, step: int, name: str, images: torch.Tensor) -> None:
        """Record images: ``float32 [N, 3, S, S]`` with values in [0, 1], on any device."""
        ...

    def close(self) -> None:
        """Flush and release files, processes and runs (called once)."""
        ...


class LossKind(enum.Enum):
    """How a stage calls its loss, and so which stage a loss can serve.

    Attributes:
        CONTRASTIVE: ``loss(z1, z2)``: ``[B, D]`` projections of two views of the same images
            (pretraining).
        SUPERVISED: ``loss(logits, targets)``: class scores and labels, ``-1`` where unlabelled
            (fine-tuning).
        DISTILLATION: ``loss(student_logits, teacher_logits, targets)``: the student's and the
            frozen teacher's class scores, ``targets`` as above (distillation).
    """

    CONTRASTIVE = "contrastive"
    SUPERVISED = "supervised"
    DISTILLATION = "distillation"

    @property
    def call(self) -> str:
        """How the stage calls such a loss, for messages."""
        return {
            LossKind.CONTRASTIVE: "loss(z1, z2) on two views",
            LossKind.SUPERVISED: "loss(logits, targets) on labels",
            LossKind.DISTILLATION: "loss(student_logits, teacher_logits, targets) with a teacher",
        }[self]


# Capabilities: what core needs to know of a component, asked of its *options* object (the only
# thing that exists when a spec is validated, and what a checkpoint records). Each is an optional
# method of the options class; a component that does not define it gets the default documented
# here. Core reads options only through these functions, never by an option's name.


class HeadCapabilities(Protocol):
    """Optional methods of a head's options class."""

    def layer_count(self) -> int:
        """Layers of the head these options build: fine-tuning may keep ``0..layer_count()`` of
        them (``finetune.from_layer``, checked when the spec is validated) through the built
        head's ``truncated(k)``. Without it a head cannot be cut (``from_layer`` must be 0)."""
        ...


class LossCapabilities(Protocol):
    """Optional methods of a loss's options class."""

    def loss_kind(self) -> LossKind:
        """How the loss is called, so validation rejects it in a stage that calls it otherwise.
        Without it the stage's call is not checked before the run."""
        ...

    def uses_labels(self) -> bool:
        """Whether a distillation loss also learns from the labels (the run then reports its
        images as labelled). Default: False."""
        ...

    def remembers_negatives(self) -> bool:
        """Whether a contrastive loss keeps negatives from earlier steps: its built module is then
        a :class:`NegativeMemory`, and ``pretrain.memory_momentum`` may give it a momentum encoder.
        Default: False."""
        ...


class EncoderCapabilities(Protocol):
    """Optional methods of an encoder's options class."""

    def torchvision_model(self) -> str | None:
        """Name of the ``torchvision.models`` builder whose network loads this encoder's
        ``state_dict`` (its ``fc`` aside), or None; ``contrastive export`` offers it after checking
        that the weights load. Default: None."""
        ...


class AugmentationCapabilities(Protocol):
    """Optional methods of an augmentation's options class."""

    def at_size(self, size: int) -> Self:
        """The same augmentation making views of ``size`` pixels a side (``contrastive eval
        --size``). Without it the view size of an evaluation cannot be changed."""
        ...

    def preprocessing(self) -> dict[str, object] | None:
        """A plain-data (JSON-ready) description of what these options do to an image as an
        evaluation view, for people and programs that run an exported model without
        ``contrastive`` (e.g. ``{"resize": ..., "size": 224, "mean": [...], "std": [...]}``; the
        keys are the plugin's to choose). ``contrastive export`` records it beside the component
        record; None (the default) records the component alone."""
        ...


@runtime_checkable
class NamedClasses(Protocol):
    """Optional attribute of a built data source: its class names, position = class index.

    ``contrastive export`` and ``contrastive predict`` read a stage's class names from its
    training data through it (empty when the source exposes no labels).
    """

    classes: tuple[str, ...]


class DatasetCapabilities(Protocol):
    """Optional methods of a dataset's options class."""

    @classmethod
    def for_path(cls, path: str) -> Self:
        """Options reading the shard set at ``path`` (a folder or shard pattern), all else default:
        what ``contrastive eval --train PATH`` builds. Without it the dataset is reached by name
        only (``NAME:SPLIT``)."""
        ...

    @classmethod
    def for_split(cls, split: str) -> Self:
        """Options reading the named split (``"train"``, ``"test"``), all else default: what
        ``contrastive eval --train NAME:SPLIT`` builds. Without it ``NAME`` alone (its defaults)
        is all a command line can name."""
        ...


@runtime_checkable
class LabelledSubsets(Protocol):
    """Optional method of a dataset's options class: draw a labelled subset of the split.

    ``contrastive bench label-efficiency`` asks it of the spec's ``finetune.dataset`` (the labelled
    training set) for every label setting and seed, and fine-tunes on the options it returns
    (passed as a ``--set finetune.dataset={...}`` override, so they must be writable as TOML).
    Without it a dataset cannot serve that protocol (a spec error naming ``finetune.dataset``).
    """

    def labelled_subset(self, *, per_class: int | None, fraction: float | None, seed: int) -> Self:
        """Options of a class-balanced, seeded subset of the split these options name.

        Exactly one of ``per_class`` (that many samples of every class, all of a smaller class)
        and ``fraction`` (that share of every class, in (0, 1]) is given; the same arguments give
        the same subset on every call. Preparing the subset (writing its shards) is allowed.

        Raises:
            DataError: The split cannot give such a subset (unlabelled, remote, or this way of
                choosing is not supported by the dataset).
        """
        ...


@runtime_checkable
class NegativeMemory(Protocol):
    """A built contrastive loss that also scores every row against negatives from earlier steps
    (the memory of MoCo, which SimCLRv2 adds on top of SimCLR; not in the official code).

    Pretraining calls :meth:`remember` once a step, after the loss, with the memory network's
    projections of that step's two views: those of an exponential moving average of encoder and
    head when ``pretrain.memory_momentum`` > 0, else the trained network's own, detached. The memory lives
    in the module's ``state_dict`` (buffers or extra state): it is checkpointed with the stage and
    restored on resume, so a resumed run continues with exactly the negatives it had.
    """

    def remember(self, keys1: torch.Tensor, keys2: torch.Tensor) -> None:
        """Add this step's keys to the memory (the oldest entries give way).

        Args:
            keys1: ``[B, D]`` memory-network projections of view 1 on this rank (no gradient).
            keys2: ``[B, D]`` the same for view 2. Distributed: every rank calls this with its own
                rows, and the module gathers them so that all ranks keep the same memory.
        """
        ...


def _capability(options: object, name: str) -> Callable[[], object] | None:
    method = getattr(options, name, None)
    return method if callable(method) else None


def _bad_capability(options: object, name: str, expected: str, got: object) -> PluginError:
    return PluginError(f"{type(options).__name__}.{name}() must return {expected}, got {got!r}")


def head_layer_count(options: object) -> int | None:
    """The head's :meth:`HeadCapabilities.layer_count`, or None when its options do not say.

    Raises:
        PluginError: The method returned something other than an integer >= 0.
    """
    method = _capability(options, "layer_count")
    if method is None:
        return None
    count = method()
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise _bad_capability(options, "layer_count", "an integer >= 0", count)
    return count


def loss_kind(options: object) -> LossKind | None:
    """The loss's :meth:`LossCapabilities.loss_kind`, or None when its options do not say.

    Raises:
        PluginError: The method returned something other than a :class:`LossKind`.
    """
    method = _capability(options, "loss_kind")
    if method is None:
        return None
    kind = method()
    if not isinstance(kind, LossKind):
        raise _bad_capability(options, "loss_kind", "a contrastive.interfaces.LossKind", kind)
    return kind


def loss_uses_labels(options: object) -> bool:
    """The loss's :meth:`LossCapabilities.uses_labels`; False when its options do not say."""
    method = _capability(options, "uses_labels")
    return bool(method()) if method is not None else False


def loss_remembers_negatives(options: object) -> bool:
    """The loss's :meth:`LossCapabilities.remembers_negatives`; False when its options do not say."""
    method = _capability(options, "remembers_negatives")
    return bool(method()) if method is not None else False


def encoder_torchvision_model(options: object) -> str | None:
    """The encoder's :meth:`EncoderCapabilities.torchvision_model`; None when its options do not say.

    Raises:
        PluginError: The method returned something other than a string or None.
    """
    method = _capability(options, "torchvision_model")
    if method is None:
        return None
    name = method()
    if name is not None and not isinstance(name, str):
        raise _bad_capability(options, "torchvision_model", "a string or None", name)
    return name or None


def augmentation_preprocessing(options: object) -> dict[str, object] | None:
    """The augmentation's :meth:`AugmentationCapabilities.preprocessing`; None when its options do
    not say.

    Raises:
        PluginError: The method returned something other than a JSON-ready dict or None.
    """
    method = _capability(options, "preprocessing")
    if method is None:
        return None
    described = method()
    if described is None:
        return None
    try:
        plain = json.loads(json.dumps(described, allow_nan=False)) if isinstance(described, dict) else None
    except (TypeError, ValueError):
        plain = None
    if not isinstance(plain, dict):
        raise _bad_capability(options, "preprocessing", "a dict of JSON values or None", described)
    return plain


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


def augmentation_at_size(options: object, size: int) -> Any:
    """The augmentation's :meth:`AugmentationCapabilities.at_size` options.

    Raises:
        PluginError: Its options cannot change the view size, or returned other options.
    """
    method = _capability(options, "at_size")
    if method is None:
        raise PluginError(
            f"{type(options).__name__} offers no at_size(size): its view size cannot be changed"
        )
    resized = method(size)  # type: ignore[call-arg]
    if type(resized) is not type(options):
        raise _bad_capability(options, "at_size", f"a {type(options).__name__}", resized)
    return resized


def dataset_for_path(options_class: type, path: str) -> Any | None:
    """The dataset's :meth:`DatasetCapabilities.for_path` options, or None when it has none.

    Raises:
        PluginError: It returned something other than an instance of ``options_class``.
    """
    return _dataset_options(options_class, "for_path", path)


def dataset_for_split(options_class: type, split: str) -> Any | None:
    """The dataset's :meth:`DatasetCapabilities.for_split` options, or None when it has none.

    Raises:
        PluginError: It returned something other than an instance of ``options_class``.
    """
    return _dataset_options(options_class, "for_split", split)


def _dataset_options(options_class: type, name: str, argument: str) -> Any | None:
    method = _capability(options_class, name)
    if method is None:
        return None
    options = method(argument)  # type: ignore[call-arg]
    if not isinstance(options, options_class):
        kind = options_class.__name__
        raise PluginError(f"{kind}.{name}() must return a {kind}, got {options!r}")
    return options
