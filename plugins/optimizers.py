"""Built-in optimizers: LARS (as in SimCLR), SGD and AdamW.

Every builder receives the model and its :class:`~contrastive.interfaces.ParameterRoles` (core
decides which trainable parameters are normalization parameters, biases, the supervised
classifier's weights or ordinary weights) and makes one param group per role present, carrying a
``"role"`` key, so the learning-rate schedule can set ``group["lr"]`` on every group alike. Which
roles skip weight decay (all three) and layer adaptation (LARS) are options whose defaults are the
official SimCLR ones (``tf2/model.py`` ``build_optimizer`` and ``add_weight_decay``):

- LARS excludes ``batch_normalization``, ``bias`` and ``head_supervised`` variables from both its
  weight decay and its trust ratio; the official code then adds ``weight_decay * l2_loss`` of the
  ``head_supervised`` kernel to the loss, whose gradient is the same coupled decay as here. So by
  default the classifier's weights are decayed but never adapted, and normalization parameters and
  biases get neither.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Literal, overload

import attrs
import torch
from torch import nn

from contrastive import Component, ContrastiveError, hookimpl, option
from contrastive.interfaces import ParameterRoles, ParamRole
from contrastive.parameters import parameter_roles

log = logging.getLogger(__name__)

#: A parameter role as spelled in a spec.
RoleName = Literal["normalization", "bias", "classifier", "weight"]

#: Roles that get no weight decay by default (every built-in optimizer).
NO_DECAY_DEFAULT: tuple[RoleName, ...] = ("normalization", "bias")
#: Roles that LARS does not adapt by default: SimCLR's exclusion list.
NO_ADAPTATION_DEFAULT: tuple[RoleName, ...] = ("normalization", "bias", "classifier")


class OptimizerError(ContrastiveError, ValueError):
    """Optimizer options that contradict each other, or a model with nothing to train."""


# --------------------------------------------------------------------------------------------------
# Param groups by role
# --------------------------------------------------------------------------------------------------


def role_groups(
    model: nn.Module,
    roles: ParameterRoles | None,
    settings: Callable[[ParamRole], dict[str, Any]],
) -> list[dict[str, Any]]:
    """One param group per parameter role present in the model.

    Args:
        model: The module whose trainable parameters to optimize.
        roles: Its parameter roles as core computed them; None computes them without a
            classifier (for direct use of a builder, outside a stage).
        settings: Extra group settings for a role (e.g. ``{"weight_decay": 1e-4}``).

    Returns:
        Param groups for a ``torch.optim.Optimizer``, each with a ``"role"`` key, in the order of
        :class:`ParamRole`.

    Raises:
        OptimizerError: The model has no trainable parameter.
    """
    if roles is None:
        roles = parameter_roles(model)
    groups = [
        {"params": roles.params(role), "role": role.value, **settings(role)}
        for role in ParamRole
        if roles.params(role)
    ]
    if not groups:
        raise OptimizerError("the model has no trainable parameters (all have requires_grad=False)")
    log.debug("optimizer groups: %s", {role.value: count for role, count in roles.counts().items()})
    return groups


def _check_roles(**lists: tuple[str, ...]) -> None:
    for key, value in lists.items():
        if len(set(value)) != len(value):
            raise OptimizerError(f"{key} names a role twice: {list(value)}")


# --------------------------------------------------------------------------------------------------
# LARS
# --------------------------------------------------------------------------------------------------


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling with classic momentum, as in SimCLR's reference code.

    For each parameter ``w`` with gradient ``g``, in its group's settings::

        g' = g + weight_decay * w
        trust = eta * ||w|| / ||g'||   (1 when either norm is 0, or when adapt is False)
        v = momentum * v + lr * trust * g'
        w = w - v

    The velocity ``v`` (state key ``"momentum_buffer"``) starts at zero and is part of
    :meth:`state_dict`. Group settings: ``lr``, ``momentum``, ``weight_decay``, ``eta`` and
    ``adapt`` (whether the trust ratio applies); groups without them take the constructor's values.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
        *,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        adapt: bool = True,
    ) -> None:
        """Create the optimizer.

        Args:
            params: Parameters or param groups.
            lr: Learning rate (the schedule overwrites ``group["lr"]`` every step).
            momentum: Velocity decay in ``[0, 1]``.
            weight_decay: Coefficient of the L2 term added to the gradient.
            eta: Trust coefficient of the layer-wise adaptation.
            adapt: Whether to scale the learning rate by the trust ratio.
        """
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta, "adapt": adapt}
        super().__init__(params, defaults)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Update every parameter that has a gradient.

        Args:
            closure: Optional function that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    def _update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        grad = param.grad
        assert grad is not None
        if grad.is_sparse:
            raise RuntimeError("LARS does not support sparse gradients")
        if group["weight_decay"] != 0:
            grad = grad.add(param, alpha=group["weight_decay"])
        state = self.state[param]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        velocity: torch.Tensor = state["momentum_buffer"]
        velocity.mul_(group["momentum"])
        if group["adapt"]:
            velocity.add_(grad * (group["lr"] * trust_ratio(param, grad, group["eta"])))
        else:
            velocity.add_(grad, alpha=group["lr"])
        param.sub_(velocity)


def trust_ratio(param: torch.Tensor, grad: torch.Tensor, eta: float) -> torch.Tensor:
    """LARS trust ratio ``eta * ||param|| / ||grad||``, or 1 when either norm is zero.

    Args:
        param: The parameter, any shape.
        grad: Its (weight-decayed) gradient, same shape.
        eta: Trust coefficient.

    Returns:
        0-d tensor on the parameter's device (no host synchronisation).
    """
    w_norm = torch.linalg.vector_norm(param)
    g_norm = torch.linalg.vector_norm(grad)
    usable = (w_norm > 0) & (g_norm > 0)
    return torch.where(usable, eta * w_norm / torch.where(usable, g_norm, 1.0), 1.0)


@attrs.frozen
class LarsOptions:
    """Options of ``lars`` (SimCLRv2 pretraining values)."""

    lr: float = option(
        0.1, "Base learning rate before batch-size scaling (SimCLRv2: 0.1 with sqrt).", min=0.0
    )
    momentum: float = option(0.9, "Momentum of the velocity (classic momentum, lr inside).", min=0.0, max=1.0)
    weight_decay: float = option(1e-4, "L2 coefficient added to the gradient (SimCLRv2: 1e-4).", min=0.0)
    eta: float = option(0.001, "Trust coefficient of the layer-wise adaptation.", min=0.0, min_exclusive=True)
    no_weight_decay: tuple[RoleName, ...] = option(
        NO_DECAY_DEFAULT,
        "Parameter roles without weight decay (SimCLR: normalization and bias; its classifier "
        "kernel is decayed through an L2 loss term, the same gradient).",
    )
    no_adaptation: tuple[RoleName, ...] = option(
        NO_ADAPTATION_DEFAULT,
        "Parameter roles without trust-ratio scaling (SimCLR: normalization, bias, classifier).",
    )

    def __attrs_post_init__(self) -> None:
        _check_roles(no_weight_decay=self.no_weight_decay, no_adaptation=self.no_adaptation)


def build_lars(options: LarsOptions, *, model: nn.Module, roles: ParameterRoles | None = None) -> LARS:
    """LARS over ``model``'s trainable parameters, one group per parameter role."""

    def settings(role: ParamRole) -> dict[str, Any]:
        return {
            "weight_decay": 0.0 if role.value in options.no_weight_decay else options.weight_decay,
            "adapt": role.value not in options.no_adaptation,
        }

    return LARS(
        role_groups(model, roles, settings), lr=options.lr, momentum=options.momentum, eta=options.eta
    )


