"""The example encoder ``mini_cnn``: a small all-convolutional network (example plugin).

Chosen in a spec with ``[pretrain.encoder] name = "mini_cnn"``; its features are the global
average of the last convolution's channels.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from contrastive import Component, hookimpl, option
from contrastive.interfaces import NormLayer


@attrs.frozen
class MiniCnnOptions:
    """Options of ``mini_cnn``."""

    channels: tuple[int, ...] = option((16, 32), "Filters of each 3x3 convolution, in order.", min=1)
    stride: int = option(2, "Stride of every convolution after the first.", min=1, max=2)


class MiniCnn(nn.Module):
    """Convolution -> norm -> ReLU blocks, then a global average pool.

    ``forward``: ``float32 [B, 3, S, S]`` to features ``[B, feature_dim]``.
    """

    def __init__(self, options: MiniCnnOptions, norm_layer: NormLayer) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = 3
        for i, channels in enumerate(options.channels):
            stride = 1 if i == 0 else options.stride
            blocks += [
                nn.Conv2d(width, channels, 3, stride=stride, padding=1, bias=False),
                norm_layer(channels),  # every normalization layer comes from the spec's choice
                nn.ReLU(inplace=True),
            ]
            width = channels
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = width  # core reads it to size the head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` images to ``[B, feature_dim]`` features."""
        features: torch.Tensor = self.blocks(x).mean(dim=(2, 3))
        return features


def build_mini_cnn(options: MiniCnnOptions, *, norm_layer: NormLayer) -> MiniCnn:
    """Builder: the stage passes the normalization factory the spec chose."""
    return MiniCnn(options, norm_layer)


@hookimpl
def contrastive_register_encoders() -> list[Component]:
    """The encoders this plugin offers."""
    return [Component("mini_cnn", build_mini_cnn, MiniCnnOptions, summary="A small CNN (example plugin).")]
