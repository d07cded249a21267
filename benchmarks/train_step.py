"""Overhead of the framework's pretraining step: ``contrastive.engine.train`` vs a plain PyTorch loop.

Both sides train the same SimCLR pretraining step for the same number of steps, in one process:

- framework: :func:`contrastive.stages.pretrain.run` (the stage ``contrastive run`` executes: it
  builds the components from a :class:`~contrastive.spec.schema.PretrainSpec`, places and wraps the
  model and trains a :class:`~contrastive.engine.StagePlan` with :func:`contrastive.engine.train`:
  learning-rate schedule, batch to the device, on-device augmentation, autocast, NaN agreement,
  skipped-sample check, logging, checkpoint at the end);
- baseline: a hand-written loop over ``nn.Sequential(encoder, head)``: set the lr from the same
  schedule, copy the batch, run the augmentation's ``on_device``, forward both views in one call,
  NT-Xent, ``zero_grad``/``backward``/``step``. No logging, no NaN check, no per-step host sync.

Fairness. Encoder, head, normalization, loss, optimizer, schedule and augmentation are built
through the registry (``load_registry().build``) with the same options for both sides (the
framework from a spec structured from the very same tables), from the same seed, so both start
from the same weights and see the same views: the last step's losses are printed and should agree
(exactly on CPU in fp32). **Data loading is excluded from both sides**: the batches are
pre-generated random ``uint8 [B, 2, 3, S, S]`` views (what the per-sample augmentation makes) held
in host memory (pinned on CUDA) and served to the framework by an in-memory ``DataSource``
registered as the dataset component ``bench_memory``; the host-to-device copy and the batched
photometric augmentation are included on both sides. The first ``--warmup`` steps are not timed,
nor are start-up, the final checkpoint and the plots.

Two ways to pair the measurements (``--mode``; the median over ``--repeats`` is reported):

- ``paired`` (default on CPU, where the machine is shared and its load changes by the second): the
  baseline runs in lockstep inside the framework's run (its step ``i`` runs between the framework's
  steps ``i`` and ``i + 1``, outside the framework's timing), so each pair of steps sees the same
  load; a repeat's ratio is the median of the per-step ratios.
- ``separate`` (default on CUDA, where a per-step synchronization would distort the baseline):
  whole runs alternate F-B, B-F, ...; a repeat's ratio is that of the synchronized total times.

Prints images per second of each side per repeat and ``ratio framework/baseline`` (target >= 0.97).
Run: ``python benchmarks/train_step.py`` (CPU quick default: ResNet-18, CIFAR stem, 16 base
filters, 32 px, batch 64, 20 timed steps, 1 thread) or e.g. ``--device cuda --size 224 --batch 256
--depth 50 --base-width 64 --precision bf16 --channels-last``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from contrastive import Component
from contrastive.distributed import setup
from contrastive.engine import Session
from contrastive.interfaces import Augmentation, Batch, LossOutput, Schedule
from contrastive.registry import PluginInfo, RegisteredComponent, Registry, load_registry
from contrastive.spec.schema import PretrainSpec, RuntimeSpec
from contrastive.spec.structure import Context, structure, structure_options
from contrastive.stages import pretrain
from contrastive.stages.context import StageContext, loop_settings

MEMORY_DATASET = "bench_memory"
SEED = 0

#: Registry category of each pretrain spec component field.
CATEGORIES = {
    "augmentation": "augmentations",
    "normalization": "normalizations",
    "encoder": "encoders",
    "head": "heads",
    "loss": "losses",
    "optimizer": "optimizers",
    "schedule": "schedules",
}


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@attrs.frozen
class Config:
    """What both sides train.

    Attributes:
        device: ``cpu`` or ``cuda``.
        batch: Images per step (each gives two views).
        warmup: Untimed steps first.
        steps: Timed steps.
        precision: ``fp32`` or ``bf16`` (autocast on CUDA only, as the framework does).
        channels_last: channels_last model and inputs.
        compile: ``torch.compile`` the model.
        tables: Component tables (pretrain field -> spec table with ``name``), shared by both sides.
    """

    device: str
    batch: int
    warmup: int
    steps: int
    precision: str
    channels_last: bool
    compile: bool
    tables: dict[str, dict[str, Any]]

    @property
    def total(self) -> int:
        return self.warmup + self.steps


def component_tables(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The spec tables of the pretrain stage's components (defaults except encoder and view size)."""
    cifar_stem = args.size <= 64 if args.cifar_stem is None else args.cifar_stem
    return {
        "augmentation": {"name": "simclr", "size": args.size},
        "normalization": {"name": "global_bn"},
        "encoder": {
            "name": "resnet",
            "depth": args.depth,
            "width_multiplier": args.width,
            "base_width": args.base_width,
            "cifar_stem": cifar_stem,
        },
        "head": {"name": "projection_mlp"},
        "loss": {"name": "nt_xent"},
        "optimizer": {"name": "lars"},
        "schedule": {"name": "warmup_cosine"},
    }


