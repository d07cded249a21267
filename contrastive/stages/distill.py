"""Stage 3, distillation: the fine-tuned teacher (frozen, eval mode) labels unlabelled images with
soft targets; a student (same size: self-distillation, or smaller) learns from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from contrastive.engine import train
from contrastive.interfaces import DataSource, LossOutput, loss_uses_labels
from contrastive.spec.schema import DistillSpec
from contrastive.stages.context import StageContext, build, per_rank_batch, place, plan, view, wrap
from contrastive.stages.evaluation import evaluate_table
from contrastive.stages.models import Classifier, NetworkParts, assemble, rebuild
from contrastive.stages.records import ClassifierRecord
from contrastive.stages.results import FINAL, finish, load_final


def run(spec: DistillSpec, ctx: StageContext) -> dict[str, Any]:
    """Distill, write ``distill/final.pt`` and ``results.json``; return the results."""
    per_rank_batch(spec.batch_size, "distill.batch_size", ctx)
    source = Path(spec.teacher) if spec.teacher else ctx.run_dir / "finetune" / FINAL
    saved = load_final(source, ClassifierRecord)
    built = rebuild(ctx.registry, saved, str(source))
    built.load_state_dict(saved.state_dict)
    teacher = place(built, ctx).eval()
    teacher.requires_grad_(False)
    num_classes = saved.num_classes

    torch.manual_seed(ctx.session.seed + 2)
    parts = NetworkParts(
        normalization=spec.normalization,
        encoder=spec.encoder,
        classifier=spec.classifier,
        num_classes=num_classes,
    )
    network = assemble(ctx.registry, parts, "distill")
    assert isinstance(network, Classifier)
    classifier = network.classifier
    student = place(network, ctx)
    trained = wrap(student, ctx)
    data: DataSource = build(ctx, spec.dataset)
    loss_fn = build(ctx, spec.loss)

    def step(views: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        images = view(views, 0, ctx)  # teacher and student see the same view
        with torch.no_grad():
            teacher_logits = teacher(images)
        out: LossOutput = loss_fn(trained(images), teacher_logits, labels)
        return out

    result = train(
        plan(
            ctx,
            "distill",
            spec,
            model=student,
            trained=trained,
            step=step,
            data=data,
            classifier=classifier,
        ),
        ctx.session,
    )
    scores = evaluate_table(ctx, spec, student)
    final = parts.record(student.state_dict())
    labelled = int(data.num_samples) if loss_uses_labels(spec.loss.options) else 0
    return finish(ctx, "distill", final, result, {"labelled_images": labelled, **scores})
