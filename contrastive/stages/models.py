"""Network assembly: the one place that turns chosen components into the networks the stages
train, and a ``final.pt`` record back into the network it describes.

* :class:`NetworkParts`: the chosen components of a network (normalization, encoder, projection
  head, classifier) and how they connect.
* :func:`assemble`: builds the network of some parts, for every stage, ``contrastive import`` and
  :func:`rebuild`.
* :class:`ContrastiveModel`: encoder and projection head (pretraining).
* :class:`Classifier`: encoder, the projection head's first ``from_layer`` layers, a classifier
  (fine-tuning, distillation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import nn

from contrastive.errors import RunError, SpecError
from contrastive.registry import Registry
from contrastive.spec.structure import ComponentSpec, structure_options
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


@attrs.frozen
class NetworkParts:
    """The chosen components of a network and how they connect.

    Without a classifier the parts make a :class:`ContrastiveModel` (a head is then needed);
    with one, a :class:`Classifier` reading the head's first ``from_layer`` layers (no head: the
    encoder's features).

    Attributes:
        normalization: Makes every normalization layer of encoder, head and classifier.
        encoder: Images ``[B, 3, S, S]`` to features ``[B, feature_dim]``.
        head: The projection head, or None.
        from_layer: Head layers the classifier reads (classifiers only).
        classifier: The supervised head, or None (a pretraining network).
        num_classes: The classifier's outputs (classifiers only).
    """

    normalization: ComponentSpec
    encoder: ComponentSpec
    head: ComponentSpec | None = None
    from_layer: int = 0
    classifier: ComponentSpec | None = None
    num_classes: int | None = None

    def record(self, state_dict: dict[str, torch.Tensor]) -> PretrainRecord | ClassifierRecord:
        """The ``final.pt`` record of a network of these parts with these weights."""
        encoder, normalization = ComponentRecord.of(self.encoder), ComponentRecord.of(self.normalization)
        head = ComponentRecord.of(self.head) if self.head is not None else None
        if self.classifier is None:
            assert head is not None, "a pretraining network has a head"
            return PretrainRecord(
                encoder=encoder, normalization=normalization, head=head, state_dict=state_dict
            )
        assert self.num_classes is not None, "a classifier has a number of classes"
        return ClassifierRecord(
            encoder=encoder,
            normalization=normalization,
            head=head,
            from_layer=self.from_layer,
            classifier=ComponentRecord.of(self.classifier),
            num_classes=self.num_classes,
            state_dict=state_dict,
        )


def assemble(
    registry: Registry,
    parts: NetworkParts,
    where: str,
    *,
    pretrained: Mapping[str, torch.Tensor] | None = None,
) -> ContrastiveModel | Classifier:
    """Build the (untrained) network of ``parts``: normalization, then encoder, head, classifier.

    Args:
        registry: Plugins to build from.
        parts: The chosen components.
        where: Names the parts' origin in error messages (a spec key, a ``final.pt`` path).
        pretrained: A :class:`ContrastiveModel` state dict loaded into encoder and whole head before
            the head is cut for the classifier (fine-tuning from a pretraining).

    Raises:
        RunError: The head cannot be cut after ``from_layer`` layers, or a pretraining network
            has no head.
    """
    norm = build(registry, parts.normalization)
    encoder = build(registry, parts.encoder, norm_layer=norm)
    in_dim = int(encoder.feature_dim)
    head = None
    if parts.head is not None:
        head = build(registry, parts.head, in_dim=in_dim, norm_layer=norm, num_classes=None)
    if parts.classifier is None:
        if head is None:
            raise RunError(f"{where}: a pretraining network needs a projection head")
        return ContrastiveModel(encoder, head)
    if pretrained is not None:
        if head is None:
            raise RunError(f"{where}: pretrained weights are loaded into an encoder and a head")
        ContrastiveModel(encoder, head).load_state_dict(pretrained)
    kept = truncate(head, parts.from_layer, where) if head is not None else None
    if kept is not None:
        in_dim = int(getattr(kept, "out_dim"))  # noqa: B009 - heads expose out_dim by contract
    classifier = build(
        registry, parts.classifier, in_dim=in_dim, norm_layer=norm, num_classes=parts.num_classes
    )
    return Classifier(encoder, kept, classifier)


def build(registry: Registry, chosen: ComponentSpec, **inputs: Any) -> Any:
    """Build a chosen component with its build-time inputs (the category's hookspec lists them)."""
    return chosen.build(registry, **inputs)


def spec_from_record(registry: Registry, rec: ComponentRecord, where: str) -> ComponentSpec:
    """The :class:`ComponentSpec` of a component record, its options validated again.

    Raises:
        RunError: The recorded options no longer validate (the plugin changed).
    """
    entry = registry.get(rec.category, rec.name)
    try:
        options = structure_options(entry.options, rec.options, source=where)
    except SpecError as exc:
        raise RunError(f"{where}: the recorded {rec.category} options no longer validate: {exc}") from exc
    return ComponentSpec(name=rec.name, options=options, category=rec.category)


def parts_of(registry: Registry, rec: PretrainRecord | ClassifierRecord, where: str) -> NetworkParts:
    """The parts a ``final.pt`` record names, validated against the installed plugins."""
    normalization = spec_from_record(registry, rec.normalization, where)
    encoder = spec_from_record(registry, rec.encoder, where)
    head = spec_from_record(registry, rec.head, where) if rec.head is not None else None
    if isinstance(rec, PretrainRecord):
        return NetworkParts(normalization=normalization, encoder=encoder, head=head)
    return NetworkParts(
        normalization=normalization,
        encoder=encoder,
        head=head,
        from_layer=rec.from_layer,
        classifier=spec_from_record(registry, rec.classifier, where),
        num_classes=rec.num_classes,
    )


def rebuild(
    registry: Registry, rec: PretrainRecord | ClassifierRecord, where: str
) -> ContrastiveModel | Classifier:
    """Rebuild (untrained) the model a ``final.pt`` record describes: a :class:`ContrastiveModel`
    for a pretraining record, a :class:`Classifier` for a classifier record. Load
    ``rec.state_dict`` into it for the trained weights."""
    return assemble(registry, parts_of(registry, rec, where), where)


def truncate(head: nn.Module, layers: int, where: str) -> nn.Module:
    """The first ``layers`` layers of a projection head (``truncated(k)``)."""
    if not hasattr(head, "truncated"):
        raise RunError(f"{where}: the head {type(head).__name__} cannot be cut after layer {layers}")
    try:
        part: nn.Module = getattr(head, "truncated")(layers)  # noqa: B009
    except (ValueError, IndexError) as exc:
        raise RunError(f"{where}: cannot keep {layers} head layers: {exc}") from exc
    return part
