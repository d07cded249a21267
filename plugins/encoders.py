"""Built-in encoders: the ResNet family of SimCLRv2 (depth, width multiplier, selective kernels).

The ``resnet`` encoder follows the facts of SimCLRv2's TF2 ResNet (``google-research/simclr``,
``tf2/resnet.py``) and names its modules like ``torchvision.models.resnet``:

- Width multiplier ``w`` widens every convolution, the stem included: stem ``64w`` channels,
  stages of ``64w, 128w, 256w, 512w`` filters (bottlenecks expand them 4x).
- ``sk_ratio > 0`` turns on selective kernels and the ResNet-D changes: the stem is three 3x3
  convolutions (``32w``, ``32w``, ``64w`` channels, the first with stride 2); projection
  shortcuts average-pool (2x2) before a stride-1 1x1 convolution; in bottleneck blocks the 3x3
  convolution becomes a :class:`SelectiveKernelConv`. Basic blocks (depth 18/34) keep plain 3x3
  convolutions, as in the reference.
- The last normalization of every residual block starts with zero gamma (``zero_init_residual``).
- Convolutions start from TF's ``VarianceScaling()`` (truncated normal, fan-in, scale 1).

With ``sk_ratio = 0`` the parameter names and shapes are those of torchvision's ResNet without its
``fc`` layer, so weights load both ways. One deliberate difference from the TF reference: a block
gets a projection shortcut only where the shape changes (as in torchvision); the reference also
projects in the first block of ResNet-18/34, which would add 4k parameters and break loading.

The stem max-pool pads symmetrically by default (torchvision's ``padding=1``), which torchvision
weights need; ``maxpool_padding = "tf_same"`` pads as the TF reference does (:class:`TFSameMaxPool`),
which official SimCLR weights need. The two differ on even-sized stem outputs (224 px inputs, say) and
agree on odd ones. Every convolution already pads as the reference: its fixed padding of strided
convolutions (``k - 1`` split ``(k - 1) // 2`` before) and its stride-1 ``SAME`` are both ``k // 2``
on each side for the odd kernels used, whatever the input size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from contrastive import Component, hookimpl, option
from contrastive.interfaces import NormLayer

#: Blocks per stage and block kind for every supported depth.
_LAYOUTS: dict[int, tuple[Literal["basic", "bottleneck"], tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}

#: Smallest bottleneck width of the selective-kernel attention (``min_dim`` in the reference).
_SK_MIN_DIM = 32

#: Standard deviation of a unit normal truncated at +-2 (TF's truncated_normal correction).
_TRUNCATED_STD = 0.87962566103423978


@attrs.frozen
class ResNetOptions:
    """Options of the ``resnet`` encoder (defaults: SimCLRv2's ResNet-50 1x)."""

    depth: int = option(50, "Number of layers.", choices=tuple(_LAYOUTS))
    width_multiplier: int = option(1, "Widens every convolution, the stem included.", min=1, max=3)
    base_width: int = option(
        64,
        "Stem and first-stage filters before widening (64 in every published ResNet; less for tiny demos).",
        min=4,
    )
    sk_ratio: float = option(
        0.0,
        "Selective-kernel attention ratio; > 0 (SimCLRv2: 0.0625) also switches to the ResNet-D stem "
        "and average-pool shortcuts.",
        min=0.0,
        max=1.0,
    )
    cifar_stem: bool = option(False, "3x3 stride-1 stem and no max-pool (for inputs of 64 px or less).")
    maxpool_padding: Literal["symmetric", "tf_same"] = option(
        "symmetric",
        "Stem max-pool padding. symmetric: 1 on every side (torchvision's; its weights need it). "
        "tf_same: TF SAME, the official SimCLR network's (pads only what ceil(size / 2) outputs need, "
        "any extra row/column after, never winning the max); set it when importing official weights. "
        "They differ on even sizes only; no effect with cifar_stem.",
    )
    zero_init_residual: bool = option(True, "Start the last normalization of every block with zero gamma.")
    bn_momentum: float = option(
        0.1, "Momentum of every normalization layer (torch convention: 1 - TF decay).", min=0.0, max=1.0
    )
    bn_eps: float = option(1e-5, "Epsilon of every normalization layer.", min=0.0, min_exclusive=True)

    def torchvision_model(self) -> str | None:
        """``resnetN`` for torchvision's layout: width 1, 64 base filters, no SK, ImageNet stem
        (capability of encoders)."""
        if self.sk_ratio or self.cifar_stem or self.width_multiplier != 1 or self.base_width != 64:
            return None
        return f"resnet{self.depth}"


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free convolution padded like TF's ``Conv2dFixedPadding`` (``kernel_size // 2``)."""
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
    )


