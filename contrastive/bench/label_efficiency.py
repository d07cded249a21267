"""Label efficiency: SimCLRv2's few-label effect, measured through the framework's own stages.

The protocol runs on any spec with ``[pretrain]``, ``[finetune]`` and ``[distill]`` tables and
held-out ``finetune.eval_dataset`` / ``distill.eval_dataset`` splits (docs/label-efficiency.md).
For every seed ``s`` the contrastive pretraining runs once (``experiment.seed = s``) and serves
every label setting: a class-balanced draw, seeded with ``s``, of N labels per class or of a share
P of each class from the spec's labelled training set (``finetune.dataset``), drawn by the
dataset itself (:class:`contrastive.interfaces.LabelledSubsets`). Five arms share the encoder
architecture and the evaluation (top-1 on ``finetune.eval_dataset``; the student on
``distill.eval_dataset``):

* ``supervised``: ``finetune.init = "scratch"``, the pretraining encoder and normalization tables
  trained on the labelled subset only, then the spec's ``[bench.supervised] set`` overrides (its
  own tuning; without them the spec's fine-tuning settings, an untuned baseline);
* ``linear``: the standard SSL linear evaluation (:mod:`contrastive.linear_eval`) of the
  pretrained encoder's output (``from_layer = 0``, the pretraining's center-crop view), the probe
  trained on the labelled subset the fine-tuning arms train on;
* ``finetune_head1``: fine-tuned from projection-head layer 1 of the pretrained network (SimCLRv2);
* ``finetune_encoder``: the same, from the encoder output (``from_layer = 0``);
* ``distill``: a same-size student trained on the unlabelled images with ``finetune_head1`` as
  the teacher (self-distillation).

Every arm but ``linear`` is an ordinary run of the spec through :func:`contrastive.runner.run`,
with ``--set`` style overrides (the subset as ``finetune.dataset={...}``), in its own run directory
under ``OUT/seed<s>/`` (``labels<n>/<arm>`` or ``fraction<p>/<arm>``); rerunning skips finished
arms. A fine-tuning batch larger than the subset is cut to the subset's size. The ``linear`` arm
writes ``linear_eval.json`` into its folder, with the inputs it was computed from; a rerun reuses
it when they are unchanged.

Without a spec the protocol is the digits one (README "Label efficiency"): the digits shards with
their fixed 500-image test split, 1 label per class with ``specs/digits_1pct.toml`` and 13 with
``specs/digits_10pct.toml`` (the supervised arm's tuned settings are in their ``[bench.supervised]``
tables).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from contrastive import atomic
from contrastive.bench.trials import (
    GROUPS,
    NO_TRIAL,
    Axis,
    GridError,
    Trial,
    choose,
    combine,
    parse_axis,
    trials,
)
from contrastive.bench.validation import class_sizes, held_out, run_val_top1
from contrastive.data.subsets import fraction_count
from contrastive.engine import Reporter
from contrastive.errors import PluginError, Problem, RunDirectoryClash, RunError, SpecError
from contrastive.interfaces import LabelledSubsets, labelled_subset
from contrastive.linear_eval import DEFAULT_L2, DEFAULT_MAX_ITER, EvalRequest, evaluation_record
from contrastive.progress import Progress, tracked
from contrastive.registry import Registry
from contrastive.runner import run
from contrastive.spec.loader import LoadedSpec, load, parse_override, to_dict
from contrastive.spec.structure import ComponentSpec
from contrastive.spec.toml_writer import dumps_value
from contrastive.stages.results import FINAL

log = logging.getLogger(__name__)

ARMS = ("supervised", "linear", "finetune_head1", "finetune_encoder", "distill")
#: The arm measured by linear evaluation of the pretrained encoder (no training run).
LINEAR_ARM = "linear"
#: The linear arm's record in its folder: the evaluation and the ``inputs`` it was computed from.
LINEAR_FILE = "linear_eval.json"
#: The linear arm's probe scored on the validation split, beside :data:`LINEAR_FILE`.
LINEAR_VAL_FILE = "linear_val.json"
#: Labels per class of the digits protocol (the one run without a spec).
LABELS_PER_CLASS = (1, 13)
#: Labels per class when a spec is given and no label setting is.
DEFAULT_LABELS_PER_CLASS = (1, 10)
#: What the digits protocol evaluates on (the table's first line).
DIGITS_TEST_SET = "the 500 held-out digits"
RESULTS_FILE = "label_efficiency.json"
TABLE_FILE = "label_efficiency.md"
CHART_FILE = "label_efficiency.png"
#: The key of the supervised arm's own overrides in a spec.
SUPERVISED_KEY = "bench.supervised.set"

#: Runtime of the fine-tuning arms: an epoch over 10 or 130 images is one step, and starting a
#: data-loader worker for each one took longer than the step (runtime never changes the maths).
FINETUNE_RUNTIME = ("runtime.num_workers=0",)

#: Overrides that shrink the protocol to seconds (a smoke run; the numbers mean nothing).
QUICK_OVERRIDES = (
    "runtime.device=cpu",
    "runtime.num_workers=0",
    "runtime.checkpoint_every=2",
    "pretrain.max_steps=2",
    "pretrain.batch_size=32",
    "pretrain.monitor_every=1000",
    "pretrain.encoder.base_width=4",
    "pretrain.augmentation.size=8",
    "pretrain.eval_augmentation.size=8",
    "finetune.max_steps=2",
    "finetune.augmentation.size=8",
    "finetune.eval_augmentation.size=8",
    "distill.max_steps=2",
    "distill.batch_size=32",
    "distill.encoder.base_width=4",
    "distill.augmentation.size=8",
    "distill.eval_augmentation.size=8",
)


@attrs.frozen
class Labels:
    """One label setting: ``per_class`` labels of every class, or the share ``fraction`` of each.

    Attributes:
        per_class: Labelled images per class (at least 1), or None.
        fraction: Share of every class in (0, 1], or None (exactly one of the two is given).
    """

    per_class: int | None = None
    fraction: float | None = None

    def __attrs_post_init__(self) -> None:
        if (self.per_class is None) == (self.fraction is None):
            raise ValueError("a label setting is exactly one of per_class and fraction")
        if self.per_class is not None and self.per_class < 1:
            raise ValueError(f"labels per class must be at least 1, got {self.per_class}")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"a fraction of labels must be in (0, 1], got {self.fraction}")

    @property
    def heading(self) -> str:
        """Column heading: ``1 label/class``, ``10 labels/class`` or ``1% labels``."""
        if self.per_class is not None:
            return f"{self.per_class} label{'s' if self.per_class > 1 else ''}/class"
        assert self.fraction is not None
        return f"{100 * self.fraction:g}% labels"

    @property
    def folder(self) -> str:
        """Folder of the setting's arms under ``OUT/seed<s>/``: ``labels<n>`` or ``fraction<p>``."""
        return f"labels{self.per_class}" if self.per_class is not None else f"fraction{self.fraction!r}"

    def row(self, arm: str, seed: int, top1: float, *, trial: str = "", val_top1: float | None = None) -> Row:
        """The measurement of ``arm`` (at ``trial``) at this setting and ``seed``."""
        return Row(
            arm=arm,
            labels_per_class=self.per_class,
            seed=seed,
            top1=top1,
            fraction=self.fraction,
            trial=trial,
            val_top1=val_top1,
        )

    def drawn(self, sizes: Sequence[int]) -> list[int]:
        """Samples this setting draws of classes of ``sizes`` samples (all of a smaller class)."""
        if self.per_class is not None:
            return [min(size, self.per_class) for size in sizes]
        assert self.fraction is not None
        return [fraction_count(self.fraction, size) if size else 0 for size in sizes]

    def sort_key(self) -> tuple[int, float]:
        """Labels per class first (ascending), then fractions (ascending)."""
        if self.per_class is not None:
            return (0, float(self.per_class))
        assert self.fraction is not None
        return (1, self.fraction)


