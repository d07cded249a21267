"""What every stage runs with: its context, components built from spec tables, placement on the
device (DDP, torch.compile, channels_last) and the training plan of a stage table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from contrastive.blame import tag
from contrastive.distributed import local_batch_size
from contrastive.engine import LoopSettings, Session, StagePlan, StepFn
from contrastive.errors import IndivisibleBatchError, Problem, RunError, SpecError
from contrastive.interfaces import DataSource
from contrastive.parameters import parameter_roles
from contrastive.registry import Registry
from contrastive.spec.schema import DistillSpec, FinetuneSpec, PretrainSpec, RuntimeSpec
from contrastive.spec.structure import ComponentSpec
from contrastive.stages import models
from contrastive.steps import StepCount


@attrs.define
class StageContext:
    """What every stage receives.

    Attributes:
        session: Placement, runtime options, stage directory and reporter.
        registry: Plugin registry to build components from.
        run_dir: The run directory (previous stages' outputs live here).
        source: The spec file, for locating problems found at run time.
        prebuilt: Components already built for this command (the data sets the runner's preflight
            opened), each with the spec's chosen object it was built from: :func:`build` returns
            them instead of building again.
    """

    session: Session
    registry: Registry
    run_dir: Path
    source: str = "spec"
    prebuilt: Sequence[tuple[ComponentSpec, Any]] = ()

    @property
    def device(self) -> torch.device:
        return self.session.dist.device


def loop_settings(runtime: RuntimeSpec) -> LoopSettings:
    """The settings the training loop reads: the ``[runtime]`` values of the same names."""
    return LoopSettings(**{field.name: getattr(runtime, field.name) for field in attrs.fields(LoopSettings)})


def build(ctx: StageContext, chosen: ComponentSpec, **inputs: Any) -> Any:
    """Build the component a spec table chose, with the stage's build-time inputs (a component
    the command built already, :attr:`StageContext.prebuilt`, is reused)."""
    if not inputs:
        for spec, built in ctx.prebuilt:
            if spec is chosen:
                return built
    made = models.build(ctx.registry, chosen, **inputs)
    plugin = ctx.registry.get(chosen.category, chosen.name).plugin
    tag(made, chosen.category, chosen.name, plugin.distribution, plugin.version)
    return made


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
    try:
        return local_batch_size(global_batch, ctx.session.dist.world_size)
    except IndivisibleBatchError as exc:
        raise SpecError([Problem(ctx.source, key, str(exc))]) from None


#: The stage tables: each has epochs, batch_size, max_steps, steps, dataset, augmentation, optimizer,
#: schedule.
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
    state: nn.Module | None = None,
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
        state: Further modules checkpointed with the model (:attr:`StagePlan.state`).
    """
    roles = parameter_roles(model, classifier=classifier)
    optimizer = build(ctx, table.optimizer, model=model, roles=roles)
    per_epoch = data.steps_per_epoch(table.batch_size)
    schedule = build(
        ctx,
        table.schedule,
        base_lr=base_learning_rate(optimizer, f"{name}.optimizer"),
        global_batch_size=table.batch_size,
        steps_per_epoch=per_epoch,
        epochs=table.epochs,
        steps=StepCount(table.steps, data.num_samples, table.batch_size, table.epochs, per_epoch),
    )
    return StagePlan(
        name=name,
        model=trained,
        step=step,
        optimizer=optimizer,
        schedule=schedule,
        data=data,
        augmentation=build(ctx, table.augmentation),
        epochs=table.epochs,
        global_batch_size=table.batch_size,
        max_steps=table.max_steps,
        epoch_end=epoch_end,
        state=state,
        steps=table.steps,
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
