"""Stage 2, fine-tuning: keep the projection head up to ``from_layer``, add a zero-initialised
classifier, and train the whole network on the labelled subset (SimCLRv2 fine-tunes from layer 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from contrastive.engine import StagePlan, train
from contrastive.interfaces import Augmentation, DataSource, LossOutput
from contrastive.spec.schema import FinetuneSpec
from contrastive.stages.common import (
    FINAL,
    Classifier,
    StageContext,
    build,
    evaluate,
    finish,
    from_record,
    load_final,
    per_rank_batch,
    place,
    record,
    truncate,
    view,
    wrap,
)
from contrastive.stages.pretrain import ContrastiveModel


def run(spec: FinetuneSpec, ctx: StageContext) -> dict[str, Any]:
    """Fine-tune, write ``finetune/final.pt`` and ``results.json``; return the results."""
    local_batch = per_rank_batch(spec.batch_size, "finetune.batch_size", ctx)
    torch.manual_seed(ctx.session.seed + 1)
    source = Path(spec.init) if spec.init else ctx.run_dir / "pretrain" / FINAL
    pretrained = load_final(source, "pretrain")
    where = str(source)
    norm_spec = from_record(ctx, "normalizations", pretrained["normalization"], where)
    encoder_spec = from_record(ctx, "encoders", pretrained["encoder"], where)
    head_spec = from_record(ctx, "heads", pretrained["head"], where)
    norm = build(ctx, "normalizations", norm_spec)
    encoder = build(ctx, "encoders", encoder_spec, norm_layer=norm)
    head = build(ctx, "heads", head_spec, in_dim=encoder.feature_dim, norm_layer=norm, num_classes=None)
    ContrastiveModel(encoder, head).load_state_dict(pretrained["state_dict"])
    kept = truncate(head, spec.from_layer, f"finetune.from_layer (head of {where})")

    data: DataSource = build(ctx, "datasets", spec.dataset)
    if data.num_classes < 2:
        from contrastive.errors import RunError

        raise RunError("finetune.dataset: fine-tuning needs a labelled data set with at least 2 classes")
    classifier = build(
        ctx, "heads", spec.classifier, in_dim=kept.out_dim, norm_layer=norm, num_classes=data.num_classes
    )
    model = place(Classifier(encoder, kept, classifier), ctx)
    trained = wrap(model, ctx)
    augmentation: Augmentation = build(ctx, "augmentations", spec.augmentation)
    loss_fn = build(ctx, "losses", spec.loss)
    optimizer = build(ctx, "optimizers", spec.optimizer, model=model)
    schedule = build(
        ctx,
        "schedules",
        spec.schedule,
        base_lr=spec.optimizer.options.lr,
        global_batch_size=spec.batch_size,
        steps_per_epoch=data.steps_per_epoch(spec.batch_size),
        epochs=spec.epochs,
    )

    def step(views: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        out: LossOutput = loss_fn(trained(view(views, 0, ctx)), labels)
        return out

    plan = StagePlan(
        name="finetune",
        model=trained,
        step=step,
        optimizer=optimizer,
        schedule=schedule,
        data=data,
        augmentation=augmentation,
        epochs=spec.epochs,
        global_batch_size=spec.batch_size,
        max_steps=spec.max_steps,
    )
    result = train(plan, ctx.session)
    eval_data = build(ctx, "datasets", spec.eval_dataset) if spec.eval_dataset is not None else None
    eval_augmentation: Augmentation = build(ctx, "augmentations", spec.eval_augmentation)
    scores = evaluate(ctx, model, eval_data, eval_augmentation, local_batch)
    final = {
        "kind": "classifier",
        "encoder": record(encoder_spec),
        "normalization": record(norm_spec),
        "head": record(head_spec),
        "from_layer": spec.from_layer,
        "classifier": record(spec.classifier),
        "num_classes": data.num_classes,
        "state_dict": model.state_dict(),
    }
    return finish(ctx, "finetune", final, result, {"labelled_images": data.num_samples, **scores})