@attrs.frozen
class Row:
    """One measurement: an arm's test top-1 for one label setting and seed.

    Attributes:
        arm: One of :data:`ARMS`.
        labels_per_class: Labelled images per class (None for a fraction).
        seed: Experiment and subset seed.
        top1: Test top-1 accuracy as a fraction in [0, 1].
        fraction: Share of every class that was labelled (None for labels per class).
        trial: The grid trial (:class:`contrastive.bench.trials.Trial` name; "" without a grid).
        val_top1: Validation top-1, on which settings are chosen (None without a validation split).
    """

    arm: str
    labels_per_class: int | None
    seed: int
    top1: float
    fraction: float | None = None
    trial: str = ""
    val_top1: float | None = None

    @property
    def labels(self) -> Labels:
        """The row's label setting."""
        return Labels(per_class=self.labels_per_class, fraction=self.fraction)


@attrs.frozen
class Protocol:
    """What to run and where.

    Attributes:
        out: Output directory (run directories, JSON, markdown, chart).
        seeds: Seeds to run, in order.
        specs: Each label setting to the spec its arms run (the smallest setting's spec pretrains).
        overrides: Extra ``--set`` overrides applied to every run, last (e.g. :data:`QUICK_OVERRIDES`).
        test_set: What top-1 is measured on, for the table's first line.
        title: What the chart's title says the protocol ran on.
        val_per_class: Validation samples per class held out of the labelled pool for every seed
            (0: the spec's ``finetune.val_dataset``, or no validation split).
        grid: ``[GROUP:]KEY=V1,V2`` axes added to the specs' ``[bench.grid]`` ones (``--grid``).
    """

    out: Path
    seeds: tuple[int, ...]
    specs: Mapping[Labels, Path]
    overrides: tuple[str, ...] = ()
    test_set: str = DIGITS_TEST_SET
    title: str = "digits"
    val_per_class: int = 0
    grid: tuple[str, ...] = ()


@attrs.frozen
class _Setting:
    """One label setting's spec, checked before anything runs.

    Attributes:
        spec: The spec file.
        loaded: The spec with the protocol's overrides.
        supervised: The supervised arm's overrides (scratch network, then ``bench.supervised.set``).
        tuned: Whether the spec tunes the supervised arm (a non-empty ``bench.supervised.set``).
        grids: Each group of :data:`contrastive.bench.trials.GROUPS` to its trials (one empty
            trial without a grid).
    """

    spec: Path
    loaded: LoadedSpec
    supervised: tuple[str, ...]
    tuned: bool
    grids: Mapping[str, tuple[Trial, ...]] = attrs.field(factory=dict)

    def trials(self, group: str) -> tuple[Trial, ...]:
        """The group's trials (one empty trial without a grid)."""
        return self.grids.get(group, (Trial(),))


def default_specs() -> dict[int, Path]:
    """The packaged digits specs ``digits_1pct`` and ``digits_10pct`` (installed with the package)."""
    from contrastive.spec.packaged import packaged_spec

    return {1: packaged_spec("digits_1pct"), 13: packaged_spec("digits_10pct")}


def digits_protocol(out: Path, seeds: Sequence[int], overrides: Sequence[str] = ()) -> Protocol:
    """The digits protocol: 1 and 13 labels per class with their packaged specs."""
    specs = {Labels(per_class=labels): path for labels, path in default_specs().items()}
    return Protocol(out=out, seeds=tuple(seeds), specs=specs, overrides=tuple(overrides))


def spec_protocol(
    spec: Path, labels: Sequence[Labels], out: Path, seeds: Sequence[int], overrides: Sequence[str] = ()
) -> Protocol:
    """The protocol on one spec for every label setting in ``labels``.

    Raises:
        SpecError: The spec is invalid, or lacks what the protocol needs (:func:`check_spec`).
        DataError: Its evaluation split cannot be opened.
    """
    loaded = load(spec, overrides)
    check_spec(loaded)
    finetune = loaded.spec.finetune
    assert finetune is not None and finetune.eval_dataset is not None
    evaluated = _build_source(loaded, finetune.eval_dataset)
    test_set = (
        f"the {evaluated.num_samples} held-out images of finetune.eval_dataset ({finetune.eval_dataset.name})"
    )
    return Protocol(
        out=out,
        seeds=tuple(seeds),
        specs=dict.fromkeys(labels, spec),
        overrides=tuple(overrides),
        test_set=test_set,
        title=loaded.spec.experiment.name,
    )


#: Stages whose runs read the spec's own training set with its own runtime (the fine-tuning arms
#: read a drawn subset with FINETUNE_RUNTIME and a batch cut to its size).
LAUNCH_CHECKED = ("pretrain", "distill")


def launch_checks(protocol: Protocol, overrides: Sequence[str]) -> None:
    """What every pretraining and distillation run of the protocol checks before it starts, on the
    protocol's own settings: the batch sizes the data can fill and a shard for every data-loader
    worker. ``--quick`` runs these on the unshrunk spec (``overrides``: the user's, not
    :data:`QUICK_OVERRIDES`), so a smoke run stops where the real protocol would.

    Raises:
        SpecError: A batch the ranks cannot share.
        DataError: A split smaller than one batch, too few shards for the workers (the message
            names ``--maxcount``), or data that cannot be opened.
    """
    from contrastive.errors import DataError
    from contrastive.runner import preflight

    for path in sorted(set(protocol.specs.values())):
        loaded = load(path, overrides)
        stages = [stage for stage in LAUNCH_CHECKED if getattr(loaded.spec, stage) is not None]
        try:
            preflight(loaded, stages, 1)
        except DataError as exc:
            raise DataError(
                f"{path}: {exc} (the protocol's own settings; --quick only shrinks its runs)"
            ) from exc


