"""Built-in heads: SimCLRv2's projection MLP and a linear classifier.

The projection MLP follows SimCLR's reference code: every layer is a bias-free ``Linear`` followed
by a normalization layer; hidden layers keep the normalization's shift (beta) and end in a ReLU;
the last layer's normalization has no shift (``center=False`` in TensorFlow terms) and no ReLU.

A head built without ``norm_layer`` uses ``nn.BatchNorm1d``; ``num_classes`` defaults to None, so
``contrastive.build("heads", "projection_mlp", in_dim=8)`` works.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs
import torch
from torch import nn

from contrastive import Component, ContrastiveError, hookimpl, option
from contrastive.interfaces import NormLayer

log = logging.getLogger(__name__)


class HeadError(ContrastiveError, ValueError):
    """A head that cannot be built or cut as asked (missing class count, layer out of range)."""


def remove_shift(norm: nn.Module) -> nn.Module:
    """Take the trainable shift (beta) out of a normalization layer, in place.

    Every ``bias`` *parameter* of ``norm`` and its submodules is replaced by a non-persistent
    buffer of zeros of the same shape: forward code that reads ``self.bias`` keeps working, the
    shift stays exactly 0, it is not in ``parameters()`` (so neither an optimizer nor a later
    ``requires_grad_(True)`` can train it) and not in ``state_dict()``. A layer without a bias
    (e.g. ``nn.Identity`` or ``affine=False``) is returned unchanged.

    Args:
        norm: A module made by a ``NormLayer`` factory.

    Returns:
        ``norm`` itself.
    """
    for module in norm.modules():
        bias = module._parameters.get("bias")
        if bias is None:
            continue
        zeros = torch.zeros_like(bias.detach())
        del module._parameters["bias"]
        module.register_buffer("bias", zeros, persistent=False)
    return norm


class LayerStack(nn.Module):
    """A chain of layers whose intermediate outputs can be read and cut off.

    Attributes:
        layers: The layers, applied in order.
        out_dims: ``out_dims[k]`` is the width after ``k`` layers (``out_dims[0] == in_dim``).
        in_dim: Width of the input.
        out_dim: Width of the output (``out_dims[-1]``).
    """

    def __init__(self, layers: Sequence[nn.Module], dims: Sequence[int]) -> None:
        """Chain ``layers`` whose widths are ``dims`` (one more entry than there are layers)."""
        super().__init__()
        if len(dims) != len(layers) + 1:
            raise ValueError(f"{len(layers)} layers need {len(layers) + 1} widths, got {len(dims)}")
        self.layers = nn.ModuleList(layers)
        self.out_dims: list[int] = list(dims)
        self.in_dim = self.out_dims[0]
        self.out_dim = self.out_dims[-1]

    @property
    def num_layers(self) -> int:
        """Number of layers ``L``."""
        return len(self.layers)

    def resolve(self, k: int) -> int:
        """Layer count for ``k`` in ``0..L``, with ``-1`` meaning ``L``.

        Raises:
            HeadError: ``k`` is out of range.
        """
        if k == -1:
            return self.num_layers
        if not 0 <= k <= self.num_layers:
            raise HeadError(
                f"layer {k} is out of range for a head of {self.num_layers} layers (use 0..L or -1)"
            )
        return k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_dim]`` to ``[B, out_dim]``: every layer."""
        return self.forward_to(x, -1)

    def forward_to(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Output after the first ``k`` layers.

        Args:
            x: ``[B, in_dim]``.
            k: ``0`` returns ``x`` itself, ``1`` the first layer's output (ReLU included), and
                ``L`` or ``-1`` the last layer's.

        Returns:
            ``[B, out_dims[k]]``.
        """
        for layer in self.layers[: self.resolve(k)]:
            x = layer(x)
        return x

    def truncated(self, k: int) -> LayerStack:
        """A module computing the first ``k`` layers, sharing their parameters with this one.

        Args:
            k: Layers to keep, ``0..L`` or ``-1`` for all; ``0`` gives an identity of width
                ``in_dim``.

        Returns:
            A :class:`LayerStack` holding the same layer objects, with ``out_dim == out_dims[k]``.
        """
        kept = self.resolve(k)
        return LayerStack(list(self.layers[:kept]), self.out_dims[: kept + 1])


class ProjectionMLP(LayerStack):
    """SimCLRv2's projection head: ``num_layers`` of Linear (no bias) -> norm (-> ReLU)."""


def projection_layer(
    in_dim: int, out_dim: int, *, norm_layer: NormLayer, last: bool, init_std: float
) -> nn.Sequential:
    """One layer of the projection MLP.

    Args:
        in_dim: Input width.
        out_dim: Output width.
        norm_layer: Normalization factory.
        last: Whether this is the final layer (norm without shift, no ReLU).
        init_std: Std of the normal init of the linear weight; 0 keeps PyTorch's default.

    Returns:
        ``Linear -> norm -> ReLU``, or ``Linear -> norm`` for the last layer.
    """
    linear = nn.Linear(in_dim, out_dim, bias=False)
    if init_std > 0:
        nn.init.normal_(linear.weight, std=init_std)
    norm = norm_layer(out_dim)
    if last:
        return nn.Sequential(linear, remove_shift(norm))
    return nn.Sequential(linear, norm, nn.ReLU())


@attrs.frozen
class ProjectionMlpOptions:
    """Options of ``projection_mlp`` (SimCLRv2 values)."""

    num_layers: int = option(3, "Number of layers (SimCLRv2: 3; fine-tuning starts from layer 1).", min=1)
    out_dim: int = option(128, "Width of the last layer (the contrastive embedding).", min=1)
    hidden_dim: int = option(0, "Width of the hidden layers; 0 means the input width.", min=0)
    init_std: float = option(
        0.01, "Std of the normal init of linear weights (SimCLR: 0.01); 0: PyTorch's.", min=0.0
    )

    def layer_count(self) -> int:
        """Fine-tuning may keep 0..num_layers layers (capability of heads)."""
        return self.num_layers


def build_projection_mlp(
    options: ProjectionMlpOptions,
    *,
    in_dim: int,
    norm_layer: NormLayer | None = None,
    num_classes: int | None = None,
) -> ProjectionMLP:
    """The projection MLP on ``[B, in_dim]`` features (``num_classes`` is ignored)."""
    if in_dim < 1:
        raise HeadError(f"in_dim must be >= 1, got {in_dim}")
    norm = nn.BatchNorm1d if norm_layer is None else norm_layer
    hidden = options.hidden_dim or in_dim
    dims = [in_dim] + [hidden] * (options.num_layers - 1) + [options.out_dim]
    layers = [
        projection_layer(
            dims[i], dims[i + 1], norm_layer=norm, last=i == options.num_layers - 1, init_std=options.init_std
        )
        for i in range(options.num_layers)
    ]
    log.debug("projection_mlp widths %s", dims)
    return ProjectionMLP(layers, dims)


class LinearClassifier(nn.Linear):
    """A linear layer exposing ``in_dim`` and ``out_dim`` (the number of classes)."""

    @property
    def in_dim(self) -> int:
        """Input width."""
        return self.in_features

    @property
    def out_dim(self) -> int:
        """Number of classes."""
        return self.out_features


@attrs.frozen
class LinearOptions:
    """Options of ``linear``."""

    zero_init: bool = option(
        True,
        "Start from zero weight and bias (SimCLRv2 fine-tuning); else normal(std 0.01) weight, zero bias.",
    )
    bias: bool = option(True, "Learn a per-class bias.")


def build_linear(
    options: LinearOptions,
    *,
    in_dim: int,
    norm_layer: NormLayer | None = None,
    num_classes: int | None = None,
) -> LinearClassifier:
    """A ``[B, in_dim] -> [B, num_classes]`` classifier (``norm_layer`` is ignored).

    Raises:
        HeadError: ``num_classes`` is missing or not positive.
    """
    if num_classes is None or num_classes < 1:
        raise HeadError(
            f"the linear head needs num_classes >= 1, got {num_classes!r}: is the data set labelled?"
        )
    if in_dim < 1:
        raise HeadError(f"in_dim must be >= 1, got {in_dim}")
    head = LinearClassifier(in_dim, num_classes, bias=options.bias)
    with torch.no_grad():
        if options.zero_init:
            head.weight.zero_()
        else:
            head.weight.normal_(std=0.01)
        if head.bias is not None:
            head.bias.zero_()
    return head


@hookimpl
def contrastive_register_heads() -> list[Component]:
    """The built-in heads."""
    return [
        Component(
            name="projection_mlp",
            build=build_projection_mlp,
            options=ProjectionMlpOptions,
            summary="SimCLRv2 projection MLP: Linear (no bias) -> norm -> ReLU, last norm without shift.",
        ),
        Component(
            name="linear",
            build=build_linear,
            options=LinearOptions,
            summary="Linear classifier over the head input (zero-initialized by default).",
        ),
    ]
