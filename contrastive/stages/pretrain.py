"""Stage 1, pretraining: NT-Xent over two augmented views, encoder + projection head, LARS.

Both views of a batch go through the encoder in one call, so batch-norm statistics mix the views
(as in SimCLR); with ``global_bn`` they are also shared across ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from contrastive.engine import train
from contrastive.evaluate import extract_features, knn_accuracy
from contrastive.interfaces import Augmentation, DataSource, LossOutput
from contrastive.spec.schema import PretrainSpec
from contrastive.stages.context import StageContext, build, per_rank_batch, place, plan, view, wrap
from contrastive.stages.evaluation import rank_eval_batches
from contrastive.stages.models import ContrastiveModel, record
from contrastive.stages.records import PretrainRecord
from contrastive.stages.results import finish

__all__ = ["ContrastiveModel", "run"]


def run(spec: PretrainSpec, ctx: StageContext) -> dict[str, Any]:
    """Pretrain, write ``pretrain/final.pt`` and ``results.json``; return the results."""
    per_rank_batch(spec.batch_size, "pretrain.batch_size", ctx)
    torch.manual_seed(ctx.session.seed)  # the same initial weights on every rank
    data: DataSource = build(ctx, "datasets", spec.dataset)
    norm = build(ctx, "normalizations", spec.normalization)
    encoder = build(ctx, "encoders", spec.encoder, norm_layer=norm)
    head = build(ctx, "heads", spec.head, in_dim=encoder.feature_dim, norm_layer=norm, num_classes=None)
    model = place(ContrastiveModel(encoder, head), ctx)
    trained = wrap(model, ctx)
    loss_fn = build(ctx, "losses", spec.loss)

    def step(views: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        local = views.shape[0]
        projections = trained(torch.cat([view(views, 0, ctx), view(views, 1, ctx)]))  # one encoder call
        out: LossOutput = loss_fn(projections[:local], projections[local:])
        return out

    monitor = _knn_monitor(spec, ctx, encoder)
    stage_plan = plan(
        ctx, "pretrain", spec, model=model, trained=trained, step=step, data=data, epoch_end=monitor
    )
    result = train(stage_plan, ctx.session)
    final = PretrainRecord(
        encoder=record(spec.encoder),
        normalization=record(spec.normalization),
        head=record(spec.head),
        state_dict=model.state_dict(),
    )
    extra: dict[str, Any] = {"labelled_images": 0}
    if "knn_top1" in result.last_metrics:
        extra["knn_top1"] = result.last_metrics["knn_top1"]
    return finish(ctx, "pretrain", final, result, extra)


def _knn_monitor(
    spec: PretrainSpec, ctx: StageContext, encoder: nn.Module
) -> Callable[[int], dict[str, float]] | None:
    """kNN top-1 of the encoder's features on a labelled probe split, every ``monitor_every`` epochs."""
    if spec.monitor_train is None or spec.monitor_test is None:
        return None
    bank: DataSource = build(ctx, "datasets", spec.monitor_train)
    probe: DataSource = build(ctx, "datasets", spec.monitor_test)
    augmentation: Augmentation = build(ctx, "augmentations", spec.eval_augmentation)
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