def check_spec(loaded: LoadedSpec) -> None:
    """What the protocol needs of a spec: every stage, held-out splits, a dataset that draws subsets.

    Raises:
        SpecError: Every missing piece at once.
    """
    spec, source = loaded.spec, str(loaded.path)
    problems = [
        Problem(source, stage, f"the protocol needs a [{stage}] table")
        for stage in ("pretrain", "finetune", "distill")
        if getattr(spec, stage) is None
    ]
    for stage in ("finetune", "distill"):
        table = getattr(spec, stage)
        if table is not None and table.eval_dataset is None:
            message = "the protocol measures top-1 on this held-out labelled split: add one"
            problems.append(Problem(source, f"{stage}.eval_dataset", message))
    if spec.finetune is not None and not isinstance(spec.finetune.dataset.options, LabelledSubsets):
        problems.append(
            Problem(
                source,
                "finetune.dataset",
                f"the {spec.finetune.dataset.name!r} dataset cannot draw labelled subsets (its options "
                "have no labelled_subset(); see contrastive.interfaces.LabelledSubsets): give the "
                "labelled training set as a dataset that can, e.g. webdataset",
            )
        )
    if problems:
        raise SpecError(problems)


def run_protocol(
    protocol: Protocol, reporter: Reporter | None = None, progress: Progress | None = None
) -> list[Row]:
    """Run (or resume) every trial of every arm of every seed; write the JSON, markdown and chart.

    Every spec, grid trial and the supervised arm's overrides are checked, and every subset and
    validation split drawn, before anything runs. The distillation arm runs last: its teacher is
    the finetune_head1 trial chosen on validation (over every seed) for its pretraining.

    Args:
        protocol: What to run and where.
        reporter: Told of every training run's steps.
        progress: Counts the runs (every trial of every arm and pretraining, for every seed),
            advanced as each finishes (a finished one a rerun skips counts too); the linear
            arm's feature passes and fit nest inside it. Default: nothing.

    Returns:
        One row per (seed, label setting, arm, trial).

    Raises:
        SpecError: A spec lacks what the protocol needs, a grid or ``bench.supervised.set`` is
            invalid, or a grid has no validation split to choose on.
    """
    settings = {labels: _setting(protocol, spec) for labels, spec in protocol.specs.items()}
    order = sorted(protocol.specs, key=Labels.sort_key)
    first = settings[order[0]]
    val_set = _describe_val(protocol, first.loaded)
    _check_grids(protocol, settings, val_set is not None)
    # Every subset is drawn before the first run, so one that cannot be drawn stops the protocol
    # before any training.
    subsets = {
        (seed, labels): subset_overrides(settings[labels].loaded, labels, seed)
        for seed in protocol.seeds
        for labels in order
    }
    vals = {seed: _val_split(protocol, first.loaded, order, seed) for seed in protocol.seeds}
    notes = _notes(settings)
    rows: list[Row] = []
    seconds = 0.0
    pretrainings = first.trials("pretrain")
    per_seed = len(pretrainings) + sum(
        len(settings[labels].trials("supervised"))
        + len(pretrainings) * (2 + 2 * len(settings[labels].trials("finetune")))
        for labels in order
    )
    ctx = _Run(protocol, reporter, progress, vals, val_set)
    with tracked(progress, len(protocol.seeds) * per_seed, "label-efficiency runs") as advance:
        ctx.advance = advance
        finals: dict[tuple[int, str], Path] = {}
        for seed in protocol.seeds:
            for pretraining in pretrainings:
                finals[seed, pretraining.name], spent = _pretrain(protocol, seed, reporter, pretraining)
                advance(1)
                seconds += spent
            for labels in order:
                arm_rows, spent = _fraction(
                    ctx, settings[labels], seed, labels, subsets[seed, labels], finals, pretrainings
                )
                rows.extend(arm_rows)
                seconds += spent
            _write(protocol, rows, seconds, notes, chart=False, val_set=val_set)
        for labels in order:
            arm_rows, spent = _distill_arms(ctx, settings[labels], labels, rows, pretrainings)
            rows.extend(arm_rows)
            seconds += spent
    rows.sort(key=lambda r: (protocol.seeds.index(r.seed), r.labels.sort_key(), ARMS.index(r.arm)))
    _write(protocol, rows, seconds, notes, chart=True, val_set=val_set)
    return rows


@attrs.define
class _Run:
    """What every arm of a protocol run shares."""

    protocol: Protocol
    reporter: Reporter | None
    progress: Progress | None
    vals: Mapping[int, ComponentSpec | None]
    val_set: str | None
    advance: Any = None

    def step(self) -> None:
        """One run finished (or was skipped as finished)."""
        if self.advance is not None:
            self.advance(1)


def _val_split(
    protocol: Protocol, loaded: LoadedSpec, order: Sequence[Labels], seed: int
) -> ComponentSpec | None:
    """The seed's validation split: held out (``--val-per-class``), the spec's, or None."""
    finetune = loaded.spec.finetune
    assert finetune is not None
    if protocol.val_per_class > 0:
        if finetune.val_dataset is not None:
            message = "the spec names a validation split and --val-per-class holds one out: choose one"
            raise SpecError([Problem(str(loaded.path), "finetune.val_dataset", message)])
        sizes = class_sizes(loaded)
        drawn = [] if sizes is None else [labels.drawn(sizes) for labels in order]
        return held_out(loaded, protocol.val_per_class, seed, drawn)
    return finetune.val_dataset


def _describe_val(protocol: Protocol, loaded: LoadedSpec) -> str | None:
    """How the table names the validation split (None without one)."""
    finetune = loaded.spec.finetune
    assert finetune is not None
    if protocol.val_per_class > 0:
        return (
            f"{protocol.val_per_class} images per class held out of finetune.dataset for every seed, "
            "disjoint from its labelled subsets"
        )
    if finetune.val_dataset is not None:
        return f"finetune.val_dataset ({finetune.val_dataset.name})"
    return None


