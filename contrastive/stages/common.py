"""Builders the three stages share: components from spec tables, models from checkpoints, results.

A stage's ``final.pt`` records the components that built its model (name and options), so the
next stage, ``contrastive export`` or a user can rebuild the exact architecture without the spec.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from contrastive.checkpoint import load_checkpoint, save_final, write_json_atomic
from contrastive.engine import Session, StagePlan, StepFn, TrainResult, read_metrics, unwrap
from contrastive.errors import Problem, RunError, SpecError
from contrastive.evaluate import evaluate_classifier
from contrastive.interfaces import Augmentation, Batch, DataSource, NormLayer
from contrastive.parameters import parameter_roles
from contrastive.plugins import Registry
from contrastive.spec.loader import to_dict
from contrastive.spec.schema import DistillSpec, FinetuneSpec, PretrainSpec
from contrastive.spec.structure import ComponentSpec, structure_options

log = logging.getLogger(__name__)

FINAL = "final.pt"
RESULTS = "results.json"
CURVES = "curves.png"


@attrs.define
class StageContext:
    """What every stage receives.

    Attributes:
        session: Placement, runtime options, stage directory and reporter.
        registry: Plugin registry to build components from.
        run_dir: The run directory (previous stages' outputs live here).
        source: The spec file, for locating problems found at run time.
    """

    session: Session
    registry: Registry
    run_dir: Path
    source: str = "spec"

    @property
    def device(self) -> torch.device:
        return self.session.dist.device


def build(ctx: StageContext, category: str, chosen: ComponentSpec, **inputs: Any) -> Any:
    """Build the component a spec table chose, with the stage's build-time inputs."""
    return ctx.registry.get(category, chosen.name).component.build(chosen.options, **inputs)


def record(chosen: ComponentSpec) -> dict[str, Any]:
    """A checkpoint-safe record of a chosen component: ``{"name": ..., "options": {...}}``."""
    return {"name": chosen.name, "options": to_dict(chosen.options)}


def from_record(ctx: StageContext, category: str, rec: dict[str, Any], where: str) -> ComponentSpec:
    """Rebuild a :class:`ComponentSpec` from :func:`record`'s dict, validating the options again."""
    entry = ctx.registry.get(category, rec["name"])
    try:
        options = structure_options(entry.options, rec["options"], source=where)
    except SpecError as exc:
        raise RunError(f"{where}: the recorded {category} options no longer validate: {exc}") from exc
    return ComponentSpec(name=rec["name"], options=options)


def place(module: nn.Module, ctx: StageContext) -> nn.Module:
    """Move to the device (channels_last when asked)."""
    module = module.to(ctx.device)
    if ctx.session.runtime.channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module


def wrap(module: nn.Module, ctx: StageContext) -> nn.Module:
    """DDP when distributed, then torch.compile when asked. The result is what the loop trains."""
    info = ctx.session.dist
    if info.is_distributed and any(p.requires_grad for p in module.parameters()):
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        module = DistributedDataParallel(module, device_ids=device_ids)
    if ctx.session.runtime.compile:
        module = torch.compile(module)  # type: ignore[assignment]
    return module


def view(views: torch.Tensor, index: int, ctx: StageContext) -> torch.Tensor:
    """One view of a batch: ``[B, V, 3, S, S]`` to ``[B, 3, S, S]`` (channels_last when asked)."""
    images = views[:, index]
    if ctx.session.runtime.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def per_rank_batch(global_batch: int, key: str, ctx: StageContext) -> int:
    """The local batch size; an indivisible global batch is a spec error at ``key``."""
    world = ctx.session.dist.world_size
    if global_batch % world:
        raise SpecError([Problem(ctx.source, key, f"{global_batch} is not divisible by the {world} ranks")])
    return global_batch // world


class Classifier(nn.Module):
    """Encoder, optionally the first layers of a projection head, and a classifier.

    ``forward``: ``float32 [B, 3, S, S]`` to logits ``[B, num_classes]``.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module | None, classifier: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head if head is not None else nn.Identity()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.head(self.encoder(x)))
        return logits


#: The stage tables: each has epochs, batch_size, max_steps, dataset, augmentation, optimizer, schedule.
StageTable = PretrainSpec | FinetuneSpec | DistillSpec


def plan(
    ctx: StageContext,
    name: str,
    table: StageTable,
    *,
    model: nn.Module,
    trained: nn.Module,
    step: StepFn,
    data: DataSource,
    epoch_end: Any = None,
    classifier: nn.Module | None = None,
) -> StagePlan:
    """The training plan of a stage table: its augmentation, optimizer over ``model`` and schedule.

    Args:
        ctx: The stage context.
        name: Stage name.
        table: The stage's spec table.
        model: The unwrapped trainable module (the optimizer inspects its layers).
        trained: What the loop calls and checkpoints (DDP / compiled wrapper of ``model``).
        step: Loss of one batch.
        data: Training split.
        epoch_end: Optional per-epoch callback (e.g. the kNN monitor).
        classifier: The supervised classifier inside ``model``, whose weights the optimizer sees
            with the CLASSIFIER role (SimCLR's ``head_supervised``); None in pretraining.
    """
    roles = parameter_roles(model, classifier=classifier)
    optimizer = build(ctx, "optimizers", table.optimizer, model=model, roles=roles)
    schedule = build(
        ctx,
        "schedules",
        table.schedule,
        base_lr=base_learning_rate(optimizer, f"{name}.optimizer"),
        global_batch_size=table.batch_size,
        steps_per_epoch=data.steps_per_epoch(table.batch_size),
        epochs=table.epochs,
    )
    return StagePlan(
        name=name,
        model=trained,
        step=step,
        optimizer=optimizer,
        schedule=schedule,
        data=data,
        augmentation=build(ctx, "augmentations", table.augmentation),
        epochs=table.epochs,
        global_batch_size=table.batch_size,
        max_steps=table.max_steps,
        epoch_end=epoch_end,
    )


def base_learning_rate(optimizer: torch.optim.Optimizer, where: str) -> float:
    """The learning rate the optimizer's param groups start at: the schedule's base (before scaling).

    Raises:
        RunError: The groups start at different rates (the schedule sets one rate on all of them).
    """
    rates = sorted({float(group["lr"]) for group in optimizer.param_groups})
    if len(rates) != 1:
        raise RunError(
            f"{where}: the optimizer's param groups start at different learning rates {rates}; "
            "the schedule sets one rate on every group, so they must start at the same base rate"
        )
    return rates[0]


def evaluate_table(
    ctx: StageContext, table: FinetuneSpec | DistillSpec, model: nn.Module
) -> dict[str, float]:
    """Top-1/top-5 of ``model`` on the table's ``eval_dataset`` (empty when it has none)."""
    if table.eval_dataset is None:
        return {}
    local_batch = per_rank_batch(table.batch_size, "batch_size", ctx)
    data = build(ctx, "datasets", table.eval_dataset)
    return evaluate(ctx, model, data, build(ctx, "augmentations", table.eval_augmentation), local_batch)


def classifier_record(
    *,
    encoder: ComponentSpec,
    normalization: ComponentSpec,
    head: ComponentSpec | None,
    from_layer: int,
    classifier: ComponentSpec,
    num_classes: int,
) -> dict[str, Any]:
    """What a classifier's ``final.pt`` says about its architecture."""
    return {
        "kind": "classifier",
        "encoder": record(encoder),
        "normalization": record(normalization),
        "head": record(head) if head is not None else None,
        "from_layer": from_layer,
        "classifier": record(classifier),
        "num_classes": num_classes,
    }


def build_classifier(ctx: StageContext, rec: dict[str, Any], where: str) -> Classifier:
    """Rebuild (untrained) the classifier a ``final.pt`` record describes."""
    norm: NormLayer = build(
        ctx, "normalizations", from_record(ctx, "normalizations", rec["normalization"], where)
    )
    encoder = build(ctx, "encoders", from_record(ctx, "encoders", rec["encoder"], where), norm_layer=norm)
    head = None
    in_dim = int(encoder.feature_dim)
    if rec["head"] is not None:
        full = build(
            ctx,
            "heads",
            from_record(ctx, "heads", rec["head"], where),
            in_dim=in_dim,
            norm_layer=norm,
            num_classes=None,
        )
        head = truncate(full, int(rec["from_layer"]), where)
        in_dim = int(getattr(head, "out_dim"))  # noqa: B009 - heads expose out_dim by contract
    classifier = build(
        ctx,
        "heads",
        from_record(ctx, "heads", rec["classifier"], where),
        in_dim=in_dim,
        norm_layer=norm,
        num_classes=int(rec["num_classes"]),
    )
    return Classifier(encoder, head, classifier)


def truncate(head: nn.Module, layers: int, where: str) -> nn.Module:
    """The first ``layers`` layers of a projection head (``truncated(k)``)."""
    if not hasattr(head, "truncated"):
        raise RunError(f"{where}: the head {type(head).__name__} cannot be cut after layer {layers}")
    try:
        part: nn.Module = getattr(head, "truncated")(layers)  # noqa: B009
    except (ValueError, IndexError) as exc:
        raise RunError(f"{where}: cannot keep {layers} head layers: {exc}") from exc
    return part


def load_final(path: Path, expected_kind: str) -> dict[str, Any]:
    """Load a stage's ``final.pt`` and check what it holds."""
    if not path.exists():
        raise RunError(f"{path} does not exist: run the previous stage first, or give a checkpoint path")
    state = load_checkpoint(path)
    if state.get("kind") != expected_kind:
        raise RunError(f"{path} holds a {state.get('kind')!r} model, expected a {expected_kind!r} one")
    return state


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


def finish(
    ctx: StageContext, name: str, final_state: dict[str, Any], result: TrainResult, extra: dict[str, Any]
) -> dict[str, Any]:
    """Write ``final.pt``, the curves and, last (it marks the stage complete), ``results.json``."""
    results = {
        "stage": name,
        "steps": result.steps,
        "wall_seconds": round(result.wall_seconds, 3),
        "images_per_second": round(result.images_per_second, 3),
        **extra,
    }
    if ctx.session.is_main:
        directory = ctx.session.directory
        save_final(directory / FINAL, final_state)
        plot_curves(directory / "metrics.jsonl", directory / CURVES, title=name)
        write_json_atomic(directory / RESULTS, results)
    return results


def plot_curves(metrics: Path, out: Path, title: str) -> None:
    """Loss (and any accuracy metric) against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = read_metrics(metrics)
    records = [r for r in everything if "loss" in r]
    accuracy_keys = sorted({k for r in everything for k in r if "acc" in k or k.startswith("knn")})
    figure, axes = plt.subplots(1, 2 if accuracy_keys else 1, figsize=(10 if accuracy_keys else 5, 3.5))
    loss_axis = axes[0] if accuracy_keys else axes
    loss_axis.plot([r["step"] for r in records], [r["loss"] for r in records])
    loss_axis.set(title=f"{title}: loss", xlabel="step", ylabel="loss")
    if accuracy_keys:
        for key in accuracy_keys:
            points = [(r["step"], r[key]) for r in everything if key in r]
            axes[1].plot([p[0] for p in points], [p[1] for p in points], label=key)
        axes[1].set(title=f"{title}: accuracy", xlabel="step", ylim=(0, 1))
        axes[1].legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp.png")
    figure.savefig(temporary, dpi=80)
    plt.close(figure)
    temporary.replace(out)