def options_of(table: dict[str, Any]) -> dict[str, Any]:
    """A spec table's options (everything but ``name``)."""
    return {key: value for key, value in table.items() if key != "name"}


def make_batches(distinct: int, batch: int, size: int, pin: bool) -> list[Batch]:
    """Pre-generated batches of random views.

    Returns:
        ``distinct`` batches, each ``uint8 [batch, 2, 3, size, size]`` images, labels ``-1``.
    """
    gen = torch.Generator().manual_seed(SEED)
    batches = []
    for _ in range(distinct):
        images = torch.randint(0, 256, (batch, 2, 3, size, size), dtype=torch.uint8, generator=gen)
        if pin:
            images = images.pin_memory()
        labels = torch.full((batch,), -1, dtype=torch.int64)
        batches.append(Batch(images=images, labels=labels, mask=torch.ones(batch, dtype=torch.bool)))
    return batches


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------


@attrs.define
class StepTimer:
    """Durations of the timed steps of one side.

    Only the first start and the last stop synchronize the device: on CUDA the per-step durations
    are host times (meaningful in sum), on CPU each is the step's wall time.

    Attributes:
        device: The training device.
        durations: Seconds of each timed step, in order.
        last_loss: Loss of the last step (the framework's as logged, the baseline's as computed).
    """

    device: torch.device
    durations: list[float] = attrs.Factory(list)
    last_loss: float = float("nan")
    _since: float = 0.0

    def _now(self, synchronize: bool) -> float:
        if synchronize and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start(self, synchronize: bool = False) -> None:
        """A timed step begins."""
        self._since = self._now(synchronize)

    def stop(self, synchronize: bool = False) -> None:
        """The timed step that began last ended."""
        self.durations.append(self._now(synchronize) - self._since)


@attrs.frozen
class Measurement:
    """One side's timed steps.

    Attributes:
        batch: Images per step.
        durations: Seconds of each timed step.
        last_loss: Loss of the last step.
    """

    batch: int
    durations: tuple[float, ...]
    last_loss: float

    @property
    def seconds(self) -> float:
        return sum(self.durations)

    @property
    def images_per_second(self) -> float:
        """Over the total time."""
        return len(self.durations) * self.batch / self.seconds

    @property
    def median_step_images_per_second(self) -> float:
        """From the median step time."""
        return self.batch / statistics.median(self.durations)

    def as_record(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "images_per_second": self.images_per_second,
            "median_step_images_per_second": self.median_step_images_per_second,
            "last_loss": self.last_loss,
            "step_seconds": list(self.durations),
        }


def measurement(config: Config, timer: StepTimer) -> Measurement:
    """A side's measurement from its timer (checks every timed step was timed)."""
    if len(timer.durations) != config.steps:
        raise RuntimeError(f"expected {config.steps} timed steps, got {len(timer.durations)}")
    return Measurement(config.batch, tuple(timer.durations), timer.last_loss)


# --------------------------------------------------------------------------------------------------
# Baseline: the hand-written loop
# --------------------------------------------------------------------------------------------------


