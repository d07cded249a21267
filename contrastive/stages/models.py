"""Model assembly: the networks the stages train and how a ``final.pt`` record rebuilds them.

* :class:`ContrastiveModel`: encoder and projection head (pretraining).
* :class:`Classifier`: encoder, the projection head's first ``from_layer`` layers, a classifier
  (fine-tuning, distillation).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from contrastive.errors import RunError, SpecError
from contrastive.interfaces import NormLayer
from contrastive.plugins import Registry
from contrastive.spec.structure import ComponentSpec, structure_options
from contrastive.stages.context import StageContext
from contrastive.stages.records import ClassifierRecord, ComponentRecord, PretrainRecord


class ContrastiveModel(nn.Module):
    """Encoder followed by the projection head: ``[B, 3, S, S]`` to projections ``[B, out_dim]``."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projections: torch.Tensor = self.head(self.encoder(x))
        return projections


class Classifier(nn.Module):
    """Encoder, optionally the first layers of a projection head, and a classifier.

    ``forward``: ``float32 [B, 3, S, S]`` to logits ``[B, num_classes]``.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module | None, classifier: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head if head is not None else nn.Identity()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.head(self.encoder(x)))
        return logits


def record(chosen: ComponentSpec) -> ComponentRecord:
    """The checkpoint record of a chosen component (its name and options)."""
    return ComponentRecord.of(chosen)


def from_record(ctx: StageContext, category: str, rec: ComponentRecord, where: str) -> ComponentSpec:
    """Rebuild a :class:`ComponentSpec` from a component record, validating the options again."""
    return spec_from_record(ctx.registry, category, rec, where)


def spec_from_record(registry: Registry, category: str, rec: ComponentRecord, where: str) -> ComponentSpec:
    """:func:`from_record` with a registry alone (outside a stage, e.g. ``contrastive eval``)."""
    entry = registry.get(category, rec.name)
    try:
        options = structure_options(entry.options, rec.options, source=where)
    except SpecError as exc:
        raise RunError(f"{where}: the recorded {category} options no longer validate: {exc}") from exc
    return ComponentSpec(name=rec.name, options=options)


def build_classifier(ctx: StageContext, rec: ClassifierRecord, where: str) -> Classifier:
    """Rebuild (untrained) the classifier a ``final.pt`` record describes."""
    model = rebuild(ctx.registry, rec, where)
    assert isinstance(model, Classifier)
    return model


def rebuild(
    registry: Registry, rec: PretrainRecord | ClassifierRecord, where: str
) -> ContrastiveModel | Classifier:
    """Rebuild (untrained) the model a ``final.pt`` record describes: a :class:`ContrastiveModel`
    for a pretraining record, a :class:`Classifier` for a classifier record. Load
    ``rec.state_dict`` into it for the trained weights."""

    def rebuilt(category: str, part: ComponentRecord, **inputs: Any) -> Any:
        chosen = spec_from_record(registry, category, part, where)
        return registry.get(category, chosen.name).component.build(chosen.options, **inputs)

    norm: NormLayer = rebuilt("normalizations", rec.normalization)
    encoder = rebuilt("encoders", rec.encoder, norm_layer=norm)
    in_dim = int(encoder.feature_dim)
    if isinstance(rec, PretrainRecord):
        return ContrastiveModel(
            encoder, rebuilt("heads", rec.head, in_dim=in_dim, norm_layer=norm, num_classes=None)
        )
    head = None
    if rec.head is not None:
        full = rebuilt("heads", rec.head, in_dim=in_dim, norm_layer=norm, num_classes=None)
        head = truncate(full, rec.from_layer, where)
        in_dim = int(getattr(head, "out_dim"))  # noqa: B009 - heads expose out_dim by contract
    classifier = rebuilt("heads", rec.classifier, in_dim=in_dim, norm_layer=norm, num_classes=rec.num_classes)
    return Classifier(encoder, head, classifier)


def truncate(head: nn.Module, layers: int, where: str) -> nn.Module:
    """The first ``layers`` layers of a projection head (``truncated(k)``)."""
    if not hasattr(head, "truncated"):
        raise RunError(f"{where}: the head {type(head).__name__} cannot be cut after layer {layers}")
    try:
        part: nn.Module = getattr(head, "truncated")(layers)  # noqa: B009
    except (ValueError, IndexError) as exc:
        raise RunError(f"{where}: cannot keep {layers} head layers: {exc}") from exc
    return part
