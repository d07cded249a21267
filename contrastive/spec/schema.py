"""The shape of a spec: frozen attrs classes, one per table.

A spec has ``[experiment]`` and ``[runtime]`` tables and one table per stage that should run
(``[pretrain]``, ``[finetune]``, ``[distill]``; at least one). Component tables inside a stage
(``[pretrain.loss]``) choose a plugin component by ``name`` and carry its options. An optional
``[bench]`` table holds settings of the ``contrastive bench`` protocols run on the spec (no stage
reads it).
``docs/spec-reference.md`` is generated from these classes and the components' options classes.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from contrastive.hookspecs import Category
from contrastive.interfaces import LossKind, head_layer_count, loss_kind, loss_remembers_negatives
from contrastive.options import option
from contrastive.spec.structure import ComponentSpec, component, components, section

#: Stage names in the order a run executes them.
STAGES = ("pretrain", "finetune", "distill")

#: How each stage calls its loss (a loss that says it is called otherwise is a spec error).
STAGE_LOSS_KINDS = {
    "pretrain": LossKind.CONTRASTIVE,
    "finetune": LossKind.SUPERVISED,
    "distill": LossKind.DISTILLATION,
}


@attrs.frozen
class ExperimentSpec:
    """What the run is called and how it is seeded."""

    name: str = option("experiment", "Run name; the run directory defaults to runs/<name>.")
    seed: int = option(0, "Seed of every random number generator in the run.", min=0)


@attrs.frozen
class RuntimeSpec:
    """Where and how the stages execute (no effect on the maths)."""

    device: Literal["auto", "cpu", "cuda"] = option(
        "auto", "Training device; auto picks cuda:LOCAL_RANK when CUDA is available."
    )
    precision: Literal["fp32", "bf16"] = option(
        "fp32", "bf16 runs the forward pass under bfloat16 autocast on CUDA (losses stay float32)."
    )
    channels_last: bool = option(False, "Use the channels_last memory format for images and convolutions.")
    compile: bool = option(False, "Compile the model with torch.compile.")
    num_workers: int = option(2, "Data-loader worker processes per rank.", min=0)
    threads: int = option(
        0,
        "Intra-op threads per rank; 0 budgets them: the cores this process may use, divided among "
        "the ranks on this node, minus the data workers, at least 1.",
        min=0,
    )
    log_every: int = option(10, "Write a metrics line every this many steps.", min=1)
    checkpoint_every: int = option(
        500, "Save a checkpoint every this many steps (and at each stage end).", min=1
    )
    keep_checkpoints: int = option(2, "How many recent checkpoints to keep per stage.", min=2)
    max_skipped_fraction: float = option(
        0.01,
        "Stop the run when more than this share of samples was skipped as undecodable.",
        min=0.0,
        max=1.0,
    )
    deterministic: bool = option(
        False, "Ask torch for deterministic algorithms (slower; for reproducibility)."
    )
    loggers: tuple[ComponentSpec, ...] = components(
        Category.LOGGERS,
        "Metric sinks besides metrics.jsonl (always written), as [[runtime.loggers]] tables: "
        "tensorboard, mlflow, wandb.",
    )


@attrs.frozen
class PretrainSpec:
    """Self-supervised contrastive pretraining (SimCLRv2 stage 1)."""

    epochs: int = option(800, "Training epochs over the unlabelled images.", min=1)
    batch_size: int = option(4096, "Global batch size, divided evenly across ranks.", min=1)
    max_steps: int = option(0, "Stop after this many optimizer steps (0: no limit; for smoke tests).", min=0)
    dataset: ComponentSpec = component(
        Category.DATASETS, None, "Training images (labels, if any, are unused)."
    )
    monitor_train: ComponentSpec | None = component(
        Category.DATASETS,
        None,
        "Labelled images whose features index the kNN monitor (optional).",
        required=False,
    )
    monitor_test: ComponentSpec | None = component(
        Category.DATASETS, None, "Labelled images the kNN monitor classifies (optional).", required=False
    )
    monitor_every: int = option(1, "Run the kNN monitor every this many epochs (when configured).", min=1)
    augmentation: ComponentSpec = component(Category.AUGMENTATIONS, "simclr", "Two views of every image.")
    eval_augmentation: ComponentSpec = component(
        Category.AUGMENTATIONS, "center_crop", "Views for the kNN monitor (deterministic)."
    )
    normalization: ComponentSpec = component(
        Category.NORMALIZATIONS, "global_bn", "Normalization layers of encoder and head."
    )
    encoder: ComponentSpec = component(Category.ENCODERS, "resnet", "The network being pretrained.")
    head: ComponentSpec = component(Category.HEADS, "projection_mlp", "Projection head on encoder features.")
    loss: ComponentSpec = component(Category.LOSSES, "nt_xent", "Contrastive loss over the two views.")
    memory_momentum: float = option(
        0.0,
        "Decay of the momentum encoder (moving average of encoder and head) whose projections fill "
        "a loss's memory of negatives, as in SimCLRv2's MoCo-style memory; 0: the trained network's "
        "own projections. Needs a loss that remembers negatives.",
        min=0.0,
        max=1.0,
        max_exclusive=True,
    )
    optimizer: ComponentSpec = component(Category.OPTIMIZERS, "lars", "Optimizer (its lr is the base lr).")
    schedule: ComponentSpec = component(Category.SCHEDULES, "warmup_cosine", "Learning-rate schedule.")


@attrs.frozen
class FinetuneSpec:
    """Supervised fine-tuning on the labelled subset (SimCLRv2 stage 2)."""

    epochs: int = option(60, "Training epochs over the labelled subset.", min=1)
    batch_size: int = option(1024, "Global batch size, divided evenly across ranks.", min=1)
    max_steps: int = option(0, "Stop after this many optimizer steps (0: no limit; for smoke tests).", min=0)
    from_layer: int = option(
        1, "Keep the projection head up to this layer (0: encoder output; SimCLRv2 uses 1).", min=0
    )
    init: str = option(
        "",
        'Checkpoint to start from; empty: this run\'s pretrain/final.pt; "scratch": a new, randomly '
        "initialised encoder (the supervised baseline; needs finetune.encoder and from_layer = 0).",
    )
    dataset: ComponentSpec = component(Category.DATASETS, None, "The labelled subset.")
    encoder: ComponentSpec | None = component(
        Category.ENCODERS, None, 'Encoder trained from scratch when init = "scratch".', required=False
    )
    normalization: ComponentSpec = component(
        Category.NORMALIZATIONS, "global_bn", 'Normalization layers of the encoder when init = "scratch".'
    )
    eval_dataset: ComponentSpec | None = component(
        Category.DATASETS, None, "Held-out labelled split for top-1/top-5 (optional).", required=False
    )
    augmentation: ComponentSpec = component(Category.AUGMENTATIONS, "crop_flip", "Training views.")
    eval_augmentation: ComponentSpec = component(Category.AUGMENTATIONS, "center_crop", "Evaluation views.")
    classifier: ComponentSpec = component(Category.HEADS, "linear", "New classifier on the kept layers.")
    loss: ComponentSpec = component(Category.LOSSES, "cross_entropy", "Supervised loss.")
    optimizer: ComponentSpec = component(Category.OPTIMIZERS, "lars", "Optimizer (its lr is the base lr).")
    schedule: ComponentSpec = component(Category.SCHEDULES, "warmup_cosine", "Learning-rate schedule.")


@attrs.frozen
class DistillSpec:
    """Distillation of the fine-tuned teacher into a student (SimCLRv2 stage 3)."""

    epochs: int = option(400, "Training epochs over the unlabelled images.", min=1)
    batch_size: int = option(1024, "Global batch size, divided evenly across ranks.", min=1)
    max_steps: int = option(0, "Stop after this many optimizer steps (0: no limit; for smoke tests).", min=0)
    teacher: str = option("", "Fine-tuned checkpoint to distill; empty: this run's finetune/final.pt.")
    dataset: ComponentSpec = component(Category.DATASETS, None, "Unlabelled training images.")
    eval_dataset: ComponentSpec | None = component(
        Category.DATASETS, None, "Held-out labelled split for top-1/top-5 (optional).", required=False
    )
    augmentation: ComponentSpec = component(
        Category.AUGMENTATIONS, "crop_flip", "Training views (teacher and student)."
    )
    eval_augmentation: ComponentSpec = component(Category.AUGMENTATIONS, "center_crop", "Evaluation views.")
    normalization: ComponentSpec = component(
        Category.NORMALIZATIONS, "global_bn", "Normalization layers of the student."
    )
    encoder: ComponentSpec = component(Category.ENCODERS, "resnet", "The student network.")
    classifier: ComponentSpec = component(Category.HEADS, "linear", "The student's classifier.")
    loss: ComponentSpec = component(Category.LOSSES, "distillation", "Distillation loss on teacher logits.")
    optimizer: ComponentSpec = component(Category.OPTIMIZERS, "lars", "Optimizer (its lr is the base lr).")
    schedule: ComponentSpec = component(Category.SCHEDULES, "warmup_cosine", "Learning-rate schedule.")


@attrs.frozen
class BenchSupervisedSpec:
    """The supervised baseline of `contrastive bench label-efficiency`, tuned on its own."""

    set: tuple[str, ...] = option(
        (),
        'Overrides of the supervised arm, as --set strings ("finetune.optimizer.lr=0.1"), applied on '
        'top of its finetune table: init = "scratch", from_layer = 0, the pretraining encoder and '
        "normalization; each key under finetune (not finetune.dataset). Empty: the spec's fine-tuning "
        "settings unchanged (an untuned baseline; a new network usually needs larger steps).",
    )


@attrs.frozen
class BenchSpec:
    """Settings of the `contrastive bench` protocols run on this spec (`contrastive run` ignores them)."""

    supervised: BenchSupervisedSpec = section(
        BenchSupervisedSpec, "The label-efficiency protocol's supervised arm."
    )


@attrs.frozen
class Spec:
    """A whole spec. Stages run in the order pretrain, finetune, distill; absent ones are skipped."""

    experiment: ExperimentSpec = section(ExperimentSpec, "Run name and seed.")
    runtime: RuntimeSpec = section(RuntimeSpec, "Device, precision, workers, logging and checkpoints.")
    pretrain: PretrainSpec | None = section(PretrainSpec, "Contrastive pretraining stage.", optional=True)
    finetune: FinetuneSpec | None = section(FinetuneSpec, "Fine-tuning stage.", optional=True)
    distill: DistillSpec | None = section(DistillSpec, "Distillation stage.", optional=True)
    bench: BenchSpec | None = section(
        BenchSpec, "Settings of `contrastive bench` protocols on this spec (optional).", optional=True
    )

    def stages(self) -> list[str]:
        """Names of the stages this spec runs, in order."""
        return [name for name in STAGES if getattr(self, name) is not None]


def _is_default_component(table: Any, name: str) -> bool:
    """Whether ``table.name`` is its field's default component with default options.

    Options classes that cannot be built without arguments have no default to compare with,
    so a component of such a class never counts as the default.
    """
    chosen = getattr(table, name)
    if chosen is None or chosen.name != attrs.fields_dict(type(table))[name].metadata["default_name"]:
        return False
    try:
        return bool(chosen.options == type(chosen.options)())
    except TypeError:
        return False


def cross_checks(spec: Spec) -> list[tuple[str, str]]:
    """Problems that involve more than one key, as ``(dotted key, message)`` pairs."""
    problems: list[tuple[str, str]] = []
    finetune = spec.finetune
    if finetune is not None:
        if finetune.init == "scratch":
            if finetune.encoder is None:
                problems.append(("finetune.encoder", 'init = "scratch" needs an encoder table to train'))
            if finetune.from_layer != 0:
                problems.append(("finetune.from_layer", 'must be 0 with init = "scratch" (there is no head)'))
        else:
            if finetune.encoder is not None:
                problems.append(
                    ("finetune.encoder", 'only used with init = "scratch"; the encoder comes from init')
                )
            if not _is_default_component(finetune, "normalization"):
                problems.append(
                    (
                        "finetune.normalization",
                        'only used with init = "scratch"; a pretrained encoder keeps the normalization '
                        "it was pretrained with (set it in the pretraining's table)",
                    )
                )
        if not finetune.init and spec.pretrain is not None and finetune.from_layer > 0:
            head = spec.pretrain.head
            head_layers = head_layer_count(head.options)
            if head_layers is None:
                problems.append(
                    (
                        "finetune.from_layer",
                        f"the pretraining head {head.name!r} cannot be cut (its options do not say "
                        "how many layers it has: no layer_count()); use from_layer = 0",
                    )
                )
            elif finetune.from_layer > head_layers:
                problems.append(
                    (
                        "finetune.from_layer",
                        f"the pretraining head has {head_layers} layers, cannot keep {finetune.from_layer}",
                    )
                )
    pretrain = spec.pretrain
    if (
        pretrain is not None
        and pretrain.memory_momentum > 0
        and not loss_remembers_negatives(pretrain.loss.options)
    ):
        problems.append(  # a momentum encoder without a memory would train nothing
            (
                "pretrain.memory_momentum",
                f"a momentum encoder only feeds a memory of negatives, and the loss {pretrain.loss.name!r} "
                "keeps none as configured; give the loss a memory or set memory_momentum = 0",
            )
        )
    for stage in spec.stages():
        chosen = getattr(spec, stage).loss
        kind, needed = loss_kind(chosen.options), STAGE_LOSS_KINDS[stage]
        if kind is not None and kind is not needed:
            problems.append(
                (
                    f"{stage}.loss.name",
                    f"{chosen.name!r} is a {kind.value} loss ({kind.call}); {stage} needs a "
                    f"{needed.value} loss ({needed.call})",
                )
            )
    return problems
