"""Built-in optimizers: LARS against an independent reference, parameter kinds, SGD/AdamW groups."""

from __future__ import annotations

import copy
import io
import itertools
import math

import pytest
import torch
from torch import nn

from contrastive.errors import ContrastiveError, SpecError
from contrastive.interfaces import ParamRole
from contrastive.parameters import parameter_roles
from contrastive.registry import Registry, load_registry
from contrastive_plugins.optimizers import LARS, OptimizerError, trust_ratio


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).double()
    with torch.no_grad():  # a BN with non-trivial parameters, so every norm differs
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    return model


#: Names in tiny_model() and whether each is a bias/normalization parameter (known by construction).
BIAS_OR_NORM = {"0.weight": False, "0.bias": True, "1.weight": True, "1.bias": True}

#: The role lists that exclude biases and normalization parameters, or nothing.
BIAS_AND_NORM_ROLES = ("normalization", "bias")


def _roles(exclude: bool) -> tuple[str, ...]:
    return BIAS_AND_NORM_ROLES if exclude else ()


def reference_lars(
    weights: dict[str, torch.Tensor],
    grads_per_step: list[dict[str, torch.Tensor]],
    lrs: list[float],
    *,
    momentum: float,
    weight_decay: float,
    eta: float,
    decayed: set[str],
    adapted: set[str],
) -> dict[str, torch.Tensor]:
    """SimCLR's LARS written out with plain tensor arithmetic, one parameter at a time."""
    w = {name: value.clone() for name, value in weights.items()}
    v = {name: torch.zeros_like(value) for name, value in weights.items()}
    for grads, lr in zip(grads_per_step, lrs, strict=True):
        for name in w:
            g = grads[name] + (weight_decay * w[name] if name in decayed else 0.0)
            ratio = 1.0
            if name in adapted:
                w_norm = float(torch.sqrt((w[name] ** 2).sum()))
                g_norm = float(torch.sqrt((g**2).sum()))
                if w_norm > 0 and g_norm > 0:
                    ratio = eta * w_norm / g_norm
            v[name] = momentum * v[name] + lr * ratio * g
            w[name] = w[name] - v[name]
    return w


def random_grads(model: nn.Module, steps: int, seed: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        {name: torch.randn(p.shape, generator=gen, dtype=p.dtype) for name, p in model.named_parameters()}
        for _ in range(steps)
    ]


def run_optimizer(
    model: nn.Module, optimizer: torch.optim.Optimizer, grads: list[dict[str, torch.Tensor]], lrs: list[float]
) -> None:
    params = dict(model.named_parameters())
    for step_grads, lr in zip(grads, lrs, strict=True):
        for group in optimizer.param_groups:
            group["lr"] = lr  # as the training loop applies the schedule
        for name, grad in step_grads.items():
            params[name].grad = grad.clone()
        optimizer.step()


@pytest.mark.parametrize(("exclude_decay", "exclude_adapt"), list(itertools.product([True, False], repeat=2)))
@pytest.mark.parametrize("steps", [1, 4])
def test_lars_matches_reference(
    registry: Registry, exclude_decay: bool, exclude_adapt: bool, steps: int
) -> None:
    model = tiny_model()
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    settings = {"momentum": 0.8, "weight_decay": 0.05, "eta": 0.02}
    optimizer = registry.build(
        "optimizers",
        "lars",
        model=model,
        lr=0.5,
        no_weight_decay=_roles(exclude_decay),
        no_adaptation=_roles(exclude_adapt),
        **settings,
    )
    grads = random_grads(model, steps, seed=steps)
    lrs = [0.5 * (i + 1) for i in range(steps)]
    run_optimizer(model, optimizer, grads, lrs)

    special = {name for name, is_special in BIAS_OR_NORM.items() if is_special}
    expected = reference_lars(
        start,
        grads,
        lrs,
        decayed=set(BIAS_OR_NORM) - special if exclude_decay else set(BIAS_OR_NORM),
        adapted=set(BIAS_OR_NORM) - special if exclude_adapt else set(BIAS_OR_NORM),
        **settings,
    )
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], rtol=1e-12, atol=1e-12, msg=name)


