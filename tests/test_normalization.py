"""Built-in normalizations in one process (the 2-process checks are in test_distributed_equivalence)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from contrastive.errors import RunError, SpecError
from contrastive.registry import load_registry
from contrastive_plugins.normalizations import group_ranks

SHAPES = [(6, 4), (3, 4, 5, 5)]


def _factory(name: str, **options: object) -> object:
    return load_registry().build("normalizations", name, **options)


@pytest.mark.parametrize("name", ["batch_norm", "global_bn", "none"])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_normalization_builds_from_defaults_and_backpropagates(
    name: str, shape: tuple[int, ...]
) -> None:
    layer = _factory(name)(4)  # type: ignore[operator]
    assert isinstance(layer, nn.Module)
    x = torch.randn(*shape, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    (y * torch.randn(*shape)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_none_is_the_identity() -> None:
    layer = _factory("none")(7)  # type: ignore[operator]
    x = torch.randn(2, 7, 3, 3)
    assert torch.equal(layer(x), x)
    assert not list(layer.parameters())


def _reference(shape: tuple[int, ...], **kwargs: float) -> nn.Module:
    return nn.BatchNorm1d(4, **kwargs) if len(shape) == 2 else nn.BatchNorm2d(4, **kwargs)


@pytest.mark.parametrize("name", ["batch_norm", "global_bn"])
@pytest.mark.parametrize("shape", SHAPES)
def test_single_process_batch_norms_equal_torch_batch_norm(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    layer = _factory(name, momentum=0.3, eps=1e-3)(4)  # type: ignore[operator]
    reference = _reference(shape, momentum=0.3, eps=1e-3)
    for module in (layer, reference):
        with torch.no_grad():
            module.weight.copy_(torch.tensor([1.0, -0.5, 2.0, 0.3]))
            module.bias.copy_(torch.tensor([0.0, 0.1, -0.2, 1.0]))
    weights = torch.randn(*shape)
    for step in range(2):  # two steps: running statistics accumulate alike
        x = torch.randn(*shape) * (step + 1) + step
        got_x, ref_x = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        got, ref = layer(got_x), reference(ref_x)
        (got * weights).sum().backward()
        (ref * weights).sum().backward()
        torch.testing.assert_close(got, ref)
        torch.testing.assert_close(got_x.grad, ref_x.grad)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad)
    torch.testing.assert_close(layer.state_dict(), reference.state_dict())
    layer.eval()
    reference.eval()
    x = torch.randn(*shape)
    torch.testing.assert_close(layer(x), reference(x))


@pytest.mark.parametrize("name", ["batch_norm", "global_bn"])
def test_batch_norms_are_batch_norm_modules_with_interchangeable_state(name: str) -> None:
    layer = _factory(name)(4)  # type: ignore[operator]
    assert isinstance(layer, _BatchNorm)
    assert layer.momentum == 0.1 and layer.eps == 1e-5  # SimCLRv2: decay 0.9, epsilon 1e-5
    plain = nn.BatchNorm2d(4)
    plain.load_state_dict(layer.state_dict())
    layer.load_state_dict(plain.state_dict())
    copy.deepcopy(layer)


@pytest.mark.parametrize("name", ["batch_norm", "global_bn"])
def test_batch_norms_reject_other_ranks_of_input(name: str) -> None:
    layer = _factory(name)(4)  # type: ignore[operator]
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        layer(torch.randn(2, 4, 3))


def test_global_bn_group_size_must_divide_the_world_size() -> None:
    with pytest.raises(RunError, match="group_size=2 does not divide the world size 3"):
        group_ranks(3, 2)
    assert group_ranks(4, 2) == [[0, 1], [2, 3]]


def test_global_bn_on_one_process_is_plain_batch_norm_whatever_the_group_size() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 4, 3, 3)
    for group_size in (0, 1, 2, 8):
        layer = _factory("global_bn", group_size=group_size)(4)  # type: ignore[operator]
        reference = torch.nn.BatchNorm2d(4)
        torch.testing.assert_close(layer(x), reference(x))
        torch.testing.assert_close(layer.running_var, reference.running_var)


def test_normalization_options_are_validated() -> None:
    with pytest.raises(SpecError, match="eps"):
        _factory("global_bn", eps=0.0)
    with pytest.raises(SpecError, match="group_size"):
        _factory("global_bn", group_size=-1)
    with pytest.raises(SpecError, match="momentum"):
        _factory("batch_norm", momentum=1.5)