class ShortcutPool(nn.Module):
    """The 2x2 average pool of a ResNet-D projection shortcut, padded as in the TF reference.

    Stride 1 pools with TF ``SAME`` padding (one row/column after, padding not counted: replicating
    the edge before a 2x2 mean gives exactly that). Larger strides pad one zero row/column after
    and pool without further padding (the reference's ``FixedPadding(2)`` then ``VALID``).
    """

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``[B, C, H, W]`` to ``[B, C, ceil(H / stride), ceil(W / stride)]`` (even sides)."""
        mode = "replicate" if self.stride == 1 else "constant"
        return F.avg_pool2d(F.pad(x, (0, 1, 0, 1), mode=mode), kernel_size=2, stride=self.stride)


def tf_same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """Padding ``(before, after)`` of one spatial side under TF ``SAME``: the least that gives
    ``ceil(size / stride)`` outputs, any extra row/column after."""
    total = max((-(-size // stride) - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


class TFSameMaxPool(nn.Module):
    """Max-pool with TF ``SAME`` padding, as the reference's stem ``MaxPooling2D(3, 2, 'SAME')``.

    Pads each side by :func:`tf_same_padding` for the input's own height and width (any size, odd or
    even) with ``-inf``, so padding never wins a max; outputs ``ceil(size / stride)``. Every window
    holds at least one input pixel (the padding on a side is less than ``kernel_size``).
    """

    def __init__(self, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``[B, C, H, W]`` to ``[B, C, ceil(H / stride), ceil(W / stride)]``."""
        top, bottom = tf_same_padding(x.shape[-2], self.kernel_size, self.stride)
        left, right = tf_same_padding(x.shape[-1], self.kernel_size, self.stride)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, kernel_size=self.kernel_size, stride=self.stride)


