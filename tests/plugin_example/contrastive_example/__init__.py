"""An example third-party plugin: adds the loss ``neg_cosine``, the encoder ``mini_cnn`` and the
augmentations ``pad_crop`` and ``crop_flip_invert`` to contrastive.

Installed with ``pip install .``; found through the entry point ``example`` in group
``contrastive``; chosen in a spec with ``[pretrain.loss] name = "neg_cosine"`` and so on. pluggy
finds the hook functions among this module's attributes, so the two imports below register the
encoder and the augmentations as well.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from contrastive import Component, hookimpl, option
from contrastive.interfaces import LossKind, LossOutput
from contrastive_example.augmentations import contrastive_register_augmentations
from contrastive_example.encoders import contrastive_register_encoders

__all__ = [
    "contrastive_register_augmentations",
    "contrastive_register_encoders",
    "contrastive_register_losses",
]


@attrs.frozen
class NegCosineOptions:
    """Options of ``neg_cosine``."""

    scale: float = option(1.0, "Multiply the loss by this.", min=0.0, min_exclusive=True)

    def loss_kind(self) -> LossKind:
        """Called on two views' projections: ``validate`` rejects it in another stage."""
        return LossKind.CONTRASTIVE


class NegCosine(nn.Module):
    """Negative cosine similarity between the two views' projections (no negatives)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> LossOutput:
        """Loss of two ``[B, D]`` projections; returns a scalar and the mean similarity."""
        similarity = F.cosine_similarity(z1.float(), z2.float(), dim=1).mean()
        return LossOutput(loss=-self.scale * similarity, metrics={"cosine": similarity.detach()})


def build_neg_cosine(options: NegCosineOptions) -> NegCosine:
    """Builder called by contrastive with the validated options."""
    return NegCosine(options.scale)


@hookimpl
def contrastive_register_losses() -> list[Component]:
    """The components this plugin offers."""
    return [
        Component(
            "neg_cosine",
            build_neg_cosine,
            NegCosineOptions,
            summary="Negative cosine similarity of the two views (example plugin).",
        )
    ]