def test_exclusion_switches_change_the_update(registry: Registry) -> None:
    """Each switch alone changes how the bias and BN parameters move, not how the weight moves."""
    results = {}
    for exclude_decay, exclude_adapt in itertools.product([True, False], repeat=2):
        model = tiny_model()
        optimizer = registry.build(
            "optimizers",
            "lars",
            model=model,
            weight_decay=0.1,
            no_weight_decay=_roles(exclude_decay),
            no_adaptation=_roles(exclude_adapt),
        )
        run_optimizer(model, optimizer, random_grads(model, 2, seed=7), [1.0, 1.0])
        results[exclude_decay, exclude_adapt] = {n: p.detach().clone() for n, p in model.named_parameters()}
    combos = list(results)
    for a, b in itertools.combinations(combos, 2):
        torch.testing.assert_close(results[a]["0.weight"], results[b]["0.weight"])
        for name in ("0.bias", "1.weight", "1.bias"):
            assert not torch.allclose(results[a][name], results[b][name]), (a, b, name)


def test_lars_one_step_from_backward(registry: Registry) -> None:
    model = tiny_model()
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = registry.build("optimizers", "lars", model=model)
    model(torch.randn(6, 4, dtype=torch.float64)).pow(2).sum().backward()
    grads = [{name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}]
    optimizer.step()
    regular = {name for name, special in BIAS_OR_NORM.items() if not special}
    expected = reference_lars(
        start, grads, [0.1], momentum=0.9, weight_decay=1e-4, eta=0.001, decayed=regular, adapted=regular
    )
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], rtol=1e-12, atol=1e-12, msg=name)


def test_trust_ratio_is_one_when_a_norm_is_zero() -> None:
    w = torch.tensor([3.0, 4.0])
    g = torch.tensor([0.0, 2.0])
    assert trust_ratio(w, g, 0.1).item() == pytest.approx(0.1 * 5.0 / 2.0)
    assert trust_ratio(torch.zeros(2), g, 0.1).item() == 1.0
    assert trust_ratio(w, torch.zeros(2), 0.1).item() == 1.0


def test_zero_weight_is_updated_with_trust_ratio_one() -> None:
    weight = nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
    optimizer = LARS([weight], lr=0.5, momentum=0.9, eta=1e-3)
    grad = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    weight.grad = grad.clone()
    optimizer.step()
    torch.testing.assert_close(weight.detach(), -0.5 * grad)  # eta would have made this ~0


def test_zero_gradient_gives_no_nan() -> None:
    weight = nn.Parameter(torch.ones(2, 2))
    optimizer = LARS([weight], lr=1.0)
    weight.grad = torch.zeros(2, 2)
    optimizer.step()
    assert torch.equal(weight.detach(), torch.ones(2, 2))


def test_state_dict_round_trip_continues_identically(registry: Registry) -> None:
    model = tiny_model()
    optimizer = registry.build("optimizers", "lars", model=model, lr=0.3, weight_decay=0.01)
    run_optimizer(model, optimizer, random_grads(model, 3, seed=1), [0.3, 0.2, 0.1])
    assert all("momentum_buffer" in s for s in optimizer.state_dict()["state"].values())

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed_model = tiny_model()
    resumed_model.load_state_dict(saved["model"])
    resumed = registry.build("optimizers", "lars", model=resumed_model, lr=0.3, weight_decay=0.01)
    resumed.load_state_dict(saved["optimizer"])

    more = random_grads(model, 3, seed=2)
    run_optimizer(model, optimizer, more, [0.05, 0.04, 0.03])
    run_optimizer(resumed_model, resumed, more, [0.05, 0.04, 0.03])
    for (name, a), b in zip(model.named_parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_parameter_roles_by_structure() -> None:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(5))  # 1-D: a bias-like parameter
            self.kernel = nn.Parameter(torch.ones(5, 5))

    shared = nn.Linear(5, 5)
    classifier = nn.Linear(5, 3)
    model = nn.ModuleDict(
        {
            "conv": nn.Conv2d(3, 5, 3),
            "bn": nn.BatchNorm2d(5),
            "ln": nn.LayerNorm((2, 5)),  # 2-D weight, a norm by type
            "gn": nn.GroupNorm(1, 5),
            "custom": Custom(),
            "a": shared,
            "b": shared,
            "frozen": nn.Linear(5, 5),
            "classifier": classifier,
        }
    )
    model["frozen"].requires_grad_(False)
    roles = parameter_roles(model, classifier=classifier)
    assert [(entry.name, entry.role.value) for entry in roles] == [
        ("conv.weight", "weight"),
        ("conv.bias", "bias"),
        ("bn.weight", "normalization"),
        ("bn.bias", "normalization"),
        ("ln.weight", "normalization"),
        ("ln.bias", "normalization"),
        ("gn.weight", "normalization"),
        ("gn.bias", "normalization"),
        ("custom.scale", "bias"),
        ("custom.kernel", "weight"),
        ("a.weight", "weight"),
        ("a.bias", "bias"),
        ("classifier.weight", "classifier"),
        ("classifier.bias", "bias"),
    ]
    assert roles.role_of(classifier.weight) is ParamRole.CLASSIFIER
    assert roles.counts()[ParamRole.NORMALIZATION] == 6
    with pytest.raises(KeyError):
        roles.role_of(model["frozen"].weight)
    # Without a classifier (pretraining) its weight is an ordinary weight.
    assert parameter_roles(model).role_of(classifier.weight) is ParamRole.WEIGHT


