"""Built-in heads: the SimCLRv2 projection MLP and the linear classifier."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import contrastive
from contrastive.errors import ContrastiveError
from contrastive.registry import Registry, load_registry
from contrastive_plugins.heads import HeadError, remove_shift


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def mlp(registry: Registry, in_dim: int = 8, **options: object) -> nn.Module:
    torch.manual_seed(0)
    return registry.build("heads", "projection_mlp", in_dim=in_dim, **options)


def of_type(module: nn.Module, kind: type[nn.Module]) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("num_layers", [1, 2, 3, 4])
def test_projection_mlp_structure(registry: Registry, num_layers: int) -> None:
    head = mlp(registry, num_layers=num_layers, out_dim=5, hidden_dim=6)
    linears = of_type(head, nn.Linear)
    norms = of_type(head, nn.BatchNorm1d)
    assert len(linears) == len(norms) == num_layers
    assert all(linear.bias is None for linear in linears)
    assert [linear.out_features for linear in linears] == [6] * (num_layers - 1) + [5]
    # Hidden norms keep a trainable shift; the last one has none.
    for norm in norms[:-1]:
        assert isinstance(norm.bias, nn.Parameter) and norm.bias.requires_grad
    last = norms[-1]
    assert "bias" not in dict(last.named_parameters())
    assert isinstance(last.weight, nn.Parameter)
    assert torch.equal(last.bias, torch.zeros(5))
    # ReLU closes every layer but the last.
    layers = list(head.layers)
    assert [any(isinstance(m, nn.ReLU) for m in layer.modules()) for layer in layers] == [True] * (
        num_layers - 1
    ) + [False]
    assert head.out_dims == [8] + [6] * (num_layers - 1) + [5]
    assert head.out_dim == 5


def test_defaults_are_simclrv2() -> None:
    torch.manual_seed(0)
    head = contrastive.build("heads", "projection_mlp", in_dim=64)
    assert head.out_dims == [64, 64, 64, 128]
    assert head.num_layers == 3
    weight = head.layers[0][0].weight.detach()
    assert 0.008 < float(weight.std()) < 0.012  # normal(std=0.01) init, as in SimCLR


def test_forward_to_every_depth(registry: Registry) -> None:
    head = mlp(registry, in_dim=8, out_dim=4)
    x = torch.randn(6, 8)
    assert head.forward_to(x, 0) is x
    manual = x
    for k, layer in enumerate(head.layers, start=1):
        manual = layer(manual)
        out = head.forward_to(x, k)
        assert out.shape == (6, head.out_dims[k])
        torch.testing.assert_close(out, manual)
    torch.testing.assert_close(head.forward_to(x, -1), head(x))
    torch.testing.assert_close(head(x), manual)
    assert (head.forward_to(x, 1) >= 0).all()  # ReLU included
    assert (head(x) < 0).any()  # no ReLU at the end


@pytest.mark.parametrize("k", [-2, 4, 10])
def test_forward_to_out_of_range(registry: Registry, k: int) -> None:
    head = mlp(registry)
    with pytest.raises(HeadError, match="out of range"):
        head.forward_to(torch.randn(2, 8), k)
    with pytest.raises(ContrastiveError):
        head.truncated(k)


@pytest.mark.parametrize("k", [0, 1, 2, 3, -1])
def test_truncated_shares_parameters(registry: Registry, k: int) -> None:
    head = mlp(registry, in_dim=8, hidden_dim=16, out_dim=4)
    part = head.truncated(k)
    kept = 3 if k == -1 else k
    assert part.out_dim == head.out_dims[kept] == (8, 16, 16, 4)[kept]
    assert all(a is b for a, b in zip(part.layers, head.layers[:kept], strict=True))
    head_params = {id(p) for p in head.parameters()}
    assert {id(p) for p in part.parameters()} <= head_params
    head.eval()
    part.eval()
    x = torch.randn(5, 8)
    torch.testing.assert_close(part(x), head.forward_to(x, k))
    if kept:
        with torch.no_grad():  # a change through the full head shows in the truncated one
            head.layers[0][0].weight.mul_(2.0)
        torch.testing.assert_close(part(x), head.forward_to(x, k))


def test_truncated_gradients_reach_the_shared_layers(registry: Registry) -> None:
    head = mlp(registry)
    head.truncated(1)(torch.randn(4, 8)).sum().backward()
    assert head.layers[0][0].weight.grad is not None
    assert head.layers[1][0].weight.grad is None


def test_last_norm_shift_stays_zero(registry: Registry) -> None:
    head = mlp(registry, out_dim=3)
    head.requires_grad_(True)  # e.g. a fine-tuning stage unfreezing everything
    optimizer = torch.optim.SGD(head.parameters(), lr=1.0)
    head(torch.randn(6, 8)).pow(3).sum().backward()
    optimizer.step()
    assert torch.equal(head.layers[-1][1].bias, torch.zeros(3))


def test_state_dict_round_trip(registry: Registry) -> None:
    head = mlp(registry)
    head(torch.randn(4, 8))  # move running statistics
    fresh = registry.build("heads", "projection_mlp", in_dim=8)
    fresh.load_state_dict(head.state_dict())
    head.eval()
    fresh.eval()
    x = torch.randn(3, 8)
    torch.testing.assert_close(fresh(x), head(x))


def test_custom_norm_layer(registry: Registry) -> None:
    head = registry.build(
        "heads", "projection_mlp", in_dim=6, norm_layer=lambda n: nn.GroupNorm(2, n), out_dim=4
    )
    norms = of_type(head, nn.GroupNorm)
    assert len(norms) == 3
    assert [("bias" in dict(n.named_parameters())) for n in norms] == [True, True, False]
    assert head(torch.randn(2, 6)).shape == (2, 4)


def test_remove_shift_handles_layers_without_bias() -> None:
    identity = nn.Identity()
    assert remove_shift(identity) is identity
    plain = nn.BatchNorm1d(3, affine=False)
    assert remove_shift(plain).bias is None


def test_linear_zero_init(registry: Registry) -> None:
    head = registry.build("heads", "linear", in_dim=8, num_classes=5)
    assert head.out_dim == 5
    assert torch.count_nonzero(head.weight) == 0
    assert torch.count_nonzero(head.bias) == 0
    out = head(torch.randn(3, 8))
    assert out.shape == (3, 5)
    assert torch.count_nonzero(out) == 0


def test_linear_without_zero_init_or_bias(registry: Registry) -> None:
    torch.manual_seed(0)
    head = registry.build("heads", "linear", in_dim=64, num_classes=10, zero_init=False, bias=False)
    assert head.bias is None
    assert 0.005 < float(head.weight.detach().std()) < 0.02
    assert head(torch.randn(2, 64)).shape == (2, 10)


@pytest.mark.parametrize("num_classes", [None, 0])
def test_linear_needs_num_classes(registry: Registry, num_classes: int | None) -> None:
    with pytest.raises(HeadError, match="num_classes") as info:
        registry.build("heads", "linear", in_dim=8, num_classes=num_classes)
    assert isinstance(info.value, ContrastiveError)


@pytest.mark.parametrize("name", ["projection_mlp", "linear"])
def test_builds_from_defaults_and_trains(registry: Registry, name: str) -> None:
    head = registry.build("heads", name, in_dim=8, norm_layer=nn.BatchNorm1d, num_classes=3)
    x = torch.randn(4, 8)
    out = head(x)
    assert out.shape == (4, head.out_dim)
    targets = torch.tensor([0, 1, 2, 0])
    loss = nn.functional.cross_entropy(out, targets) if name == "linear" else out.pow(2).sum()
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())
