"""Stage 1, pretraining: NT-Xent over two augmented views, encoder + projection head, LARS.

Both views of a batch go through the encoder in one call, so batch-norm statistics mix the views
(as in SimCLR); with ``global_bn`` they are also shared across ranks. A loss that remembers
negatives (SimCLRv2's MoCo-style memory) is fed once a step by :class:`MemoryFeed`, from a
momentum encoder when ``pretrain.memory_momentum`` > 0.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from contrastive.engine import train
from contrastive.errors import PluginError
from contrastive.evaluate import extract_features, knn_accuracy
from contrastive.interfaces import (
    Augmentation,
    DataSource,
    LossOutput,
    NegativeMemory,
    loss_remembers_negatives,
)
from contrastive.spec.schema import PretrainSpec
from contrastive.stages.context import StageContext, build, per_rank_batch, place, plan, view, wrap
from contrastive.stages.evaluation import rank_eval_batches
from contrastive.stages.models import ContrastiveModel, NetworkParts, assemble
from contrastive.stages.results import finish

__all__ = ["ContrastiveModel", "MemoryFeed", "run"]


def run(spec: PretrainSpec, ctx: StageContext) -> dict[str, Any]:
    """Pretrain, write ``pretrain/final.pt`` and ``results.json``; return the results."""
    per_rank_batch(spec.batch_size, "pretrain.batch_size", ctx)
    torch.manual_seed(ctx.session.seed)  # the same initial weights on every rank
    data: DataSource = build(ctx, spec.dataset)
    parts = NetworkParts(normalization=spec.normalization, encoder=spec.encoder, head=spec.head)
    network = assemble(ctx.registry, parts, "pretrain")
    encoder = network.encoder
    model = place(network, ctx)
    trained = wrap(model, ctx)
    loss_fn = build(ctx, spec.loss)
    remembers = loss_remembers_negatives(spec.loss.options)
    feed = MemoryFeed.of(loss_fn, model, spec.memory_momentum) if remembers else None

    def step(views: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        local = views.shape[0]
        images = torch.cat([view(views, 0, ctx), view(views, 1, ctx)])
        projections = trained(images)  # one encoder call for both views
        out: LossOutput = loss_fn(projections[:local], projections[local:])
        if feed is not None:
            feed(images, projections)
        return out

    monitor = _knn_monitor(spec, ctx, encoder)
    stage_plan = plan(
        ctx,
        "pretrain",
        spec,
        model=model,
        trained=trained,
        step=step,
        data=data,
        epoch_end=monitor,
        state=feed.state() if feed is not None else None,
    )
    result = train(stage_plan, ctx.session)
    final = parts.record(model.state_dict())
    extra: dict[str, Any] = {"labelled_images": 0}
    if "knn_top1" in result.last_metrics:
        extra["knn_top1"] = result.last_metrics["knn_top1"]
    return finish(ctx, "pretrain", final, result, extra)


class MemoryFeed:
    """Feeds a loss's memory of negatives once a step, from a momentum encoder or the model itself.

    With ``decay`` m > 0 (``pretrain.memory_momentum``) a copy of encoder and head (the memory
    network, never trained) follows the model as ``theta_mem <- m * theta_mem + (1 - m) * theta``
    before it projects each step's views, as MoCo's key encoder does; its batch norms use batch
    statistics (train mode), like the model's. With m = 0 the keys are the model's own
    projections, detached.

    Attributes:
        loss: The loss whose memory is fed.
        model: The trained model (unwrapped) the memory network follows.
        network: The memory network, or None when ``decay`` is 0.
        decay: m.
    """

    def __init__(self, loss: NegativeMemory, model: nn.Module, network: nn.Module | None, decay: float):
        self.loss = loss
        self.model = model
        self.network = network
        self.decay = decay

    @classmethod
    def of(cls, loss: nn.Module, model: nn.Module, decay: float) -> MemoryFeed:
        """The feed of ``loss`` for ``model`` (a frozen copy of it as memory network when m > 0).

        Raises:
            PluginError: The loss says it remembers negatives but has no ``remember`` method.
        """
        if not isinstance(loss, NegativeMemory):
            raise PluginError(
                f"the loss {type(loss).__name__} says it remembers negatives (remembers_negatives()) "
                "but has no remember(keys1, keys2) method"
            )
        network = None
        if decay > 0:
            network = copy.deepcopy(model)
            network.requires_grad_(False)
            network.train()
        return cls(loss, model, network, decay)

    def __call__(self, images: torch.Tensor, projections: torch.Tensor) -> None:
        """Remember this step's keys.

        Args:
            images: ``[2B, 3, S, S]`` the step's views on this rank, view 1 then view 2.
            projections: ``[2B, D]`` the model's projections of ``images``.
        """
        local = images.shape[0] // 2
        if self.network is None:
            keys = projections.detach()
        else:
            with torch.no_grad():
                self._follow()
                keys = self.network(images)
        self.loss.remember(keys[:local], keys[local:])

    def _follow(self) -> None:
        """One moving-average step of the memory network's parameters towards the model's."""
        assert self.network is not None
        weight = 1.0 - self.decay
        for mine, theirs in zip(self.network.parameters(), self.model.parameters(), strict=True):
            mine.lerp_(theirs.detach(), weight)

    def state(self) -> nn.Module:
        """What is checkpointed with the stage: the loss's memory and the memory network."""
        parts: dict[str, nn.Module] = {"loss": self.loss}  # type: ignore[dict-item]
        if self.network is not None:
            parts["network"] = self.network
        return nn.ModuleDict(parts)


def _knn_monitor(
    spec: PretrainSpec, ctx: StageContext, encoder: nn.Module
) -> Callable[[int], dict[str, float]] | None:
    """kNN top-1 of the encoder's features on a labelled probe split, every ``monitor_every`` epochs."""
    if spec.monitor_train is None or spec.monitor_test is None:
        return None
    bank: DataSource = build(ctx, spec.monitor_train)
    probe: DataSource = build(ctx, spec.monitor_test)
    augmentation: Augmentation = build(ctx, spec.eval_augmentation)
    batch = per_rank_batch(spec.batch_size, "pretrain.batch_size", ctx)

    def features(source: DataSource) -> tuple[torch.Tensor, torch.Tensor]:
        batches = rank_eval_batches(ctx, source, augmentation, batch)
        return extract_features(encoder, batches, ctx.device, augmentation.on_device)

    def monitor(epoch: int) -> dict[str, float]:
        if (epoch + 1) % spec.monitor_every:
            return {}
        bank_features, bank_labels = features(bank)
        probe_features, probe_labels = features(probe)
        accuracy = knn_accuracy(
            bank_features, bank_labels, probe_features, probe_labels, num_classes=max(bank.num_classes, 1)
        )
        return {"knn_top1": float(accuracy)}

    return monitor
