"""The hooks a plugin implements: one per component category.

Every hook takes no arguments and returns a list of :class:`contrastive.Component` records. Each
hook's docstring follows one template: what the category is, the builder's call (``build(options,
**inputs)``: the keyword inputs the stage supplies) and what the builder returns. A test checks that
every hook here is documented this way and appears in ``docs/writing-plugins.md``.

Core never reads a component's options by name. What it must know of a component before building
it is a *capability*: an optional method of the options class, listed under "Capabilities" in the
hook's docstring and specified in :mod:`contrastive.interfaces`. A component that does not define
one gets the documented default; categories without a "Capabilities" section have none.
"""

from __future__ import annotations

import enum
from typing import Any

import pluggy

from contrastive.component import Component

#: One string names the pluggy project, the markers and the entry-point group.
PROJECT = "contrastive"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorate a plugin's hook functions with this (re-exported as ``contrastive.hookimpl``).
hookimpl = pluggy.HookimplMarker(PROJECT)


class Category(enum.StrEnum):
    """The component categories: what a spec, ``list-plugins`` and a :class:`Component` call them.

    This enum is the one home of the category names in core; each member's value equals its
    string (``Category.LOSSES == "losses"``), so a category is also a plain ``str``.
    """

    AUGMENTATIONS = "augmentations"
    ENCODERS = "encoders"
    HEADS = "heads"
    LOSSES = "losses"
    OPTIMIZERS = "optimizers"
    NORMALIZATIONS = "normalizations"
    SCHEDULES = "schedules"
    DATASETS = "datasets"
    LOGGERS = "loggers"

    @property
    def hook(self) -> str:
        """The name of the hook that registers this category's components."""
        return f"contrastive_register_{self.value}"


#: Category -> hook name (every category has one hook, named after it).
HOOKS: dict[str, str] = {category: category.hook for category in Category}

#: The hooks that contribute something other than components: hook name -> what it adds.
COMMAND_HOOKS: dict[str, str] = {"contrastive_register_import_commands": "contrastive import"}


@hookspec
def contrastive_register_augmentations() -> list[Component]:
    """Register augmentations: how images become training or evaluation views.

    Builder:
        ``build(options) -> Augmentation`` (:class:`contrastive.interfaces.Augmentation`).

    Returns:
        Components whose builders make an object with ``per_sample`` (``uint8 [3, H, W]`` to
        ``uint8 [V, 3, S, S]``, in data-loader workers) and ``on_device`` (``uint8 [B, V, 3, S, S]``
        to ``float32`` of the same shape, batched on the training device).
    """
    return []


@hookspec
def contrastive_register_encoders() -> list[Component]:
    """Register encoders: networks from images to a feature vector.

    Builder:
        ``build(options, *, norm_layer: NormLayer) -> nn.Module``.

    Returns:
        Components whose builders make a module mapping ``float32 [B, 3, S, S]`` to
        ``[B, feature_dim]`` and exposing the ``feature_dim`` attribute; every normalization
        layer is made with ``norm_layer(num_features)``.

    Capabilities:
        ``options.torchvision_model() -> str | None``: the ``torchvision.models`` builder whose
        network loads the encoder's ``state_dict`` (``contrastive export`` says so after
        checking). Default: None.
    """
    return []


@hookspec
def contrastive_register_heads() -> list[Component]:
    """Register heads: projection MLPs and classifiers on top of encoder features.

    Builder:
        ``build(options, *, in_dim: int, norm_layer: NormLayer, num_classes: int | None)
        -> nn.Module``.

    Returns:
        Components whose builders make a module mapping ``[B, in_dim]`` to ``[B, out_dim]`` and
        exposing ``out_dim``. Projection heads ignore ``num_classes``; classifiers use it as
        ``out_dim``. A head that fine-tuning can cut also offers ``truncated(k) -> nn.Module``
        (its first ``k`` layers, ``out_dim`` included).

    Capabilities:
        ``options.layer_count() -> int``: how many layers ``truncated(k)`` can keep; validation
        checks ``finetune.from_layer`` against it. Default: none (a pretraining head without it
        needs ``from_layer = 0``).
    """
    return []