def _check_grids(protocol: Protocol, settings: Mapping[Labels, _Setting], has_val: bool) -> None:
    """A grid needs a validation split; every trial's spec must load."""
    for setting in settings.values():
        source = str(setting.loaded.path)
        gridded = [group for group in GROUPS if len(setting.trials(group)) > 1]
        if gridded and not has_val:
            message = (
                f"the {', '.join(gridded)} grid needs a validation split to choose on (--val-per-class N "
                "or finetune.val_dataset); settings are never chosen on the test split"
            )
            raise SpecError([Problem(source, "bench.grid", message)])
        runs = [(p.overrides, "pretrain") for p in setting.trials("pretrain")]
        runs += [(f.overrides, "finetune") for f in setting.trials("finetune")]
        runs += [((*setting.supervised, *t.overrides), "supervised") for t in setting.trials("supervised")]
        for overrides, group in runs:
            try:
                load(setting.spec, [*protocol.overrides, *overrides])
            except SpecError as exc:
                raise SpecError(
                    [
                        Problem(source, f"bench.grid.{group}", f"a trial's spec is invalid: {problem}")
                        for problem in exc.problems
                    ]
                ) from exc


def _write(
    protocol: Protocol,
    rows: Sequence[Row],
    seconds: float,
    notes: Sequence[str],
    *,
    chart: bool,
    val_set: str | None = None,
) -> None:
    write_outputs(
        protocol.out,
        rows,
        train_seconds=seconds,
        chart=chart,
        test_set=protocol.test_set,
        title=protocol.title,
        notes=notes,
        val_set=val_set,
        pretrainings=pretraining_signals(protocol),
    )


def _notes(settings: Mapping[Labels, _Setting]) -> tuple[str, ...]:
    untuned = sorted({str(s.spec) for s in settings.values() if not s.tuned})
    if not untuned:
        return ()
    return (
        f"supervised: the fine-tuning settings of {', '.join(untuned)} unchanged (no [bench.supervised] "
        "set): an untuned baseline.",
    )


def _setting(protocol: Protocol, spec: Path) -> _Setting:
    """Load and check one spec, and check its supervised overrides by loading them too."""
    loaded = load(spec, protocol.overrides)
    check_spec(loaded)
    own = _bench_set(loaded)
    supervised = (*_scratch_overrides(loaded), *own)
    try:
        load(spec, [*supervised, *protocol.overrides])
    except SpecError as exc:
        raise SpecError(
            [
                Problem(
                    loaded.source_of(SUPERVISED_KEY),
                    SUPERVISED_KEY,
                    f"the supervised arm's spec is invalid: {problem}",
                )
                for problem in exc.problems
            ]
        ) from exc
    grids = _grids(loaded, protocol.grid)
    return _Setting(spec=spec, loaded=loaded, supervised=supervised, tuned=bool(own), grids=grids)


def _grids(loaded: LoadedSpec, extra: Sequence[str]) -> dict[str, tuple[Trial, ...]]:
    """Each group's trials: the spec's ``[bench.grid.<group>] axes``, then ``extra`` (``--grid``).

    Raises:
        SpecError: An axis that cannot be parsed or sets a key its group does not.
    """
    bench = loaded.spec.bench
    axes: dict[str, list[Axis]] = {group: [] for group in GROUPS}
    problems = []
    written: list[tuple[str, str, str | None]] = [
        (f"bench.grid.{group}.axes", text, group)
        for group in GROUPS
        for text in (getattr(bench.grid, group).axes if bench is not None else ())
    ]
    written += [("--grid", text, None) for text in extra]
    for where, text, group in written:
        try:
            found, axis = parse_axis(text, group)
        except GridError as exc:
            problems.append(Problem(str(loaded.path), where, str(exc)))
            continue
        axes[found].append(axis)
    if problems:
        raise SpecError(problems)
    return {group: tuple(trials(combine(found))) for group, found in axes.items()}


def _bench_set(loaded: LoadedSpec) -> tuple[str, ...]:
    """The spec's ``bench.supervised.set``, each a ``finetune.*`` override other than the dataset.

    Raises:
        SpecError: A string that is no ``KEY=VALUE`` override, or sets another key.
    """
    bench = loaded.spec.bench
    strings = bench.supervised.set if bench is not None else ()
    problems = []
    for text in strings:
        try:
            key, _ = parse_override(text)
        except ValueError as exc:
            problems.append(Problem(loaded.source_of(SUPERVISED_KEY), SUPERVISED_KEY, f"{text!r}: {exc}"))
            continue
        if not key.startswith("finetune."):
            message = f"{text!r} sets {key}; the supervised arm's overrides set keys under finetune"
            problems.append(Problem(loaded.source_of(SUPERVISED_KEY), SUPERVISED_KEY, message))
        elif key == "finetune.dataset" or key.startswith("finetune.dataset."):
            message = (
                f"{text!r} sets the labelled subset, which the protocol draws "
                "(--labels-per-class, --fraction)"
            )
            problems.append(Problem(loaded.source_of(SUPERVISED_KEY), SUPERVISED_KEY, message))
    if problems:
        raise SpecError(problems)
    return tuple(strings)


def _run_one(
    spec: Path, overrides: Sequence[str], run_dir: Path, stage: str, reporter: Reporter | None
) -> dict[str, Any]:
    loaded = load(spec, overrides)
    # The [bench] table is the protocol's, not the run's: left out, every run directory records
    # the same spec as a run of this spec made before the table existed.
    # So is finetune.val_dataset (the protocol's validation split, which no stage reads).
    finetune = loaded.spec.finetune
    if finetune is not None and finetune.val_dataset is not None:
        finetune = attrs.evolve(finetune, val_dataset=None)
    loaded = attrs.evolve(loaded, spec=attrs.evolve(loaded.spec, bench=None, finetune=finetune))
    try:
        outcome = run(loaded, run_dir=run_dir, stages=(stage,), reporter=reporter)
    except RunDirectoryClash as exc:
        raise RunError(
            f"{exc.directory} holds a run of this protocol with other settings ({exc.difference}); "
            "choose another --out (or move that folder away) to run the protocol as it is now"
        ) from exc
    return outcome.results[stage]


def _seeded(protocol: Protocol, seed: int, name: str) -> list[str]:
    return [f"experiment.seed={seed}", f'experiment.name="{name}"']


def _pretrain(
    protocol: Protocol, seed: int, reporter: Reporter | None, trial: Trial = NO_TRIAL
) -> tuple[Path, float]:
    """One pretraining of the seed (shared by every label setting): its ``final.pt`` and seconds."""
    spec = protocol.specs[min(protocol.specs, key=Labels.sort_key)]
    run_dir = protocol.out / f"seed{seed}" / _folder("pretrain", trial.name)
    name = f"label_efficiency_seed{seed}_{_folder('pretrain', trial.name)}"
    overrides = [*_seeded(protocol, seed, name), *protocol.overrides, *trial.overrides]
    log.info("seed %d: pretrain in %s", seed, run_dir)
    result = _run_one(spec, overrides, run_dir, "pretrain", reporter)
    return run_dir / "pretrain" / FINAL, float(result.get("wall_seconds", 0.0))


