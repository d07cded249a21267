"""Evaluation in the stages: top-1/top-5 of a classifier on a held-out split, every sample once
across the ranks."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from contrastive.engine import unwrap
from contrastive.evaluate import evaluate_classifier
from contrastive.interfaces import Augmentation, Batch, DataSource
from contrastive.spec.schema import DistillSpec, FinetuneSpec
from contrastive.stages.context import StageContext, build, per_rank_batch


def evaluate_table(
    ctx: StageContext, table: FinetuneSpec | DistillSpec, model: nn.Module
) -> dict[str, float]:
    """Top-1/top-5 of ``model`` on the table's ``eval_dataset`` (empty when it has none)."""
    if table.eval_dataset is None:
        return {}
    local_batch = per_rank_batch(table.batch_size, "batch_size", ctx)
    data = build(ctx, table.eval_dataset)
    return evaluate(ctx, model, data, build(ctx, table.eval_augmentation), local_batch)


def rank_eval_batches(
    ctx: StageContext, data: DataSource, augmentation: Augmentation, batch_size: int
) -> Iterator[Batch]:
    """This rank's share of a held-out split, every sample once across the ranks (padded rows masked)."""
    info = ctx.session.dist
    return data.eval_batches(
        augmentation=augmentation,
        batch_size=batch_size,
        rank=info.rank,
        world_size=info.world_size,
        num_workers=ctx.session.runtime.num_workers,
    )


def evaluate(
    ctx: StageContext,
    model: nn.Module,
    data: DataSource | None,
    augmentation: Augmentation,
    batch_size: int,
) -> dict[str, float]:
    """Top-1/top-5 of ``model`` on a held-out split (empty when there is none)."""
    if data is None:
        return {}
    batches = rank_eval_batches(ctx, data, augmentation, batch_size)
    with ctx.session.autocast():
        scores = evaluate_classifier(unwrap(model), batches, ctx.device, augmentation.on_device)
    return {
        "top1": float(scores["top1"]),
        "top5": float(scores["top5"]),
        "eval_samples": int(scores["samples"]),
    }