@hookspec
def contrastive_register_losses() -> list[Component]:
    """Register losses: contrastive, supervised and distillation objectives.

    Builder:
        ``build(options) -> nn.Module``.

    Returns:
        Components whose builders make a module returning
        :class:`contrastive.interfaces.LossOutput`. Contrastive losses are called as
        ``loss(z1, z2)`` with ``[B, D]`` projections of the two views on this rank; supervised ones
        as ``loss(logits, targets)``; distillation ones as ``loss(student_logits, teacher_logits,
        targets)`` with ``targets`` ``-1`` where unlabelled.

    Capabilities:
        ``options.loss_kind() -> LossKind``: contrastive, supervised or distillation
        (:class:`contrastive.interfaces.LossKind`); validation rejects the loss in a stage that
        calls it otherwise. Default: not checked. ``options.uses_labels() -> bool``: whether a
        distillation loss also learns from labels (the results count labelled images). Default:
        False. ``options.remembers_negatives() -> bool``: whether a contrastive loss keeps
        negatives from earlier steps; its module is then a
        :class:`contrastive.interfaces.NegativeMemory`, fed once a step by the pretraining stage
        (from a momentum encoder when ``pretrain.memory_momentum`` > 0). Default: False.
    """
    return []


@hookspec
def contrastive_register_optimizers() -> list[Component]:
    """Register optimizers.

    Builder:
        ``build(options, *, model: nn.Module, roles: ParameterRoles) -> torch.optim.Optimizer``.

    Returns:
        Components whose optimizer's param groups all start at the base learning rate (before the
        schedule scales it by batch size): the schedule is built from it and then sets ``lr`` on
        every param group each step. ``roles`` (:class:`contrastive.interfaces.ParameterRoles`)
        lists the trainable parameters with their role (normalization, bias, classifier, weight),
        so the optimizer can treat each kind as SimCLR does (no decay or layer adaptation for
        some).
    """
    return []


@hookspec
def contrastive_register_normalizations() -> list[Component]:
    """Register normalization layers (batch norm, global batch norm across ranks, none).

    Builder:
        ``build(options) -> NormLayer`` (called after the process group exists).

    Returns:
        Components whose builders make a factory ``norm_layer(num_features) -> nn.Module`` for
        ``[B, C, H, W]`` and ``[B, C]`` inputs.
    """
    return []


@hookspec
def contrastive_register_schedules() -> list[Component]:
    """Register learning-rate schedules.

    Builder:
        ``build(options, *, base_lr: float, global_batch_size: int, steps_per_epoch: int,
        epochs: int) -> Schedule``.

    Returns:
        Components whose builders make a function from a 0-based optimizer step to the absolute
        learning rate at that step (batch-size scaling included).
    """
    return []


@hookspec
def contrastive_register_datasets() -> list[Component]:
    """Register data sets: where training and evaluation samples come from.

    Builder:
        ``build(options) -> DataSource`` (:class:`contrastive.interfaces.DataSource`).

    Returns:
        Components whose builders make a source that yields the same number of
        :class:`contrastive.interfaces.Batch` es on every rank per epoch, and visits every sample
        exactly once in evaluation.
    """
    return []


@hookspec
def contrastive_register_loggers() -> list[Component]:
    """Register loggers: where a stage's metrics, example views and spec go (files, dashboards).

    Builder:
        ``build(options, *, directory: Path, stage: str, start_step: int, config: dict)
        -> MetricLogger`` (:class:`contrastive.interfaces.MetricLogger`).

    Returns:
        Components whose builders make a sink for one stage of a run, on rank 0 only: ``directory``
        is the run directory (write under it), ``start_step`` the step the stage resumes from (0
        when fresh; drop what an interrupted run logged after it), ``config`` the resolved spec as
        plain data. The ``jsonl`` logger (``<stage>/metrics.jsonl``) is always on; a spec adds
        others as ``[[runtime.loggers]]`` tables.
    """
    return []


@hookspec
def contrastive_register_import_commands() -> list[Any]:
    """Register importers: ``contrastive import NAME`` commands that turn weights published
    elsewhere into this project's ``final.pt`` records.

    Returns:
        ``click.Command`` objects, each added under ``contrastive import`` by its own name (unique
        across plugins). A command writes a record that ``finetune.init`` or ``distill.teacher``
        reads (see :mod:`contrastive.stages.records`); it raises
        :class:`contrastive.errors.ContrastiveError` subclasses for what a user can fix.
    """
    return []