def _folder(arm: str, trial: str) -> str:
    """An arm's (or the pretraining's) folder: ``arm`` without a grid, ``arm@trial`` with one."""
    return f"{arm}@{trial}" if trial else arm


def arm_overrides(
    protocol: Protocol,
    seed: int,
    labels: Labels,
    pretrain_final: Path,
    *,
    pretraining: Trial = NO_TRIAL,
    finetuning: Trial = NO_TRIAL,
    supervised: Trial = NO_TRIAL,
) -> dict[str, tuple[str, list[str]]]:
    """Each arm's stage and ``--set`` overrides for one seed, label setting and trial (in order).

    Draws the labelled subset (through the dataset's :class:`~contrastive.interfaces.LabelledSubsets`).
    The distillation arm's teacher is the finetune_head1 run of the same trials.

    Raises:
        SpecError: The spec lacks what the protocol needs (:func:`check_spec`).
        DataError: The subset cannot be drawn.
    """
    setting = _setting(protocol, protocol.specs[labels])
    subset = subset_overrides(setting.loaded, labels, seed)
    arms = _finetune_overrides(protocol, seed, labels, subset, pretrain_final, pretraining + finetuning)
    arms["supervised"] = _supervised_overrides(protocol, setting, seed, labels, subset, supervised)
    head1 = _arm_dir(protocol, seed, labels, "finetune_head1", (pretraining + finetuning).name)
    arms["distill"] = _distill_overrides(protocol, seed, labels, head1, pretraining + finetuning)
    return arms


def _arm_dir(protocol: Protocol, seed: int, labels: Labels, arm: str, trial: str) -> Path:
    return protocol.out / f"seed{seed}" / labels.folder / _folder(arm, trial)


def _run_name(seed: int, labels: Labels, arm: str, trial: str) -> str:
    return f"label_efficiency_seed{seed}_{labels.folder}_{_folder(arm, trial)}"


def _finetune_overrides(
    protocol: Protocol,
    seed: int,
    labels: Labels,
    subset_set: Sequence[str],
    pretrain_final: Path,
    trial: Trial,
) -> dict[str, tuple[str, list[str]]]:
    """The two fine-tuning arms of one pretraining and fine-tuning trial."""
    subset = [*FINETUNE_RUNTIME, *subset_set]
    arms: dict[str, tuple[str, list[str]]] = {}
    for arm, layer in (("finetune_head1", 1), ("finetune_encoder", 0)):
        overrides = [*subset, _set("finetune.init", str(pretrain_final)), f"finetune.from_layer={layer}"]
        name = _run_name(seed, labels, arm, trial.name)
        arms[arm] = (
            "finetune",
            [*overrides, *_seeded(protocol, seed, name), *protocol.overrides, *trial.overrides],
        )
    return arms


def _supervised_overrides(
    protocol: Protocol, setting: _Setting, seed: int, labels: Labels, subset_set: Sequence[str], trial: Trial
) -> tuple[str, list[str]]:
    name = _run_name(seed, labels, "supervised", trial.name)
    overrides = [*FINETUNE_RUNTIME, *subset_set, *setting.supervised]
    return "finetune", [*overrides, *_seeded(protocol, seed, name), *protocol.overrides, *trial.overrides]


def _distill_overrides(
    protocol: Protocol, seed: int, labels: Labels, teacher_dir: Path, trial: Trial
) -> tuple[str, list[str]]:
    """The distillation arm from ``teacher_dir`` (a finetune_head1 run of ``trial``)."""
    name = _run_name(seed, labels, "distill", trial.name)
    pretraining = [o for o in trial.overrides if o.startswith("pretrain.")]
    teacher = _set("distill.teacher", str(teacher_dir / "finetune" / FINAL))
    return "distill", [teacher, *_seeded(protocol, seed, name), *protocol.overrides, *pretraining]


def _fraction(
    ctx: _Run,
    setting: _Setting,
    seed: int,
    labels: Labels,
    subset: Sequence[str],
    finals: Mapping[tuple[int, str], Path],
    pretrainings: Sequence[Trial],
) -> tuple[list[Row], float]:
    """Every arm but distillation of one seed and label setting, every trial.

    The seconds are the training runs' (the linear arm's evaluation is not counted). Each run
    advances the progress by one; the linear arm's passes nest in it (without a progress, in the
    reporter when that is a :class:`~contrastive.progress.Progress`).
    """
    protocol = ctx.protocol
    rows: list[Row] = []
    seconds = 0.0
    for pretraining in pretrainings:
        final = finals[seed, pretraining.name]
        for finetuning in setting.trials("finetune"):
            trial = pretraining + finetuning
            arms = _finetune_overrides(protocol, seed, labels, subset, final, trial)
            for arm in ("finetune_head1", "finetune_encoder"):
                row, spent = _trained_arm(ctx, setting, seed, labels, arm, trial.name, arms[arm])
                rows.append(row)
                seconds += spent
        rows.append(_linear(ctx, setting, seed, labels, subset, final, pretraining))
    for trial in setting.trials("supervised"):
        overrides = _supervised_overrides(protocol, setting, seed, labels, subset, trial)
        row, spent = _trained_arm(ctx, setting, seed, labels, "supervised", trial.name, overrides)
        rows.append(row)
        seconds += spent
    rows.sort(key=lambda r: ARMS.index(r.arm))
    return rows, seconds


def _trained_arm(
    ctx: _Run,
    setting: _Setting,
    seed: int,
    labels: Labels,
    arm: str,
    trial: str,
    stage_overrides: tuple[str, list[str]],
) -> tuple[Row, float]:
    """One training run of an arm (skipped when finished), its test and validation top-1."""
    stage, overrides = stage_overrides
    run_dir = _arm_dir(ctx.protocol, seed, labels, arm, trial)
    log.info("seed %d, %s: %s", seed, labels.heading, _folder(arm, trial))
    result = _run_one(setting.spec, overrides, run_dir, stage, ctx.reporter)
    val = ctx.vals[seed]
    val_top1 = None
    if val is not None:
        device = _device(setting.loaded.spec.runtime.device)
        val_top1 = run_val_top1(run_dir / stage, val, setting.loaded.registry, device)
    ctx.step()
    row = labels.row(arm, seed, float(result["top1"]), trial=trial, val_top1=val_top1)
    return row, float(result.get("wall_seconds", 0.0))


