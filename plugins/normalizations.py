"""Built-in normalizations: batch norm, global batch norm across ranks (or groups of ranks), none.

Each builder returns a factory ``norm_layer(num_features) -> nn.Module`` whose modules accept
``[B, C]`` and ``[B, C, H, W]`` inputs. The batch-norm modules are :class:`torch.nn.BatchNorm2d`
(plain) or another ``_BatchNorm`` subclass (global), with the same parameters and buffers, so
checkpoints move between them.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import attrs
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from contrastive import Component, hookimpl, option
from contrastive import distributed as cdist
from contrastive.component import NoOptions
from contrastive.errors import RunError
from contrastive.interfaces import NormLayer

log = logging.getLogger(__name__)


@attrs.frozen
class BatchNormOptions:
    """Options of ``batch_norm``."""

    momentum: float = option(
        0.1, "Weight of the batch in the running statistics (1 - TF's decay 0.9).", min=0.0, max=1.0
    )
    eps: float = option(1e-5, "Added to the variance before the square root.", min=0.0, min_exclusive=True)


@attrs.frozen
class GlobalBatchNormOptions:
    """Options of ``global_bn``."""

    group_size: int = option(
        0, "Ranks that share batch statistics: 0 = all ranks, else groups of consecutive ranks.", min=0
    )
    momentum: float = option(
        0.1, "Weight of the batch in the running statistics (1 - TF's decay 0.9).", min=0.0, max=1.0
    )
    eps: float = option(1e-5, "Added to the variance before the square root.", min=0.0, min_exclusive=True)


def _check_dims(x: torch.Tensor) -> None:
    if x.dim() not in (2, 4):
        raise ValueError(f"expected a [B, C] or [B, C, H, W] input, got shape {tuple(x.shape)}")


class BatchNorm(nn.BatchNorm2d):
    """Plain batch norm for ``[B, C]`` (as BatchNorm1d) and ``[B, C, H, W]`` (as BatchNorm2d) inputs."""

    def _check_input_dim(self, input: torch.Tensor) -> None:  # noqa: A002 - torch's name
        _check_dims(input)


class _GroupRef:
    """Holds a process group; copies share it (process groups cannot be deep-copied)."""

    def __init__(self, group: dist.ProcessGroup | None) -> None:
        self.group = group

    def __deepcopy__(self, memo: dict[int, Any]) -> _GroupRef:
        return self


class GlobalBatchNorm(_BatchNorm):
    """Batch norm whose training statistics cover the batches of every rank in a group.

    In training, each rank computes its per-channel count, mean and biased variance, all ranks of
    the group gather them with gradient and combine them (parallel variance formula), so outputs
    and gradients equal batch norm on the group's concatenated batch. Running statistics take the
    unbiased group variance. Evaluation uses the running statistics. In a group of one process it
    is plain batch norm. Works on gloo (CPU) and NCCL.

    Attributes:
        group: The process group sharing statistics (None: all ranks).
        shared: False for ``group_size = 1``: statistics stay on this rank (plain batch norm).
    """

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float = 0.1,
        group: dist.ProcessGroup | None = None,
        shared: bool = True,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self._group = _GroupRef(group)
        self.shared = shared

    @property
    def group(self) -> dist.ProcessGroup | None:
        return self._group.group

    def _check_input_dim(self, input: torch.Tensor) -> None:  # noqa: A002 - torch's name
        _check_dims(input)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's name
        """Normalise ``[B, C]`` or ``[B, C, H, W]``; output has the input's shape and dtype."""
        self._check_input_dim(input)
        if not self.training or not self.shared or cdist.world_size(self.group) == 1:
            out: torch.Tensor = super().forward(input)
            return out
        with torch.autocast(device_type=input.device.type, enabled=False):
            mean, var, count = self._group_moments(input.float())
            self._update_running_stats(mean.detach(), var.detach(), count)
            out = _normalise(input.float(), mean, var, self.eps, self.weight, self.bias)
        return out.to(input.dtype)

    def _group_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, biased variance and row count, each ``[C]``, over the group's batches.

        Args:
            x: float32 ``[B, C]`` or ``[B, C, H, W]`` on this rank.
        """
        dims = [d for d in range(x.dim()) if d != 1]
        local_count = x.numel() // x.shape[1]
        local_var, local_mean = torch.var_mean(x, dim=dims, correction=0)
        count = torch.full_like(local_mean, float(local_count))
        stats = cdist.gather_with_grad(torch.stack([count, local_mean, local_var])[None], self.group)
        counts, means, variances = stats.unbind(dim=1)  # each [G, C]
        total = counts.sum(dim=0)
        mean = (counts * means).sum(dim=0) / total
        var = (counts * (variances + (means - mean) ** 2)).sum(dim=0) / total
        return mean, var, total.detach()  # the count stays a tensor: no device-to-host sync

    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        if not self.track_running_stats or self.running_mean is None or self.running_var is None:
            return
        momentum = self.momentum if self.momentum is not None else 0.1
        with torch.no_grad():
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
            unbiased = var * count / (count - 1.0).clamp(min=1.0)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


def _normalise(
    x: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` per channel (dim 1) of ``x``."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    out = (x - mean.reshape(shape)) * scale.reshape(shape)
    return out + bias.reshape(shape) if bias is not None else out


def group_ranks(world: int, group_size: int) -> list[list[int]]:
    """Consecutive rank groups of ``group_size`` (0: one group of every rank).

    Raises:
        RunError: ``group_size`` does not divide the world size.
    """
    size = world if group_size == 0 else group_size
    if world % size != 0:
        raise RunError(
            f"global_bn: group_size={group_size} does not divide the world size {world}; "
            f"use a world size that is a multiple of {group_size}, or group_size=0 for all ranks"
        )
    return [list(range(start, start + size)) for start in range(0, world, size)]


def _own_group(group_size: int) -> dist.ProcessGroup | None:
    """This rank's statistics group, creating every group collectively (all ranks must call)."""
    world = cdist.world_size()
    groups = group_ranks(world, group_size)
    if len(groups) == 1:
        return None  # the default group: every rank
    if len(groups[0]) == 1:
        return None  # statistics stay local (the module is told so): no group needed
    me = cdist.rank()
    own: dist.ProcessGroup | None = None
    for ranks in groups:  # new_group is collective: every rank creates every group, in order
        created = dist.new_group(ranks)
        if me in ranks:
            own = created if isinstance(created, dist.ProcessGroup) else None
    log.info("global_bn: rank %d shares batch statistics with ranks %s", me, groups[me // len(groups[0])])
    return own


def _build_batch_norm(options: BatchNormOptions) -> NormLayer:
    return functools.partial(BatchNorm, eps=options.eps, momentum=options.momentum)


def _build_global_bn(options: GlobalBatchNormOptions) -> NormLayer:
    if cdist.world_size() == 1:  # one process: plain batch norm, whatever the group size asks for
        return functools.partial(GlobalBatchNorm, eps=options.eps, momentum=options.momentum, shared=False)
    shared = options.group_size != 1
    group = _own_group(options.group_size)
    return functools.partial(
        GlobalBatchNorm, eps=options.eps, momentum=options.momentum, group=group, shared=shared
    )


def _build_none(options: NoOptions) -> NormLayer:
    return _identity


def _identity(num_features: int) -> nn.Module:
    return nn.Identity()


@hookimpl
def contrastive_register_normalizations() -> list[Component]:
    """The built-in normalizations."""
    return [
        Component(
            name="batch_norm",
            build=_build_batch_norm,
            options=BatchNormOptions,
            summary="Batch norm with statistics of this rank's batch only.",
        ),
        Component(
            name="global_bn",
            build=_build_global_bn,
            options=GlobalBatchNormOptions,
            summary="Batch norm with statistics shared across all ranks or groups of ranks, with gradient.",
        ),
        Component(
            name="none",
            build=_build_none,
            options=NoOptions,
            summary="No normalization (identity).",
        ),
    ]
