"""Built-in optimizers: LARS (as in SimCLR), SGD and AdamW.

Every optimizer sorts the model's trainable parameters into two kinds, decided by the module tree
and the tensor shape, never by parameter names:

- *bias and normalization* parameters: every parameter owned by a normalization module
  (:data:`NORM_TYPES`) and every parameter with at most one dimension (biases, the affine
  parameters of a custom normalization layer, learnable scalars);
- *regular* parameters: everything else (convolution kernels, linear weights).

Each kind becomes one param group (an empty kind makes no group) carrying a ``"kind"`` key, so the
learning-rate schedule can set ``group["lr"]`` on every group alike. Frozen parameters
(``requires_grad=False``) are left out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, overload

import attrs
import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from contrastive import Component, ContrastiveError, hookimpl, option

log = logging.getLogger(__name__)

#: Module types whose parameters count as normalization parameters (BatchNorm*, SyncBatchNorm and
#: InstanceNorm* derive from ``_NormBase``).
NORM_TYPES: tuple[type[nn.Module], ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)

#: Value of a param group's ``"kind"`` key.
REGULAR = "regular"
BIAS_AND_NORM = "bias_and_norm"


class OptimizerError(ContrastiveError, ValueError):
    """Optimizer options that contradict each other, or a model with nothing to train."""


# --------------------------------------------------------------------------------------------------
# Parameter kinds
# --------------------------------------------------------------------------------------------------


@attrs.frozen
class ParameterKinds:
    """A model's trainable parameters sorted by kind (each parameter once, in model order).

    Attributes:
        regular: Weights that get weight decay and (for LARS) layer-wise adaptation.
        bias_and_norm: Biases, normalization parameters and other tensors of ``ndim <= 1``.
    """

    regular: tuple[nn.Parameter, ...]
    bias_and_norm: tuple[nn.Parameter, ...]


def is_norm_module(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (an instance of :data:`NORM_TYPES`)."""
    return isinstance(module, NORM_TYPES)


def split_parameters(model: nn.Module) -> ParameterKinds:
    """Sort the trainable parameters of ``model`` into regular and bias/normalization ones.

    Args:
        model: Any module; shared parameters are counted once.

    Returns:
        The two kinds, each in ``model.parameters()`` order.
    """
    norm_ids = {
        id(param)
        for module in model.modules()
        if is_norm_module(module)
        for param in module.parameters(False)
    }
    regular: list[nn.Parameter] = []
    bias_and_norm: list[nn.Parameter] = []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if id(param) in norm_ids or param.ndim <= 1:
            bias_and_norm.append(param)
        else:
            regular.append(param)
    return ParameterKinds(regular=tuple(regular), bias_and_norm=tuple(bias_and_norm))


def param_groups(
    model: nn.Module, *, regular: dict[str, Any], bias_and_norm: dict[str, Any]
) -> list[dict[str, Any]]:
    """One param group per non-empty parameter kind.

    Args:
        model: The module whose trainable parameters to optimize.
        regular: Extra group settings for regular parameters (e.g. ``{"weight_decay": 1e-4}``).
        bias_and_norm: Extra group settings for bias and normalization parameters.

    Returns:
        Param groups for a ``torch.optim.Optimizer``, each with a ``"kind"`` key.

    Raises:
        OptimizerError: The model has no trainable parameter.
    """
    kinds = split_parameters(model)
    groups = [
        {"params": list(params), "kind": kind, **settings}
        for kind, params, settings in (
            (REGULAR, kinds.regular, regular),
            (BIAS_AND_NORM, kinds.bias_and_norm, bias_and_norm),
        )
        if params
    ]
    if not groups:
        raise OptimizerError("the model has no trainable parameters (all have requires_grad=False)")
    log.debug(
        "optimizer groups: %d regular, %d bias/norm parameters", len(kinds.regular), len(kinds.bias_and_norm)
    )
    return groups


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
    exclude_bias_and_norm_from_weight_decay: bool = option(
        True, "Give biases and normalization parameters no weight decay."
    )
    exclude_bias_and_norm_from_adaptation: bool = option(
        True, "Give biases and normalization parameters no trust-ratio scaling."
    )


def build_lars(options: LarsOptions, *, model: nn.Module) -> LARS:
    """LARS over ``model``'s trainable parameters, split into regular and bias/norm groups."""
    groups = param_groups(
        model,
        regular={"weight_decay": options.weight_decay, "adapt": True},
        bias_and_norm={
            "weight_decay": 0.0 if options.exclude_bias_and_norm_from_weight_decay else options.weight_decay,
            "adapt": not options.exclude_bias_and_norm_from_adaptation,
        },
    )
    return LARS(groups, lr=options.lr, momentum=options.momentum, eta=options.eta)


# --------------------------------------------------------------------------------------------------
# SGD and AdamW
# --------------------------------------------------------------------------------------------------


def _decay_groups(model: nn.Module, weight_decay: float, exclude: bool) -> list[dict[str, Any]]:
    return param_groups(
        model,
        regular={"weight_decay": weight_decay},
        bias_and_norm={"weight_decay": 0.0 if exclude else weight_decay},
    )


@attrs.frozen
class SgdOptions:
    """Options of ``sgd``."""

    lr: float = option(0.1, "Base learning rate before batch-size scaling.", min=0.0)
    momentum: float = option(0.9, "Momentum factor.", min=0.0, max=1.0)
    nesterov: bool = option(False, "Use Nesterov momentum (needs momentum > 0).")
    weight_decay: float = option(0.0, "L2 coefficient added to the gradient.", min=0.0)
    exclude_bias_and_norm_from_weight_decay: bool = option(
        True, "Give biases and normalization parameters no weight decay."
    )

    def __attrs_post_init__(self) -> None:
        if self.nesterov and self.momentum == 0:
            raise OptimizerError("nesterov = true needs momentum > 0")


def build_sgd(options: SgdOptions, *, model: nn.Module) -> torch.optim.SGD:
    """``torch.optim.SGD`` over ``model``'s trainable parameters."""
    return torch.optim.SGD(
        _decay_groups(model, options.weight_decay, options.exclude_bias_and_norm_from_weight_decay),
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
    exclude_bias_and_norm_from_weight_decay: bool = option(
        True, "Give biases and normalization parameters no weight decay."
    )


def build_adamw(options: AdamwOptions, *, model: nn.Module) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``model``'s trainable parameters."""
    return torch.optim.AdamW(
        _decay_groups(model, options.weight_decay, options.exclude_bias_and_norm_from_weight_decay),
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
            summary="LARS with classic momentum and coupled weight decay, as in SimCLR.",
        ),
        Component(
            name="sgd",
            build=build_sgd,
            options=SgdOptions,
            summary="SGD with momentum; biases and normalization parameters skip weight decay.",
        ),
        Component(
            name="adamw",
            build=build_adamw,
            options=AdamwOptions,
            summary="AdamW; biases and normalization parameters skip weight decay.",
        ),
    ]