def _linear(
    ctx: _Run,
    setting: _Setting,
    seed: int,
    labels: Labels,
    subset: Sequence[str],
    final: Path,
    pretraining: Trial,
) -> Row:
    """The linear arm of one pretraining: it probes the subset the fine-tuning arms trained on."""
    protocol, progress, reporter = ctx.protocol, ctx.progress, ctx.reporter
    overrides = _finetune_overrides(protocol, seed, labels, subset, final, pretraining)["finetune_encoder"][1]
    arm_spec = load(setting.spec, overrides)
    finetune = arm_spec.spec.finetune
    assert finetune is not None and finetune.eval_dataset is not None
    log.info("seed %d, %s: %s", seed, labels.heading, _folder(LINEAR_ARM, pretraining.name))
    shown = progress if progress is not None or not isinstance(reporter, Progress) else reporter
    folder = _arm_dir(protocol, seed, labels, LINEAR_ARM, pretraining.name)
    device = _device(arm_spec.spec.runtime.device)
    record = linear_arm(
        final,
        finetune.dataset,
        finetune.eval_dataset,
        folder,
        registry=arm_spec.registry,
        device=device,
        progress=shown,
    )
    val_top1 = None
    val = ctx.vals[seed]
    if val is not None:
        on_val = linear_arm(
            final,
            finetune.dataset,
            val,
            folder,
            registry=arm_spec.registry,
            device=device,
            progress=shown,
            file=LINEAR_VAL_FILE,
        )
        val_top1 = float(on_val["top1"])
    ctx.step()
    return labels.row(LINEAR_ARM, seed, float(record["top1"]), trial=pretraining.name, val_top1=val_top1)


def _distill_arms(
    ctx: _Run, setting: _Setting, labels: Labels, rows: Sequence[Row], pretrainings: Sequence[Trial]
) -> tuple[list[Row], float]:
    """The distillation arm of every seed and pretraining, from the finetune_head1 trial chosen on
    validation (over every seed) among that pretraining's fine-tuning trials."""
    protocol = ctx.protocol
    found: list[Row] = []
    seconds = 0.0
    for pretraining in pretrainings:
        candidates = [pretraining + finetuning for finetuning in setting.trials("finetune")]
        names = [trial.name for trial in candidates]
        head1 = [r for r in rows if r.arm == "finetune_head1" and r.labels == labels and r.trial in names]
        chosen = choose(head1, {"finetune_head1": names}).get("finetune_head1", names[0])
        teacher = candidates[names.index(chosen)]
        for seed in protocol.seeds:
            teacher_dir = _arm_dir(protocol, seed, labels, "finetune_head1", teacher.name)
            overrides = _distill_overrides(protocol, seed, labels, teacher_dir, teacher)
            row, spent = _trained_arm(ctx, setting, seed, labels, "distill", teacher.name, overrides)
            found.append(row)
            seconds += spent
    return found, seconds


def linear_arm(
    pretrain_final: Path,
    train: ComponentSpec,
    test: ComponentSpec,
    arm_dir: Path,
    *,
    registry: Registry,
    device: str = "cpu",
    progress: Progress | None = None,
    file: str = LINEAR_FILE,
) -> dict[str, Any]:
    """The linear arm: linear evaluation of a pretraining's encoder output, kept in ``arm_dir``.

    The probe is trained on ``train`` and tested on ``test`` (the view: the pretraining's
    center crop, as ``contrastive eval`` takes it). ``ARM_DIR/linear_eval.json`` holds the record
    and the ``inputs`` it was computed from (:func:`linear_inputs`); when they match, the record is
    returned as it is, otherwise the evaluation runs again and replaces it.

    Args:
        pretrain_final: The pretraining's ``final.pt`` (in its stage directory).
        train: The labelled training set of the probe (the setting's subset).
        test: The test set.
        arm_dir: The arm's folder (created when missing).
        registry: Where the datasets and the network's components are found.
        device: Where features are computed and the probe fitted.
        progress: Told of the feature passes and the fit.
        file: The record's name in ``arm_dir`` (:data:`LINEAR_VAL_FILE`: the probe scored on the
            validation split).

    Returns:
        The record (``top1``, ``top5``, ``train_samples``, ``test_samples``, ..., ``inputs``).

    Raises:
        RunError: No ``final.pt``, or no evaluation view recorded for the pretraining.
        DataError: A split is unlabelled or empty.
    """
    inputs = linear_inputs(pretrain_final, train, test)
    path = arm_dir / file
    previous = _read_record(path)
    if previous is not None and previous.get("inputs") == inputs:
        log.info("%s: made with the same inputs, kept", path)
        return previous
    if previous is not None:
        log.info("%s: made with other inputs, evaluating again", path)
    request = EvalRequest(
        stage_dir=pretrain_final.parent,
        train=train,
        test=test,
        from_layer=inputs["from_layer"],
        l2=inputs["l2"],
        max_iter=inputs["max_iter"],
        device=device,
    )
    record = {**evaluation_record(request, registry, progress), "inputs": inputs}
    arm_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, record)
    return record


def linear_inputs(pretrain_final: Path, train: ComponentSpec, test: ComponentSpec) -> dict[str, Any]:
    """What the linear arm's number depends on, as JSON data: the checkpoint (path and SHA-256),
    the feature layer, both dataset tables and the probe's settings (the device is left out)."""
    digest = hashlib.sha256()
    with pretrain_final.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    inputs = {
        "checkpoint": str(pretrain_final),
        "checkpoint_sha256": digest.hexdigest(),
        "from_layer": 0,
        "train": to_dict(train),
        "test": to_dict(test),
        "l2": DEFAULT_L2,
        "max_iter": DEFAULT_MAX_ITER,
    }
    result: dict[str, Any] = json.loads(json.dumps(inputs))  # as it reads back from the file
    return result