# --------------------------------------------------------------------------------------------------
# SGD and AdamW
# --------------------------------------------------------------------------------------------------


def _decay_groups(
    model: nn.Module, roles: ParameterRoles | None, weight_decay: float, no_weight_decay: tuple[str, ...]
) -> list[dict[str, Any]]:
    return role_groups(
        model, roles, lambda role: {"weight_decay": 0.0 if role.value in no_weight_decay else weight_decay}
    )


@attrs.frozen
class SgdOptions:
    """Options of ``sgd``."""

    lr: float = option(0.1, "Base learning rate before batch-size scaling.", min=0.0)
    momentum: float = option(0.9, "Momentum factor.", min=0.0, max=1.0)
    nesterov: bool = option(False, "Use Nesterov momentum (needs momentum > 0).")
    weight_decay: float = option(0.0, "L2 coefficient added to the gradient.", min=0.0)
    no_weight_decay: tuple[RoleName, ...] = option(NO_DECAY_DEFAULT, "Parameter roles without weight decay.")

    def __attrs_post_init__(self) -> None:
        _check_roles(no_weight_decay=self.no_weight_decay)
        if self.nesterov and self.momentum == 0:
            raise OptimizerError("nesterov = true needs momentum > 0")


def build_sgd(
    options: SgdOptions, *, model: nn.Module, roles: ParameterRoles | None = None
) -> torch.optim.SGD:
    """``torch.optim.SGD`` over ``model``'s trainable parameters."""
    return torch.optim.SGD(
        _decay_groups(model, roles, options.weight_decay, options.no_weight_decay),
        lr=options.lr,
        momentum=options.momentum,
        nesterov=options.nesterov,
    )


@attrs.frozen
class AdamwOptions:
    """Options of ``adamw``."""

    lr: float = option(1e-3, "Base learning rate before batch-size scaling.", min=0.0)
    beta1: float = option(0.9, "Decay of the first-moment estimate.", min=0.0, max=1.0)
    beta2: float = option(0.999, "Decay of the second-moment estimate.", min=0.0, max=1.0)
    eps: float = option(
        1e-8, "Added to the denominator for numerical stability.", min=0.0, min_exclusive=True
    )
    weight_decay: float = option(0.05, "Decoupled weight decay coefficient.", min=0.0)
    no_weight_decay: tuple[RoleName, ...] = option(NO_DECAY_DEFAULT, "Parameter roles without weight decay.")

    def __attrs_post_init__(self) -> None:
        _check_roles(no_weight_decay=self.no_weight_decay)


def build_adamw(
    options: AdamwOptions, *, model: nn.Module, roles: ParameterRoles | None = None
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``model``'s trainable parameters."""
    return torch.optim.AdamW(
        _decay_groups(model, roles, options.weight_decay, options.no_weight_decay),
        lr=options.lr,
        betas=(options.beta1, options.beta2),
        eps=options.eps,
    )


@hookimpl
def contrastive_register_optimizers() -> list[Component]:
    """The built-in optimizers."""
    return [
        Component(
            name="lars",
            build=build_lars,
            options=LarsOptions,
            summary="LARS with classic momentum and coupled decay; SimCLR's exclusions by parameter role.",
        ),
        Component(
            name="sgd",
            build=build_sgd,
            options=SgdOptions,
            summary="SGD with momentum; weight decay skips the roles in no_weight_decay.",
        ),
        Component(
            name="adamw",
            build=build_adamw,
            options=AdamwOptions,
            summary="AdamW; weight decay skips the roles in no_weight_decay.",
        ),
    ]
