"""Tests of the built-in ``resnet`` encoder (plugins/encoders.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

import contrastive
from contrastive.errors import SpecError
from contrastive.registry import Registry, load_registry
from contrastive_plugins.encoders import (
    BasicBlock,
    Bottleneck,
    ResNet,
    SelectiveKernelConv,
    ShortcutPool,
    TFSameMaxPool,
    tf_same_padding,
)

SK = 0.0625


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def build(registry: Registry, **kwargs: Any) -> ResNet:
    model = registry.build("encoders", "resnet", **kwargs)
    assert isinstance(model, ResNet)
    return model


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def norm_modules(module: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def test_builds_from_defaults_as_resnet50(registry: Registry) -> None:
    model = build(registry)
    assert model.feature_dim == 2048
    assert len(list(model.residual_blocks())) == 16
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 2048)
    assert torch.isfinite(out).all()


def test_public_build_without_norm_layer_uses_batch_norm() -> None:
    model = contrastive.build("encoders", "resnet", depth=18, cifar_stem=True)
    assert isinstance(model.bn1, nn.BatchNorm2d)
    assert model.feature_dim == 512


@pytest.mark.parametrize(
    ("options", "size"),
    [
        ({"depth": 18, "cifar_stem": True}, 32),
        ({"depth": 34, "cifar_stem": True}, 16),
        ({"depth": 18, "sk_ratio": SK}, 32),
        ({"depth": 50, "sk_ratio": SK}, 32),
        ({"depth": 50, "sk_ratio": SK, "cifar_stem": True}, 8),
        ({"depth": 18, "maxpool_padding": "tf_same"}, 32),
    ],
)
def test_forward_backward_is_finite(registry: Registry, options: dict[str, Any], size: int) -> None:
    model = build(registry, **options)
    model.train()
    x = torch.randn(2, 3, size, size, requires_grad=True)
    out = model(x)
    assert out.shape == (2, model.feature_dim)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize(
    ("depth", "width", "sk_ratio", "millions"),
    [
        (50, 1, 0.0, 24),
        (50, 1, SK, 35),
        (50, 2, 0.0, 94),
        (101, 1, 0.0, 43),
        (152, 1, 0.0, 58),
        (152, 3, SK, 795),
    ],
)
def test_parameter_count_matches_simclrv2_table(
    registry: Registry, depth: int, width: int, sk_ratio: float, millions: int
) -> None:
    with torch.device("meta"):
        model = build(registry, depth=depth, width_multiplier=width, sk_ratio=sk_ratio)
    assert count_parameters(model) == pytest.approx(millions * 1e6, rel=0.03)
    assert model.feature_dim == 2048 * width


@pytest.mark.parametrize(("depth", "width"), [(18, 1), (34, 3), (50, 1), (200, 2)])
def test_feature_dim(registry: Registry, depth: int, width: int) -> None:
    with torch.device("meta"):
        model = build(registry, depth=depth, width_multiplier=width)
    assert model.feature_dim == (512 if depth < 50 else 2048) * width
    out = model(torch.empty(2, 3, 32, 32, device="meta"))
    assert out.shape == (2, model.feature_dim)


def test_width_multiplier_widens_stem_and_every_stage(registry: Registry) -> None:
    with torch.device("meta"):
        model = build(registry, depth=50, width_multiplier=3)
    assert isinstance(model.conv1, nn.Conv2d)
    assert model.conv1.out_channels == 64 * 3
    first = next(model.residual_blocks())
    assert isinstance(first, Bottleneck)
    assert first.conv1.out_channels == 64 * 3 and first.conv3.out_channels == 256 * 3


@pytest.mark.parametrize("zero_init", [True, False])
def test_zero_init_of_last_norm_in_every_block(registry: Registry, zero_init: bool) -> None:
    for depth in (18, 50):
        model = build(
            registry, depth=depth, sk_ratio=SK if depth == 50 else 0.0, zero_init_residual=zero_init
        )
        last = {id(block.last_norm) for block in model.residual_blocks()}
        assert len(last) == len(list(model.residual_blocks()))
        for block in model.residual_blocks():
            gamma = block.last_norm.weight
            assert isinstance(gamma, torch.Tensor)
            assert bool((gamma == 0).all()) is zero_init
        for norm in norm_modules(model):
            if id(norm) not in last:
                assert (norm.weight == 1).all()


def test_zero_init_makes_every_block_start_as_identity_plus_shortcut(registry: Registry) -> None:
    model = build(registry, depth=18, cifar_stem=True).eval()
    block = next(model.residual_blocks())
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), torch.relu(x))


def test_bn_momentum_and_eps_reach_every_norm(registry: Registry) -> None:
    model = build(registry, depth=50, sk_ratio=SK, bn_momentum=0.01, bn_eps=1e-3)
    norms = norm_modules(model)
    assert len(norms) > 50
    for norm in norms:
        assert norm.momentum == 0.01
        assert norm.eps == 1e-3


def test_default_bn_hyperparameters_are_simclr_values(registry: Registry) -> None:
    model = build(registry, depth=18)
    assert {(n.momentum, n.eps) for n in norm_modules(model)} == {(0.1, 1e-5)}


def test_every_norm_comes_from_norm_layer(registry: Registry) -> None:
    made: list[int] = []

    def norm_layer(num_features: int) -> nn.Module:
        made.append(num_features)
        return nn.GroupNorm(1, num_features)

    model = build(registry, depth=50, sk_ratio=SK, norm_layer=norm_layer)
    assert not norm_modules(model)
    assert len(made) == len([m for m in model.modules() if isinstance(m, nn.GroupNorm)]) > 50
    for block in model.residual_blocks():
        assert (block.last_norm.weight == 0).all()


def test_identity_norm_layer_is_accepted(registry: Registry) -> None:
    model = build(registry, depth=18, cifar_stem=True, norm_layer=lambda _: nn.Identity())
    out = model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 512)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "bad",
    [
        {"depth": 42},
        {"width_multiplier": 4},
        {"sk_ratio": -0.1},
        {"bn_eps": 0.0},
        {"depth": "50"},
        {"maxpool_padding": "same"},
        {"maxpool_padding": "SAME"},
        {"maxpool_padding": 1},
    ],
)
def test_invalid_options_raise_spec_error(registry: Registry, bad: dict[str, Any]) -> None:
    with pytest.raises(SpecError) as info:
        registry.build("encoders", "resnet", **bad)
    assert next(iter(bad)) in str(info.value)


def _randomise_norms(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    for norm in norm_modules(model):
        shape = norm.num_features
        norm.weight.data = torch.rand(shape, generator=generator) + 0.5
        norm.bias.data = torch.randn(shape, generator=generator) * 0.1
        assert norm.running_mean is not None and norm.running_var is not None
        norm.running_mean.copy_(torch.randn(shape, generator=generator) * 0.1)
        norm.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)


@pytest.mark.parametrize("depth", [18, 50])
def test_state_dict_round_trip_with_torchvision(registry: Registry, depth: int) -> None:
    ours = build(registry, depth=depth)
    reference = getattr(torchvision.models, f"resnet{depth}")()
    _randomise_norms(reference)

    result = reference.load_state_dict(ours.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []

    _randomise_norms(reference)
    ours.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")})
    reference.fc = nn.Identity()
    ours.eval()
    reference.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        got = ours(x)
    assert got.shape == expected.shape == (2, ours.feature_dim)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_resnet_d_stem_and_shortcuts(registry: Registry) -> None:
    with torch.device("meta"):
        model = build(registry, depth=50, width_multiplier=2, sk_ratio=SK)
    stem = [m for m in model.conv1.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.out_channels) for c in stem] == [
        ((3, 3), (2, 2), 64),
        ((3, 3), (1, 1), 64),
        ((3, 3), (1, 1), 128),
    ]
    assert isinstance(model.maxpool, nn.MaxPool2d)
    for index, stage in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
        first = stage[0]
        assert isinstance(first, Bottleneck) and first.downsample is not None
        pool, conv, _ = first.downsample
        assert isinstance(pool, ShortcutPool) and pool.stride == (1 if index == 0 else 2)
        assert isinstance(conv, nn.Conv2d) and conv.stride == (1, 1) and conv.kernel_size == (1, 1)


def test_selective_kernel_replaces_every_bottleneck_3x3(registry: Registry) -> None:
    with torch.device("meta"):
        model = build(registry, depth=101, width_multiplier=3, sk_ratio=SK)
    for block in model.residual_blocks():
        assert isinstance(block, Bottleneck)
        assert isinstance(block.conv2, SelectiveKernelConv) and block.bn2 is None
        filters = block.conv1.out_channels
        assert block.conv2.conv.out_channels == 2 * filters
        assert block.conv2.fc_reduce.out_channels == max(int(filters * SK), 32)
        assert block.conv2.fc_expand.out_channels == 2 * filters


def test_basic_blocks_keep_plain_convolutions_with_selective_kernels(registry: Registry) -> None:
    model = build(registry, depth=18, sk_ratio=SK)
    assert not [m for m in model.modules() if isinstance(m, SelectiveKernelConv)]
    for block in model.residual_blocks():
        assert isinstance(block, BasicBlock)
        if block.downsample is not None:
            assert isinstance(block.downsample[0], ShortcutPool)


def test_selective_kernel_output_is_a_convex_mix_of_its_two_streams() -> None:
    torch.manual_seed(0)
    unit = SelectiveKernelConv(4, 4, stride=1, sk_ratio=SK, norm_layer=nn.BatchNorm2d).eval()
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        streams = torch.relu(unit.bn(unit.conv(x)))
        first, second = streams[:, :4], streams[:, 4:]
        out = unit(x)
    assert out.shape == (2, 4, 6, 6)
    low, high = torch.minimum(first, second), torch.maximum(first, second)
    assert (out >= low - 1e-6).all() and (out <= high + 1e-6).all()
    assert not torch.allclose(out, first) and not torch.allclose(out, second)


def test_shortcut_pool_averages_only_in_bounds_pixels() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    same = ShortcutPool(1)(x)
    assert same.shape == x.shape
    assert same[0, 0, 0, 0] == x[0, 0, :2, :2].mean()
    assert same[0, 0, 3, 1] == x[0, 0, 3, 1:3].mean()
    assert same[0, 0, 3, 3] == x[0, 0, 3, 3]
    strided = ShortcutPool(2)(x)
    assert strided.shape == (1, 1, 2, 2)
    assert strided[0, 0, 1, 0] == x[0, 0, 2:, :2].mean()


def test_cifar_stem_has_no_downsampling_before_the_stages(registry: Registry) -> None:
    model = build(registry, depth=18, cifar_stem=True, sk_ratio=SK)
    assert isinstance(model.conv1, nn.Conv2d)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    features: list[torch.Tensor] = []
    model.layer1.register_forward_hook(lambda _m, _i, out: features.append(out))
    model(torch.randn(2, 3, 16, 16))
    assert features[0].shape[-2:] == (16, 16)


def test_base_width_shrinks_every_stage_for_tiny_demos() -> None:
    registry = load_registry()
    small = registry.build("encoders", "resnet", depth=18, cifar_stem=True, base_width=8)
    assert small.feature_dim == 8 * 8
    assert small.conv1.out_channels == 8
    x = torch.randn(2, 3, 16, 16)
    assert small(x).shape == (2, 64)
    bottleneck = registry.build("encoders", "resnet", depth=50, base_width=16, width_multiplier=2)
    assert bottleneck.feature_dim == 16 * 2 * 8 * 4


def _reference_tf_same_max_pool(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """TF SAME max-pooling by loops: each output takes the max over its window clipped to the input."""
    height, width = x.shape[-2:]
    out_h, out_w = math.ceil(height / stride), math.ceil(width / stride)
    # TF: pad_total = max((out - 1) * stride + kernel - in, 0), pad_before = pad_total // 2.
    top = max((out_h - 1) * stride + kernel - height, 0) // 2
    left = max((out_w - 1) * stride + kernel - width, 0) // 2
    out = torch.empty(*x.shape[:-2], out_h, out_w, dtype=x.dtype)
    for i in range(out_h):
        rows = slice(max(i * stride - top, 0), min(i * stride - top + kernel, height))
        for j in range(out_w):
            cols = slice(max(j * stride - left, 0), min(j * stride - left + kernel, width))
            out[..., i, j] = x[..., rows, cols].amax(dim=(-2, -1))
    return out


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (7, 3, 2, (1, 1)),
        (8, 3, 2, (0, 1)),
        (112, 3, 2, (0, 1)),
        (113, 3, 2, (1, 1)),
        (1, 3, 2, (1, 1)),
        (5, 3, 1, (1, 1)),
        (6, 2, 1, (0, 1)),
        (6, 1, 2, (0, 0)),
        (4, 7, 2, (2, 3)),
    ],
)
def test_tf_same_padding_amounts(size: int, kernel: int, stride: int, expected: tuple[int, int]) -> None:
    assert tf_same_padding(size, kernel, stride) == expected


@pytest.mark.parametrize("shape", [(7, 7), (8, 8), (112, 112), (113, 113), (8, 7), (113, 112), (1, 2)])
@pytest.mark.parametrize("sign", ["mixed", "negative"])
def test_tf_same_max_pool_matches_loop_reference(shape: tuple[int, int], sign: str) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(2, 3, *shape, generator=generator)
    if sign == "negative":  # a zero pad would win every border window
        x = -x.abs() - 1.0
    got = TFSameMaxPool(kernel_size=3, stride=2)(x)
    assert got.shape == (2, 3, math.ceil(shape[0] / 2), math.ceil(shape[1] / 2))
    assert torch.equal(got, _reference_tf_same_max_pool(x))
    assert torch.isfinite(got).all()


def test_tf_same_max_pool_pads_after_on_even_sizes() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # TF SAME windows start at rows/columns 0 and 2; symmetric padding=1 starts them at -1 and 1.
    assert TFSameMaxPool()(x).flatten().tolist() == [10.0, 11.0, 14.0, 15.0]
    assert nn.MaxPool2d(3, 2, padding=1)(x).flatten().tolist() == [5.0, 7.0, 13.0, 15.0]
    assert TFSameMaxPool()(-x).flatten().tolist() == [0.0, -2.0, -8.0, -10.0]


def test_maxpool_padding_option_picks_the_stem_pool(registry: Registry) -> None:
    with torch.device("meta"):
        default = build(registry, depth=18)
        official = build(registry, depth=18, maxpool_padding="tf_same")
        cifar = build(registry, depth=18, maxpool_padding="tf_same", cifar_stem=True)
    assert isinstance(default.maxpool, nn.MaxPool2d) and default.maxpool.padding == 1
    assert isinstance(official.maxpool, TFSameMaxPool)
    assert isinstance(cifar.maxpool, nn.Identity)


def test_tf_same_maxpool_changes_features_on_even_stem_outputs_only(registry: Registry) -> None:
    symmetric = build(registry, depth=18)
    official = build(registry, depth=18, maxpool_padding="tf_same")
    _randomise_norms(symmetric)
    official.load_state_dict(symmetric.state_dict())
    symmetric.eval()
    official.eval()
    generator = torch.Generator().manual_seed(0)
    even = torch.randn(2, 3, 64, 64, generator=generator)  # stem output 32x32
    odd = torch.randn(2, 3, 65, 65, generator=generator)  # stem output 33x33: both paddings are (1, 1)
    with torch.no_grad():
        assert not torch.allclose(official(even), symmetric(even), rtol=1e-3, atol=1e-3)
        assert torch.equal(official(odd), symmetric(odd))