def _read_record(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when there is none (missing, unreadable, not an object)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _device(choice: str) -> str:
    """The evaluation device of a ``runtime.device`` choice (auto: cuda when available)."""
    import torch

    return "cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu"


def subset_overrides(loaded: LoadedSpec, labels: Labels, seed: int) -> list[str]:
    """``finetune.dataset={...}``: the spec's labelled set cut to ``labels`` by the dataset itself.

    A ``finetune.batch_size`` larger than the subset is cut to its size (one batch per epoch).

    Raises:
        SpecError: The dataset cannot draw subsets.
        PluginError: Its ``labelled_subset`` returned options of another class, or options that
            cannot be written as TOML.
        DataError: The subset cannot be drawn.
    """
    check_spec(loaded)
    finetune = loaded.spec.finetune
    assert finetune is not None
    chosen = finetune.dataset
    subset = labelled_subset(chosen.options, per_class=labels.per_class, fraction=labels.fraction, seed=seed)
    overrides = [_set("finetune.dataset", {"name": chosen.name, **_changed_options(subset)})]
    size = _build_source(loaded, attrs.evolve(chosen, options=subset)).num_samples
    if 0 < size < finetune.batch_size:
        log.info(
            "%s: %d labelled images, so finetune.batch_size %d -> %d",
            labels.heading,
            size,
            finetune.batch_size,
            size,
        )
        overrides.append(f"finetune.batch_size={size}")
    return overrides


def _changed_options(options: Any) -> dict[str, Any]:
    """The options that differ from their defaults (and the required ones), as TOML-ready data.

    Raises:
        PluginError: An option is None where its default is not (TOML cannot say None).
    """
    changed: dict[str, Any] = {}
    for field in attrs.fields(type(options)):
        value = getattr(options, field.name)
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory(options) if default.takes_self else default.factory()
        if default is not attrs.NOTHING and value == default:
            continue
        if value is None:
            raise PluginError(
                f"{type(options).__name__}.labelled_subset() left {field.name} None where its default is "
                f"{default!r}: a subset's options must be writable as TOML"
            )
        changed[field.name] = to_dict(value)
    return changed


def _build_source(loaded: LoadedSpec, chosen: ComponentSpec) -> Any:
    """The data source a dataset table builds (as the stages build it)."""
    return chosen.build(loaded.registry)


def _scratch_overrides(loaded: LoadedSpec) -> list[str]:
    """The supervised arm: a new encoder with the pretraining encoder's table, no head."""
    pretrain = _pretrain_table(loaded)
    return [
        'finetune.init="scratch"',
        "finetune.from_layer=0",
        _set("finetune.encoder", to_dict(pretrain.encoder)),
        _set("finetune.normalization", to_dict(pretrain.normalization)),
    ]


def _pretrain_table(loaded: LoadedSpec) -> Any:
    if loaded.spec.pretrain is None:
        raise SpecError([Problem(str(loaded.path), "pretrain", "the protocol needs a [pretrain] table")])
    return loaded.spec.pretrain


def _set(key: str, value: Any) -> str:
    """A ``--set`` string whose value is written as TOML (strings quoted, tables inline)."""
    return f"{key}={dumps_value(value)}"


def settings_of(rows: Sequence[Row]) -> list[Labels]:
    """The label settings of ``rows``, in column order."""
    return sorted({row.labels for row in rows}, key=Labels.sort_key)


def chosen_trials(rows: Sequence[Row]) -> dict[tuple[str, Labels], str]:
    """(arm, label setting) to the trial chosen on validation top-1, averaged over the seeds.

    Raises:
        GridError: An arm with several trials and no validation score.
    """
    chosen: dict[tuple[str, Labels], str] = {}
    for labels in settings_of(rows):
        found = choose([row for row in rows if row.labels == labels])
        chosen.update({(arm, labels): trial for arm, trial in found.items()})
    return chosen


def chosen_rows(rows: Sequence[Row]) -> list[Row]:
    """The rows of every arm's chosen trial (:func:`chosen_trials`): the reported measurements."""
    chosen = chosen_trials(rows)
    return [row for row in rows if chosen.get((row.arm, row.labels)) == row.trial]


def summarize(rows: Sequence[Row]) -> dict[tuple[str, Labels], tuple[float, float, int]]:
    """(arm, label setting) to (mean top-1, sample standard deviation, number of seeds)."""
    groups: dict[tuple[str, Labels], list[float]] = {}
    for row in rows:
        groups.setdefault((row.arm, row.labels), []).append(row.top1)
    return {
        key: (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))
        for key, values in groups.items()
    }


def markdown_table(
    rows: Sequence[Row],
    train_seconds: float | None = None,
    *,
    test_set: str = DIGITS_TEST_SET,
    notes: Sequence[str] = (),
    val_set: str | None = None,
    pretrainings: Sequence[Mapping[str, Any]] = (),
) -> str:
    """Mean ± standard deviation of test top-1 (%) per arm (rows) and label setting (columns).

    Every arm is shown at its trial chosen on validation (:func:`chosen_rows`). With a validation
    split or a grid, a table of the chosen settings and one of every trial follow.

    Args:
        rows: The measurements (every trial).
        train_seconds: Training time summed over every stage run, or None to leave it out.
        test_set: What top-1 was measured on (the first line says it).
        notes: Lines written under the table.
        val_set: What settings were chosen on (None: no validation split).
        pretrainings: The pretraining runs' label-free and kNN signals (:func:`pretraining_signals`).
    """
    reported = chosen_rows(rows)
    stats = summarize(reported)
    columns = settings_of(rows)
    arms = [arm for arm in ARMS if any(row.arm == arm for row in rows)]
    seeds = sorted({row.seed for row in rows})
    header = "| arm | " + " | ".join(labels.heading for labels in columns) + " |"
    over = (
        f"seed {seeds[0]} (one seed: no standard deviation)"
        if len(seeds) == 1
        else f"mean ± sample standard deviation over {len(seeds)} seeds ({', '.join(str(s) for s in seeds)})"
    )
    lines = [
        f"Test top-1 (%) on {test_set}, {over}.",
    ]
    gridded = any(row.trial for row in rows)
    if val_set is not None:
        lines.append(
            f"Every arm at the setting chosen on validation top-1 ({val_set}), averaged over the seeds; "
            "the test split took no part in the choice."
        )
    lines += ["", header, "|---|" + "---:|" * len(columns)]
    for arm in arms:
        cells = []
        for labels in columns:
            found = stats.get((arm, labels))
            cells.append("-" if found is None else _cell(*found))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", *notes]
    if gridded or val_set is not None:
        lines += ["", *_choice_lines(rows, arms, columns)]
    if any("rankme" in found or "knn_top1" in found for found in pretrainings):
        lines += ["", *_pretraining_lines(pretrainings)]
    if train_seconds is not None:
        lines += ["", f"Training time, summed over every stage run: {train_seconds / 60:.1f} min."]
    if gridded or val_set is not None:
        lines += ["", *_trial_lines(rows, arms, columns)]
    return "\n".join(lines) + "\n"


def _cell(mean: float, deviation: float, count: int) -> str:
    """``90.1 ± 1.2`` (percent); the mean alone for one seed, whose deviation is undefined."""
    return f"{100 * mean:.1f}" if count < 2 else f"{100 * mean:.1f} ± {100 * deviation:.1f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present and len(present) == len(values) else None


def _trial_counts(rows: Sequence[Row], arms: Sequence[str], columns: Sequence[Labels]) -> dict[str, int]:
    """Trials per arm (the most of any label setting)."""
    return {
        arm: max(len({r.trial for r in rows if r.arm == arm and r.labels == labels}) for labels in columns)
        for arm in arms
    }