def test_lars_defaults_are_simclrs_exclusions(registry: Registry) -> None:
    """Default LARS: weights decayed and adapted; classifier decayed, not adapted; the rest neither."""
    classifier = nn.Linear(3, 2)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3), classifier)
    roles = parameter_roles(model, classifier=classifier)
    optimizer = registry.build("optimizers", "lars", model=model, roles=roles, weight_decay=0.5)
    settings = {group["role"]: (group["weight_decay"], group["adapt"]) for group in optimizer.param_groups}
    assert settings == {
        "normalization": (0.0, False),
        "bias": (0.0, False),
        "classifier": (0.5, False),
        "weight": (0.5, True),
    }


def test_role_lists_are_validated(registry: Registry) -> None:
    with pytest.raises(SpecError, match="no_adaptation"):
        registry.build("optimizers", "lars", model=tiny_model(), no_adaptation=("bias", "bias"))
    with pytest.raises(SpecError, match="no_weight_decay"):
        registry.build("optimizers", "sgd", model=tiny_model(), no_weight_decay=("biases",))


def test_model_without_trainable_parameters_is_a_clear_error(registry: Registry) -> None:
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(OptimizerError, match="no trainable parameters") as info:
        registry.build("optimizers", "sgd", model=model)
    assert isinstance(info.value, ContrastiveError)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
@pytest.mark.parametrize("exclude", [True, False])
def test_sgd_adamw_weight_decay_groups(registry: Registry, name: str, exclude: bool) -> None:
    model = tiny_model()
    optimizer = registry.build(
        "optimizers", name, model=model, weight_decay=0.1, no_weight_decay=_roles(exclude)
    )
    decays = {group["role"]: group["weight_decay"] for group in optimizer.param_groups}
    excluded = 0.0 if exclude else 0.1
    assert decays == {"weight": 0.1, "bias": excluded, "normalization": excluded}
    # Behaviour: with zero gradients, only decayed parameters move.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for n, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[n])
        assert moved == (not BIAS_OR_NORM[n] or not exclude), n


def test_adamw_and_sgd_options_reach_torch(registry: Registry) -> None:
    adamw = registry.build("optimizers", "adamw", model=tiny_model(), beta1=0.8, beta2=0.99, lr=0.01)
    assert adamw.param_groups[0]["betas"] == (0.8, 0.99)
    assert adamw.param_groups[0]["lr"] == 0.01
    sgd = registry.build("optimizers", "sgd", model=tiny_model(), nesterov=True, momentum=0.5)
    assert sgd.param_groups[0]["nesterov"] is True
    assert sgd.param_groups[0]["momentum"] == 0.5
    with pytest.raises(SpecError, match="nesterov"):
        registry.build("optimizers", "sgd", model=tiny_model(), nesterov=True, momentum=0.0)


@pytest.mark.parametrize("name", ["lars", "sgd", "adamw"])
def test_builds_from_defaults_and_steps(registry: Registry, name: str) -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    optimizer = registry.build("optimizers", name, model=model)
    assert isinstance(optimizer, torch.optim.Optimizer)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(8, 4)).pow(2).mean().backward()
    optimizer.step()
    assert all(math.isfinite(float(p.detach().sum())) for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_lars_options_are_validated(registry: Registry) -> None:
    with pytest.raises(SpecError, match="eta"):
        registry.build("optimizers", "lars", model=tiny_model(), eta=0.0)
    with pytest.raises(SpecError, match="momentum"):
        registry.build("optimizers", "lars", model=tiny_model(), momentum=1.5)


def test_lars_state_dict_carries_group_settings() -> None:
    """Param groups hold the LARS settings as plain values, so a checkpoint records them."""
    model = tiny_model()
    optimizer = LARS(model.parameters(), lr=0.1)
    state = copy.deepcopy(optimizer.state_dict())
    assert {"lr", "momentum", "weight_decay", "eta", "adapt"} <= set(state["param_groups"][0])
