"""The project's loss and fine-tuning optimizer against transcriptions of the official code (1 rank).

The transcriptions live in :mod:`tests.official`; the 2-rank counterparts are in
``test_distributed_equivalence.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from contrastive.parameters import parameter_roles
from contrastive.registry import Registry, load_registry
from contrastive.stages.models import Classifier
from tests import official

TOL = 1e-6


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


# ----------------------------------------------------------------------------- NT-Xent


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("batch", [2, 6])
def test_nt_xent_equals_the_official_loss_value_and_gradient(
    registry: Registry, tau: float, batch: int
) -> None:
    g = torch.Generator().manual_seed(batch)
    z1 = torch.randn(batch, 16, generator=g)
    z2 = 0.1 * z1 + torch.randn(batch, 16, generator=g)  # loss of order 1: a ratio with meaning
    ours_1, ours_2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    ours = registry.build("losses", "nt_xent", temperature=tau)(ours_1, ours_2).loss
    ours.backward()

    hidden = torch.cat([z1, z2]).double().requires_grad_(True)
    reference = official.contrastive_loss([hidden], 0, tau)
    reference.backward()
    assert hidden.grad is not None and ours_1.grad is not None and ours_2.grad is not None

    assert ours.item() / reference.item() == pytest.approx(1.0, abs=5e-7)  # ratio 1.000000
    assert abs(ours.item() - reference.item()) <= TOL * max(1.0, reference.item())  # float32 loss
    grads = torch.cat([ours_1.grad, ours_2.grad]).double()
    assert (grads - hidden.grad).abs().max().item() <= TOL


# ----------------------------------------------------------------------------- fine-tuning


def _finetune_model(registry: Registry) -> Classifier:
    """A small fine-tuning network from the built-in components: ResNet, head layer 1, zero classifier."""
    torch.manual_seed(0)
    norm = registry.build("normalizations", "batch_norm")
    encoder = registry.build("encoders", "resnet", depth=18, base_width=4, cifar_stem=True, norm_layer=norm)
    head = registry.build(
        "heads", "projection_mlp", num_layers=3, out_dim=8, in_dim=encoder.feature_dim, norm_layer=norm
    )
    kept = head.truncated(1)
    classifier = registry.build("heads", "linear", in_dim=kept.out_dim, num_classes=5, norm_layer=norm)
    model = Classifier(encoder, kept, classifier).double()
    with torch.no_grad():  # BN parameters away from 1 / 0, so their updates are distinguishable
        for module in model.modules():
            if isinstance(module, _BatchNorm) and module.weight is not None:
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


def _official_names(model: Classifier) -> dict[str, str]:
    """Our parameter name -> the official variable name of the same tensor, from the module types."""
    names: dict[str, str] = {}
    for path, module in model.named_modules():
        if path == "classifier":
            names["classifier.weight"] = "head_supervised/linear_layer/dense/kernel"
            names["classifier.bias"] = "head_supervised/linear_layer/dense/bias"
        elif isinstance(module, nn.Conv2d):
            names[f"{path}.weight"] = f"{path}/conv2d/kernel"
        elif isinstance(module, _BatchNorm):
            for ours, theirs in (("weight", "gamma"), ("bias", "beta")):
                if isinstance(getattr(module, ours, None), nn.Parameter):
                    names[f"{path}.{ours}"] = f"{path}/batch_normalization/{theirs}"
        elif isinstance(module, nn.Linear):
            names[f"{path}.weight"] = f"{path}/dense/kernel"
            if module.bias is not None:
                names[f"{path}.bias"] = f"{path}/dense/bias"
    assert set(names) == {name for name, _ in model.named_parameters()}, "a parameter has no official name"
    return names


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_three_finetuning_steps_equal_the_official_optimizer(registry: Registry, weight_decay: float) -> None:
    """Default LARS with the stage's roles = official LARS + ``add_weight_decay``, classifier included."""
    model = _finetune_model(registry)
    names = _official_names(model)
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(8, 3, 12, 12, generator=g).double(), torch.randint(0, 5, (8,), generator=g))
        for _ in range(3)
    ]
    learning_rates = [0.16, 0.15, 0.12]
    momentum = 0.9

    reference_model = _finetune_model(registry)  # same initial values, its own BN buffers
    to_ours = {theirs: ours for ours, theirs in names.items()}

    def supervised_loss(variables: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        images, labels = batches[step]
        params = {to_ours[name]: value for name, value in variables.items()}
        logits = functional_call(reference_model, params, (images,))
        return F.cross_entropy(logits, labels)  # add_supervised_loss: mean softmax cross-entropy

    start = {names[name]: param.detach() for name, param in model.named_parameters()}
    expected = official.finetune_steps(
        start, supervised_loss, learning_rates, momentum=momentum, weight_decay=weight_decay
    )

    roles = parameter_roles(model, classifier=model.classifier)
    optimizer = registry.build(
        "optimizers", "lars", model=model, roles=roles, lr=0.16, momentum=momentum, weight_decay=weight_decay
    )
    loss_fn = registry.build("losses", "cross_entropy")
    for (images, labels), learning_rate in zip(batches, learning_rates, strict=True):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate  # as the loop applies the schedule
        optimizer.zero_grad()
        loss_fn(model(images), labels).loss.backward()
        optimizer.step()

    worst = max(
        (param.detach() - expected[names[name]]).abs().max().item()
        for name, param in model.named_parameters()
    )
    assert worst <= TOL
    # The classifier moved as an unadapted layer does (an adapted one would move ~eta times less).
    classifier_step = (model.classifier.weight - 0).abs().max().item()
    assert classifier_step > 1e-3