def _choice_lines(rows: Sequence[Row], arms: Sequence[str], columns: Sequence[Labels]) -> list[str]:
    """The chosen setting of every arm and label setting, and the trial counts."""
    chosen = chosen_trials(rows)
    lines = [
        "Chosen setting per arm (validation top-1 %, mean over the seeds; `spec`: the spec's own settings):",
        "",
        "| arm | " + " | ".join(labels.heading for labels in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for arm in arms:
        cells = []
        for labels in columns:
            trial = chosen.get((arm, labels))
            if trial is None:
                cells.append("-")
                continue
            val = _mean([r.val_top1 for r in rows if (r.arm, r.labels, r.trial) == (arm, labels, trial)])
            cells.append(f"{trial or 'spec'} ({_percent(val)})")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    counts = _trial_counts(rows, arms, columns)
    lines += [
        "",
        "Trials per arm and label setting: " + ", ".join(f"{arm} {counts[arm]}" for arm in arms) + ".",
    ]
    simclr = max((counts[arm] for arm in ("finetune_head1", "finetune_encoder") if arm in counts), default=0)
    if "supervised" in counts and counts["supervised"] < simclr:
        lines.append(
            f"Unequal budget: the supervised arm had {counts['supervised']} trials, the fine-tuning arms "
            f"{simclr}; give [bench.grid.supervised] (or --grid supervised:...) as many."
        )
    return lines


def _trial_lines(rows: Sequence[Row], arms: Sequence[str], columns: Sequence[Labels]) -> list[str]:
    """Every trial's validation and test top-1 (mean over the seeds), the chosen ones marked."""
    chosen = chosen_trials(rows)
    lines = [
        "## Every trial",
        "",
        "Top-1 (%), mean over the seeds; * marks the trial chosen on validation.",
        "",
        "| arm | labels | trial | validation | test |",
        "|---|---|---|---:|---:|",
    ]
    for labels in columns:
        for arm in arms:
            names = list(dict.fromkeys(r.trial for r in rows if (r.arm, r.labels) == (arm, labels)))
            for trial in names:
                found = [r for r in rows if (r.arm, r.labels, r.trial) == (arm, labels, trial)]
                mark = " *" if chosen.get((arm, labels)) == trial else ""
                val, test = _mean([r.val_top1 for r in found]), _mean([r.top1 for r in found])
                cells = [arm, labels.heading, f"{trial or 'spec'}{mark}", _percent(val), _percent(test)]
                lines.append("| " + " | ".join(cells) + " |")
    return lines


def _pretraining_lines(pretrainings: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "Pretrainings (label-free RankMe of the encoder's features on a fixed batch, and the kNN "
        "monitor when the spec has one; the last monitor step):",
        "",
        "| seed | pretraining | steps | RankMe | kNN top-1 (%) |",
        "|---:|---|---:|---:|---:|",
    ]
    for found in pretrainings:
        rank = found.get("rankme")
        knn = found.get("knn_top1")
        lines.append(
            f"| {found['seed']} | {found['trial'] or 'spec'} | {found.get('step', '-')} | "
            f"{'-' if rank is None else f'{rank:.1f}'} | {_percent(knn)} |"
        )
    return lines


def pretraining_signals(protocol: Protocol) -> list[dict[str, Any]]:
    """Every finished pretraining's last RankMe and kNN monitor values (from its metrics.jsonl)."""
    found = []
    for seed in protocol.seeds:
        folder = protocol.out / f"seed{seed}"
        if not folder.is_dir():
            continue
        for run_dir in sorted(folder.glob("pretrain*")):
            if run_dir.name != "pretrain" and not run_dir.name.startswith("pretrain@"):
                continue
            trial = run_dir.name.partition("@")[2]
            signals: dict[str, Any] = {"seed": seed, "trial": trial}
            for record in _metric_records(run_dir / "pretrain" / "metrics.jsonl"):
                for key in ("rankme", "knn_top1"):
                    if isinstance(record.get(key), (int, float)):
                        signals[key] = float(record[key])
                        signals["step"] = record.get("step", signals.get("step"))
            found.append(signals)
    return found


def _metric_records(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _record(row: Row) -> dict[str, Any]:
    """A row as JSON data; ``fraction``, ``trial`` and ``val_top1`` only when it has them."""
    optional = {"fraction": None, "trial": "", "val_top1": None}
    return {
        key: value
        for key, value in attrs.asdict(row).items()
        if key not in optional or value != optional[key]
    }


def write_outputs(
    out: Path,
    rows: Sequence[Row],
    *,
    train_seconds: float | None,
    chart: bool,
    test_set: str = DIGITS_TEST_SET,
    title: str = "digits",
    notes: Sequence[str] = (),
    val_set: str | None = None,
    pretrainings: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Write ``label_efficiency.json`` (every trial), ``.md`` and (when ``chart``) the PNG chart
    (every arm at its chosen trial).

    A row's ``fraction``, ``trial`` and ``val_top1`` are written only when it has them, so a
    protocol without them writes the records it always did.
    """
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / RESULTS_FILE, json.dumps([_record(row) for row in rows], indent=2) + "\n")
    table = markdown_table(
        rows, train_seconds, test_set=test_set, notes=notes, val_set=val_set, pretrainings=pretrainings
    )
    atomic.write_text(out / TABLE_FILE, table)
    if chart:
        plot_chart(chosen_rows(rows), out / CHART_FILE, title=title)
    log.info("wrote %s and %s", out / RESULTS_FILE, out / TABLE_FILE)


def plot_chart(rows: Sequence[Row], path: Path, *, title: str = "digits") -> None:
    """Grouped bars: mean top-1 per arm for each label setting, standard deviation as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = summarize(rows)
    columns = settings_of(rows)
    arms = [arm for arm in ARMS if any(row.arm == arm for row in rows)]
    width = 0.8 / max(len(arms), 1)
    figure, axis = plt.subplots(figsize=(7, 4))
    for i, arm in enumerate(arms):
        means = [100 * stats.get((arm, labels), (math.nan, 0.0, 0))[0] for labels in columns]
        errors = [100 * stats.get((arm, labels), (0.0, 0.0, 0))[1] for labels in columns]
        positions = [f + (i - (len(arms) - 1) / 2) * width for f in range(len(columns))]
        axis.bar(positions, means, width, yerr=errors, capsize=3, label=arm)
    axis.set_xticks(range(len(columns)), [labels.heading for labels in columns])
    axis.set(ylabel="test top-1 (%)", ylim=(0, 100), title=f"Label efficiency on {title}")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(arms), frameon=False)
    figure.tight_layout()
    atomic.write_with(path, lambda handle: figure.savefig(handle, format="png", dpi=80))
    plt.close(figure)


def read_rows(path: Path) -> list[Row]:
    """Rows from a ``label_efficiency.json`` (records with or without ``fraction``)."""
    return [Row(**record) for record in json.loads(path.read_text())]
