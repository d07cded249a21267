"""Stage 2, fine-tuning: keep the projection head up to ``from_layer``, add a zero-initialised
classifier, and train the whole network on the labelled subset (SimCLRv2 fine-tunes from layer 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from contrastive.engine import train
from contrastive.errors import RunError
from contrastive.interfaces import DataSource, LossOutput
from contrastive.spec.schema import FinetuneSpec
from contrastive.spec.structure import ComponentSpec
from contrastive.stages.context import StageContext, build, per_rank_batch, place, plan, view, wrap
from contrastive.stages.evaluation import evaluate_table
from contrastive.stages.models import Classifier, ContrastiveModel, from_record, record, truncate
from contrastive.stages.records import ClassifierRecord, PretrainRecord
from contrastive.stages.results import FINAL, finish, load_final

#: ``finetune.init`` value that trains a new encoder on the labels alone (supervised baseline).
SCRATCH = "scratch"


def run(spec: FinetuneSpec, ctx: StageContext) -> dict[str, Any]:
    """Fine-tune, write ``finetune/final.pt`` and ``results.json``; return the results."""
    per_rank_batch(spec.batch_size, "finetune.batch_size", ctx)
    torch.manual_seed(ctx.session.seed + 1)
    if spec.init == SCRATCH:
        encoder_spec, norm_spec, head_spec, encoder, head = _from_scratch(spec, ctx)
    else:
        encoder_spec, norm_spec, head_spec, encoder, head = _from_pretrained(spec, ctx)
    norm = build(ctx, "normalizations", norm_spec)
    kept = truncate(head, spec.from_layer, "finetune.from_layer") if head is not None else None
    if kept is not None and spec.freeze_head:
        kept.requires_grad_(False)  # TF1: the head is in no `inblock` collection; no optimizer state
    in_dim = kept.out_dim if kept is not None else encoder.feature_dim

    data: DataSource = build(ctx, "datasets", spec.dataset)
    if data.num_classes < 2:
        raise RunError("finetune.dataset: fine-tuning needs a labelled data set with at least 2 classes")
    classifier = build(
        ctx, "heads", spec.classifier, in_dim=in_dim, norm_layer=norm, num_classes=data.num_classes
    )
    model = place(Classifier(encoder, kept, classifier), ctx)
    trained = wrap(model, ctx)
    loss_fn = build(ctx, "losses", spec.loss)

    def step(views: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        out: LossOutput = loss_fn(trained(view(views, 0, ctx)), labels)
        return out

    result = train(
        plan(
            ctx,
            "finetune",
            spec,
            model=model,
            trained=trained,
            step=step,
            data=data,
            classifier=classifier,
        ),
        ctx.session,
    )
    scores = evaluate_table(ctx, spec, model)
    final = ClassifierRecord(
        encoder=record(encoder_spec),
        normalization=record(norm_spec),
        head=record(head_spec) if head_spec is not None else None,
        from_layer=spec.from_layer,
        classifier=record(spec.classifier),
        num_classes=data.num_classes,
        state_dict=model.state_dict(),
    )
    return finish(ctx, "finetune", final, result, {"labelled_images": data.num_samples, **scores})


def _from_pretrained(
    spec: FinetuneSpec, ctx: StageContext
) -> tuple[ComponentSpec, ComponentSpec, ComponentSpec, nn.Module, nn.Module]:
    """Encoder and projection head rebuilt from the pretraining result, weights loaded."""
    source = Path(spec.init) if spec.init else ctx.run_dir / "pretrain" / FINAL
    pretrained = load_final(source, PretrainRecord)
    where = str(source)
    norm_spec = from_record(ctx, "normalizations", pretrained.normalization, where)
    encoder_spec = from_record(ctx, "encoders", pretrained.encoder, where)
    head_spec = from_record(ctx, "heads", pretrained.head, where)
    norm = build(ctx, "normalizations", norm_spec)
    encoder = build(ctx, "encoders", encoder_spec, norm_layer=norm)
    head = build(ctx, "heads", head_spec, in_dim=encoder.feature_dim, norm_layer=norm, num_classes=None)
    ContrastiveModel(encoder, head).load_state_dict(pretrained.state_dict)
    return encoder_spec, norm_spec, head_spec, encoder, head


def _from_scratch(
    spec: FinetuneSpec, ctx: StageContext
) -> tuple[ComponentSpec, ComponentSpec, None, nn.Module, None]:
    """A new encoder from the finetune table: the supervised baseline on the same labels.

    The spec's cross-checks (:func:`contrastive.spec.schema.cross_checks`) made sure that a
    ``"scratch"`` table has an encoder and ``from_layer = 0``.
    """
    assert spec.encoder is not None, "validated by contrastive.spec.schema.cross_checks"
    norm = build(ctx, "normalizations", spec.normalization)
    encoder = build(ctx, "encoders", spec.encoder, norm_layer=norm)
    return spec.encoder, spec.normalization, None, encoder, None