class PlainLoop:
    """The baseline: components from the registry, one plain PyTorch step per :meth:`step` call."""

    def __init__(self, config: Config, batches: list[Batch]) -> None:
        self.config = config
        self.batches = batches
        self.device = setup(config.device).device
        self.timer = StepTimer(self.device)
        registry = load_registry()
        torch.manual_seed(SEED)  # the framework seeds before building too: the same initial weights
        self.augmentation: Augmentation = self._build(registry, "augmentation")
        norm = self._build(registry, "normalization")
        encoder = self._build(registry, "encoder", norm_layer=norm)
        head = self._build(registry, "head", in_dim=encoder.feature_dim, norm_layer=norm, num_classes=None)
        model: nn.Module = nn.Sequential(encoder, head).to(self.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model.train()
        self.forward = torch.compile(model) if config.compile else model
        self.loss_fn = self._build(registry, "loss")
        self.optimizer: torch.optim.Optimizer = self._build(registry, "optimizer", model=model)
        self.schedule: Schedule = self._build(
            registry,
            "schedule",
            base_lr=self._base_lr(registry),
            global_batch_size=config.batch,
            steps_per_epoch=config.total,
            epochs=1,
        )
        self.generator = torch.Generator(device=self.device).manual_seed(SEED * 1_000_003)  # the engine's
        self.autocast = config.precision == "bf16" and self.device.type == "cuda"
        self.loss = torch.zeros(())

    def _build(self, registry: Registry, field: str, **inputs: Any) -> Any:
        table = self.config.tables[field]
        return registry.build(CATEGORIES[field], table["name"], **options_of(table), **inputs)

    def _base_lr(self, registry: Registry) -> float:
        table = self.config.tables["optimizer"]
        options = registry.get("optimizers", table["name"]).options
        return float(structure_options(options, options_of(table), source="baseline").lr)

    def step(self, index: int) -> None:
        """Train step ``index`` (timed when ``index >= warmup``)."""
        config, timed = self.config, index >= self.config.warmup
        if timed:
            self.timer.start(synchronize=index == config.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule(index)
        images = self.batches[index % len(self.batches)].images.to(self.device, non_blocking=True)
        views = self.augmentation.on_device(images, self.generator)
        inputs = torch.cat([views[:, 0], views[:, 1]])
        if config.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            projections = self.forward(inputs)
            out: LossOutput = self.loss_fn(projections[: config.batch], projections[config.batch :])
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        self.loss = out.loss.detach()
        if timed:
            self.timer.stop(synchronize=index == config.total - 1)
        if index == config.total - 1:
            self.timer.last_loss = float(self.loss)


def run_baseline(config: Config, batches: list[Batch]) -> Measurement:
    """The hand-written loop alone."""
    loop = PlainLoop(config, batches)
    for index in range(config.total):
        loop.step(index)
    return measurement(config, loop.timer)


# --------------------------------------------------------------------------------------------------
# Framework: pretrain.run on an in-memory data source
# --------------------------------------------------------------------------------------------------


@attrs.define
class MemorySource:
    """A :class:`~contrastive.interfaces.DataSource` serving pre-made batches, one epoch of ``steps``.

    Batch ``i`` is ``batches[i % len(batches)]``. The engine asks for batch ``i`` once it finished
    step ``i - 1``, so the source times the framework's steps: it stops the timer of step ``i - 1``,
    runs the partner's (the baseline's) step ``i - 1`` when paired, then starts the timer of step ``i``.
    """

    batches: list[Batch]
    steps: int
    warmup: int
    timer: StepTimer
    partner: PlainLoop | None = None
    num_classes: int = 0
    num_samples: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.num_samples = self.steps * self.batches[0].images.shape[0]

    def steps_per_epoch(self, global_batch_size: int) -> int:
        """Batches per epoch."""
        return self.num_samples // global_batch_size

    def train_batches(self, *, start_step: int = 0, **_: Any) -> Iterator[Batch]:
        """The epoch's batches from ``start_step`` on (the other keywords do not matter here)."""
        for index in range(start_step, self.steps):
            if index > self.warmup:
                self.timer.stop()
            if self.partner is not None and index > 0:
                self.partner.step(index - 1)
            if index >= self.warmup:
                self.timer.start(synchronize=index == self.warmup)
            yield self.batches[index % len(self.batches)]

    def eval_batches(self, **_: Any) -> Iterator[Batch]:
        """No evaluation split."""
        return iter(())


class EndReporter:
    """Ends the timing at the loop's last reported step (before the final checkpoint)."""

    def __init__(self, source: MemorySource) -> None:
        self.source = source

    def stage_started(self, stage: str, total_steps: int, start_step: int) -> None:
        """Ignore."""

    def step(self, stage: str, step: int, metrics: dict[str, float]) -> None:
        """At the last step: stop the timer, keep the logged loss, run the partner's last step."""
        if step != self.source.steps:
            return
        self.source.timer.stop(synchronize=True)
        self.source.timer.last_loss = float(metrics["loss"])
        if self.source.partner is not None:
            self.source.partner.step(step - 1)

    def stage_finished(self, stage: str) -> None:
        """Ignore."""


def with_memory_dataset(registry: Registry, source: MemorySource) -> Registry:
    """``registry`` plus the dataset component ``bench_memory`` that builds ``source``."""
    entry = RegisteredComponent(
        category="datasets",
        component=Component(
            name=MEMORY_DATASET,
            build=lambda _options: source,
            summary="Pre-made in-memory batches (benchmarks/train_step.py).",
        ),
        plugin=PluginInfo(name="benchmark", module=__name__, distribution="", version=""),
    )
    return attrs.evolve(registry, entries={**registry.entries, ("datasets", MEMORY_DATASET): entry})


def pretrain_spec(config: Config, registry: Registry) -> PretrainSpec:
    """The framework's ``[pretrain]`` table, structured and validated as ``contrastive run`` does."""
    table: dict[str, Any] = {
        "epochs": 1,
        "batch_size": config.batch,
        "dataset": {"name": MEMORY_DATASET},
        **config.tables,
    }
    ctx = Context(registry=registry, locate=lambda _key: "train_step.py")
    spec = structure(PretrainSpec, table, prefix="pretrain.", ctx=ctx)
    if ctx.problems or not isinstance(spec, PretrainSpec):
        raise SystemExit("; ".join(f"{p.key}: {p.message}" for p in ctx.problems))
    return spec


def run_framework(config: Config, batches: list[Batch], partner: PlainLoop | None = None) -> Measurement:
    """Train through ``pretrain.run`` (``engine.train`` with a ``StagePlan``), the partner in lockstep."""
    info = setup(config.device)
    source = MemorySource(batches, config.total, config.warmup, StepTimer(info.device), partner)
    registry = with_memory_dataset(load_registry(), source)
    runtime = RuntimeSpec(
        device=config.device,  # type: ignore[arg-type]
        precision=config.precision,  # type: ignore[arg-type]
        channels_last=config.channels_last,
        compile=config.compile,
        num_workers=0,
        log_every=config.total,  # one metrics line, at the last step
        checkpoint_every=config.total,  # one checkpoint, after the timing ended
    )
    with tempfile.TemporaryDirectory() as tmp:
        session = Session(
            dist=info,
            runtime=loop_settings(runtime),
            seed=SEED,
            directory=Path(tmp) / "pretrain",
            reporter=EndReporter(source),
        )
        ctx = StageContext(session=session, registry=registry, run_dir=Path(tmp))
        pretrain.run(pretrain_spec(config, registry), ctx)
    return measurement(config, source.timer)


# --------------------------------------------------------------------------------------------------
# Repeats
# --------------------------------------------------------------------------------------------------


@attrs.frozen
class Repeat:
    """Both sides once, and their ratio (framework over baseline images per second)."""

    framework: Measurement
    baseline: Measurement
    ratio: float
    order: str


def measure(config: Config, batches: list[Batch], mode: str, repeat: int) -> Repeat:
    """One repeat: lockstep (``paired``) or two whole runs in alternating order (``separate``)."""
    if mode == "paired":
        partner = PlainLoop(config, batches)
        framework = run_framework(config, batches, partner)
        baseline = measurement(config, partner.timer)
        per_step = [b / f for f, b in zip(framework.durations, baseline.durations, strict=True)]
        return Repeat(framework, baseline, statistics.median(per_step), "lockstep")
    result: dict[str, Measurement] = {}
    order = ("framework", "baseline") if repeat % 2 == 0 else ("baseline", "framework")
    for side in order:
        result[side] = (
            run_framework(config, batches) if side == "framework" else run_baseline(config, batches)
        )
        if config.device == "cuda":
            torch.cuda.empty_cache()
    framework, baseline = result["framework"], result["baseline"]
    return Repeat(framework, baseline, baseline.seconds / framework.seconds, f"{order[0]} first")


def repeat_line(index: int, result: Repeat) -> str:
    """One repeat's throughputs, ratio and last losses."""
    f, b = result.framework, result.baseline
    return (
        f"repeat {index} ({result.order}): images/s framework {f.images_per_second:.1f} "
        f"(median step {f.median_step_images_per_second:.1f}), baseline {b.images_per_second:.1f} "
        f"(median step {b.median_step_images_per_second:.1f}); ratio {result.ratio:.3f}; "
        f"last loss {f.last_loss:.6f} vs {b.last_loss:.6f}"
    )


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--size", type=int, default=32, help="view side in pixels")
    parser.add_argument("--batch", type=int, default=64, help="images per step (two views each)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=3, help="measurements (the median ratio is reported)")
    parser.add_argument(
        "--mode",
        choices=("auto", "paired", "separate"),
        default="auto",
        help="paired: baseline steps in lockstep with the framework's; separate: alternating whole "
        "runs (auto: paired on CPU, separate on CUDA)",
    )
    parser.add_argument("--depth", type=int, default=18, help="ResNet depth")
    parser.add_argument("--width", type=int, default=1, help="ResNet width multiplier")
    parser.add_argument("--base-width", type=int, default=16, help="ResNet stem/first-stage filters")
    parser.add_argument(
        "--cifar-stem",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="3x3 stem without max-pool (default: when --size <= 64)",
    )
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model on both sides")
    parser.add_argument("--distinct-batches", type=int, default=4, help="different pre-made batches cycled")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch's default; 1 is steadier when shared)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    return parser.parse_args()


def describe(args: argparse.Namespace, config: Config, mode: str) -> str:
    """One line saying what is measured where."""
    encoder = config.tables["encoder"]
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    precision = args.precision
    if args.precision == "bf16" and args.device == "cpu":
        precision += " (autocast is CUDA-only: fp32 here)"
    extras = "".join(
        text for flag, text in ((args.channels_last, ", channels_last"), (args.compile, ", compiled")) if flag
    )
    return (
        f"{args.device} ({where}), torch {torch.__version__}; resnet{encoder['depth']} "
        f"x{encoder['width_multiplier']}, base_width {encoder['base_width']}, "
        f"cifar_stem {encoder['cifar_stem']}; {args.size} px, batch {args.batch} x 2 views, {precision}"
        f"{extras}; {args.warmup} warm-up + {args.steps} timed steps, {args.repeats} repeats, {mode} mode"
    )


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available to this torch")
    mode = args.mode if args.mode != "auto" else ("paired" if args.device == "cpu" else "separate")
    config = Config(
        device=args.device,
        batch=args.batch,
        warmup=args.warmup,
        steps=args.steps,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        tables=component_tables(args),
    )
    batches = make_batches(
        min(args.distinct_batches, config.total), args.batch, args.size, pin=args.device == "cuda"
    )
    print(describe(args, config, mode), flush=True)
    results: list[Repeat] = []
    for index in range(args.repeats):
        results.append(measure(config, batches, mode, index))
        print(repeat_line(index, results[-1]), flush=True)
    median = statistics.median(r.ratio for r in results)
    loss_gap = max(abs(r.framework.last_loss - r.baseline.last_loss) for r in results)
    print(f"largest last-loss difference framework vs baseline: {loss_gap:.3g}")
    print(f"ratio framework/baseline (median of {args.repeats}): {median:.3f} (target >= 0.97)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "setup": describe(args, config, mode),
            "mode": mode,
            "repeats": [
                {
                    "ratio": r.ratio,
                    "order": r.order,
                    "framework": r.framework.as_record(),
                    "baseline": r.baseline.as_record(),
                }
                for r in results
            ],
            "median_ratio": median,
            "max_last_loss_difference": loss_gap,
        }
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
