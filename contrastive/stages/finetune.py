"""Stage 2, fine-tuning: keep the projection head up to ``from_layer``, add a zero-initialised
classifier, and train the whole network on the labelled subset (SimCLRv2 fine-tunes from layer 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from contrastive.engine import train
from contrastive.errors import RunError
from contrastive.interfaces import DataSource, LossOutput
from contrastive.spec.schema import FinetuneSpec
from contrastive.stages.context import StageContext, build, per_rank_batch, place, plan, view, wrap
from contrastive.stages.evaluation import evaluate_table
from contrastive.stages.models import Classifier, NetworkParts, assemble, parts_of
from contrastive.stages.records import PretrainRecord
from contrastive.stages.results import FINAL, finish, load_final

#: ``finetune.init`` value that trains a new encoder on the labels alone (supervised baseline).
SCRATCH = "scratch"


def run(spec: FinetuneSpec, ctx: StageContext) -> dict[str, Any]:
    """Fine-tune, write ``finetune/final.pt`` and ``results.json``; return the results."""
    per_rank_batch(spec.batch_size, "finetune.batch_size", ctx)
    torch.manual_seed(ctx.session.seed + 1)
    data: DataSource = build(ctx, spec.dataset)
    if data.num_classes < 2:
        raise RunError("finetune.dataset: fine-tuning needs a labelled data set with at least 2 classes")
    parts, pretrained, where = _parts(spec, ctx, data.num_classes)
    network = assemble(ctx.registry, parts, where, pretrained=pretrained)
    assert isinstance(network, Classifier)
    model = place(network, ctx)
    trained = wrap(model, ctx)
    loss_fn = build(ctx, spec.loss)

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
            classifier=network.classifier,
        ),
        ctx.session,
    )
    scores = evaluate_table(ctx, spec, model)
    final = parts.record(model.state_dict())
    return finish(ctx, "finetune", final, result, {"labelled_images": data.num_samples, **scores})


def _parts(
    spec: FinetuneSpec, ctx: StageContext, num_classes: int
) -> tuple[NetworkParts, dict[str, torch.Tensor] | None, str]:
    """The network to fine-tune, the weights its encoder and head start from, and where both come
    from.

    From a pretraining (``init`` empty or a ``final.pt``): its encoder, normalization and head cut
    after ``from_layer``, with its weights. From scratch (``init = "scratch"``, the supervised
    baseline): the finetune table's encoder and normalization, no head, new weights; the spec's
    cross-checks (:func:`contrastive.spec.schema.cross_checks`) made sure such a table has an
    encoder and ``from_layer = 0``.
    """
    if spec.init == SCRATCH:
        assert spec.encoder is not None, "validated by contrastive.spec.schema.cross_checks"
        scratch = NetworkParts(
            normalization=spec.normalization,
            encoder=spec.encoder,
            classifier=spec.classifier,
            num_classes=num_classes,
        )
        return scratch, None, "finetune.encoder"
    source = Path(spec.init) if spec.init else ctx.run_dir / "pretrain" / FINAL
    saved = load_final(source, PretrainRecord)
    where = str(source)
    pretrained = parts_of(ctx.registry, saved, where)
    parts = NetworkParts(
        normalization=pretrained.normalization,
        encoder=pretrained.encoder,
        head=pretrained.head,
        from_layer=spec.from_layer,
        classifier=spec.classifier,
        num_classes=num_classes,
    )
    return parts, saved.state_dict, where