class SelectiveKernelConv(nn.Module):
    """Selective-kernel 3x3 convolution (arXiv:1903.06586) as SimCLRv2 uses it.

    One 3x3 convolution with ``2 * filters`` outputs (then normalization and ReLU) is split into two
    streams of ``filters`` channels; a softmax over the streams, computed from their globally pooled
    sum through a ``max(int(filters * sk_ratio), 32)``-wide bottleneck, mixes them per channel.
    """

    def __init__(
        self, in_channels: int, filters: int, stride: int, sk_ratio: float, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        mid = max(int(filters * sk_ratio), _SK_MIN_DIM)
        self.filters = filters
        self.conv = _conv(in_channels, 2 * filters, 3, stride)
        self.bn = norm_layer(2 * filters)
        self.fc_reduce = nn.Conv2d(filters, mid, 1, bias=False)
        self.fc_bn = norm_layer(mid)
        self.fc_expand = nn.Conv2d(mid, 2 * filters, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, in_channels, H, W]`` to ``[B, filters, H / stride, W / stride]`` (non-negative)."""
        streams: torch.Tensor = self.relu(self.bn(self.conv(x)))
        batch, _, height, width = streams.shape
        streams = streams.view(batch, 2, self.filters, height, width)
        pooled = streams.sum(dim=1).mean(dim=(2, 3), keepdim=True)  # [B, filters, 1, 1]
        logits: torch.Tensor = self.fc_expand(self.relu(self.fc_bn(self.fc_reduce(pooled))))  # [B, 2F, 1, 1]
        weights = logits.view(batch, 2, self.filters, 1, 1).softmax(dim=1)
        return (streams * weights).sum(dim=1)


def _projection(
    in_channels: int, out_channels: int, stride: int, resnet_d: bool, norm_layer: NormLayer
) -> nn.Sequential:
    """Projection shortcut: ``1x1 conv, norm`` (ResNet-D: ``2x2 avg pool, stride-1 1x1 conv, norm``)."""
    if resnet_d:
        return nn.Sequential(
            ShortcutPool(stride), _conv(in_channels, out_channels, 1), norm_layer(out_channels)
        )
    return nn.Sequential(_conv(in_channels, out_channels, 1, stride), norm_layer(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34); expansion 1."""

    expansion = 1

    def __init__(
        self, in_channels: int, filters: int, stride: int, *, norm_layer: NormLayer, sk_ratio: float
    ) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, filters, 3, stride)
        self.bn1 = norm_layer(filters)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(filters, filters, 3)
        self.bn2 = norm_layer(filters)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != filters:
            self.downsample = _projection(in_channels, filters, stride, sk_ratio > 0, norm_layer)

    @property
    def last_norm(self) -> nn.Module:
        """The normalization closing the residual branch (zero-initialised)."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C_in, H, W]`` to ``[B, filters, H / stride, W / stride]``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out: torch.Tensor = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, or selective kernel), 1x1 expand (4x), residual connection."""

    expansion = 4

    def __init__(
        self, in_channels: int, filters: int, stride: int, *, norm_layer: NormLayer, sk_ratio: float
    ) -> None:
        super().__init__()
        out_channels = filters * self.expansion
        self.conv1 = _conv(in_channels, filters, 1)
        self.bn1 = norm_layer(filters)
        # With selective kernels, conv2 normalises and activates internally: bn2 is absent.
        self.conv2: nn.Module
        self.bn2: nn.Module | None
        if sk_ratio > 0:
            self.conv2 = SelectiveKernelConv(filters, filters, stride, sk_ratio, norm_layer)
            self.bn2 = None
        else:
            self.conv2 = _conv(filters, filters, 3, stride)
            self.bn2 = norm_layer(filters)
        self.conv3 = _conv(filters, out_channels, 1)
        self.bn3 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = _projection(in_channels, out_channels, stride, sk_ratio > 0, norm_layer)

    @property
    def last_norm(self) -> nn.Module:
        """The normalization closing the residual branch (zero-initialised)."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C_in, H, W]`` to ``[B, 4 * filters, H / stride, W / stride]``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out: torch.Tensor = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.bn2 is not None:
            out = self.relu(self.bn2(out))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + shortcut)


def _stem_conv(channels: int, sk: bool, cifar_stem: bool, norm_layer: NormLayer) -> nn.Module:
    """The stem convolution(s) before ``bn1`` (``channels`` out): 7x7/2, 3x3/1 (CIFAR) or the ResNet-D
    3x3 stack."""
    if cifar_stem:
        return _conv(3, channels, 3)
    if not sk:
        return _conv(3, channels, 7, 2)
    half = channels // 2
    return nn.Sequential(
        _conv(3, half, 3, 2),
        norm_layer(half),
        nn.ReLU(inplace=True),
        _conv(half, half, 3),
        norm_layer(half),
        nn.ReLU(inplace=True),
        _conv(half, channels, 3),
    )


def _variance_scaling_(weight: torch.Tensor) -> None:
    """TF ``VarianceScaling()``: truncated normal (+-2 std) with variance ``1 / fan_in``."""
    fan_in = weight.shape[1] * math.prod(weight.shape[2:])
    std = math.sqrt(1.0 / fan_in) / _TRUNCATED_STD
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def set_norm_hyperparameters(module: nn.Module, momentum: float, eps: float) -> None:
    """Set ``momentum``/``eps`` on every submodule that has those attributes (BN-like layers)."""
    for sub in module.modules():
        if hasattr(sub, "momentum"):
            setattr(sub, "momentum", momentum)  # noqa: B010 - not every module declares it
        if hasattr(sub, "eps"):
            setattr(sub, "eps", eps)  # noqa: B010


class ResNet(nn.Module):
    """SimCLRv2's ResNet encoder: images to globally average-pooled features (no classifier).

    Attributes:
        feature_dim: Size of the output features: ``512 * width`` (basic blocks) or ``2048 * width``.
    """

    def __init__(self, options: ResNetOptions, norm_layer: NormLayer) -> None:
        super().__init__()
        kind, blocks_per_stage = _LAYOUTS[options.depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        base = options.base_width * options.width_multiplier
        sk = options.sk_ratio > 0
        self.conv1 = _stem_conv(base, sk, options.cifar_stem, norm_layer)
        self.bn1 = norm_layer(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module
        if options.cifar_stem:
            self.maxpool = nn.Identity()
        elif options.maxpool_padding == "tf_same":
            self.maxpool = TFSameMaxPool(kernel_size=3, stride=2)
        else:
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = base
        stages: list[nn.Sequential] = []
        for index, count in enumerate(blocks_per_stage):
            filters = base * 2**index
            stride = 1 if index == 0 else 2
            blocks: list[nn.Module] = []
            for position in range(count):
                blocks.append(
                    block(
                        in_channels,
                        filters,
                        stride if position == 0 else 1,
                        norm_layer=norm_layer,
                        sk_ratio=options.sk_ratio,
                    )
                )
                in_channels = filters * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_dim = in_channels
        self._initialise(options.zero_init_residual)
        set_norm_hyperparameters(self, options.bn_momentum, options.bn_eps)

    def residual_blocks(self) -> Iterator[BasicBlock | Bottleneck]:
        """Every residual block, in forward order."""
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                assert isinstance(block, BasicBlock | Bottleneck)
                yield block

    def _initialise(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                _variance_scaling_(module.weight)
        if not zero_init_residual:
            return
        for block in self.residual_blocks():
            gamma = getattr(block.last_norm, "weight", None)
            if isinstance(gamma, torch.Tensor):
                nn.init.zeros_(gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``float32 [B, 3, H, W]`` images to ``[B, feature_dim]`` features."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))


def build_resnet(options: ResNetOptions, *, norm_layer: NormLayer | None = None) -> ResNet:
    """Build the ``resnet`` encoder.

    Args:
        options: Validated options.
        norm_layer: Factory of every normalization layer; default ``nn.BatchNorm2d``.

    Returns:
        A module mapping ``float32 [B, 3, H, W]`` to ``[B, feature_dim]``.
    """
    return ResNet(options, nn.BatchNorm2d if norm_layer is None else norm_layer)


@hookimpl
def contrastive_register_encoders() -> list[Component]:
    """The built-in encoders."""
    return [
        Component(
            name="resnet",
            build=build_resnet,
            options=ResNetOptions,
            summary="SimCLRv2 ResNet (depth 18-200, width 1-3x, optional selective kernels).",
        )
    ]
