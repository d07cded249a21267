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
from contrastive.engine import Reporter
from contrastive.errors import PluginError, Problem, RunDirectoryClash, RunError, SpecError
from contrastive.interfaces import LabelledSubsets
from contrastive.linear_eval import DEFAULT_L2, DEFAULT_MAX_ITER, EvalRequest, evaluation_record
from contrastive.progress import NullProgress, Progress, tracked
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

    def row(self, arm: str, seed: int, top1: float) -> Row:
        """The measurement of ``arm`` at this setting and ``seed``."""
        return Row(arm=arm, labels_per_class=self.per_class, seed=seed, top1=top1, fraction=self.fraction)

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
    """

    arm: str
    labels_per_class: int | None
    seed: int
    top1: float
    fraction: float | None = None

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
    """

    out: Path
    seeds: tuple[int, ...]
    specs: Mapping[Labels, Path]
    overrides: tuple[str, ...] = ()
    test_set: str = DIGITS_TEST_SET
    title: str = "digits"


@attrs.frozen
class _Setting:
    """One label setting's spec, checked before anything runs.

    Attributes:
        spec: The spec file.
        loaded: The spec with the protocol's overrides.
        supervised: The supervised arm's overrides (scratch network, then ``bench.supervised.set``).
        tuned: Whether the spec tunes the supervised arm (a non-empty ``bench.supervised.set``).
    """

    spec: Path
    loaded: LoadedSpec
    supervised: tuple[str, ...]
    tuned: bool


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
    """Run (or resume) every arm of every seed and write the JSON, markdown table and chart.

    Every spec and the supervised arm's overrides are checked before anything runs.

    Args:
        protocol: What to run and where.
        reporter: Told of every training run's steps.
        progress: Counts the runs: one task of ``seeds x settings x arms`` plus one pretraining per
            seed, advanced as each finishes (a finished one a rerun skips counts too); the linear
            arm's feature passes and fit nest inside it. Default: nothing.

    Returns:
        One row per (seed, label setting, arm), in that order.

    Raises:
        SpecError: A spec lacks what the protocol needs, or its ``bench.supervised.set`` is invalid.
    """
    settings = {labels: _setting(protocol, spec) for labels, spec in protocol.specs.items()}
    order = sorted(protocol.specs, key=Labels.sort_key)
    # Every subset is drawn before the first run, so one that cannot be drawn stops the protocol
    # before any training.
    subsets = {
        (seed, labels): subset_overrides(settings[labels].loaded, labels, seed)
        for seed in protocol.seeds
        for labels in order
    }
    notes = _notes(settings)
    rows: list[Row] = []
    seconds = 0.0
    runs = len(protocol.seeds) * (len(order) * len(ARMS) + 1)
    with tracked(progress, runs, "label-efficiency runs") as advance:
        for seed in protocol.seeds:
            pretrain_final, spent = _pretrain(protocol, seed, reporter)
            advance(1)
            seconds += spent
            for labels in order:
                arm_rows, spent = _fraction(
                    protocol,
                    settings[labels],
                    seed,
                    labels,
                    subsets[seed, labels],
                    pretrain_final,
                    reporter,
                    progress,
                )
                rows.extend(arm_rows)
                seconds += spent
            _write(protocol, rows, seconds, notes, chart=False)
    _write(protocol, rows, seconds, notes, chart=True)
    return rows


def _write(
    protocol: Protocol, rows: Sequence[Row], seconds: float, notes: Sequence[str], *, chart: bool
) -> None:
    write_outputs(
        protocol.out,
        rows,
        train_seconds=seconds,
        chart=chart,
        test_set=protocol.test_set,
        title=protocol.title,
        notes=notes,
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
                Problem(str(loaded.path), SUPERVISED_KEY, f"the supervised arm's spec is invalid: {problem}")
                for problem in exc.problems
            ]
        ) from exc
    return _Setting(spec=spec, loaded=loaded, supervised=supervised, tuned=bool(own))


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
            problems.append(Problem(str(loaded.path), SUPERVISED_KEY, f"{text!r}: {exc}"))
            continue
        if not key.startswith("finetune."):
            message = f"{text!r} sets {key}; the supervised arm's overrides set keys under finetune"
            problems.append(Problem(str(loaded.path), SUPERVISED_KEY, message))
        elif key == "finetune.dataset" or key.startswith("finetune.dataset."):
            message = (
                f"{text!r} sets the labelled subset, which the protocol draws "
                "(--labels-per-class, --fraction)"
            )
            problems.append(Problem(str(loaded.path), SUPERVISED_KEY, message))
    if problems:
        raise SpecError(problems)
    return tuple(strings)


def _run_one(
    spec: Path, overrides: Sequence[str], run_dir: Path, stage: str, reporter: Reporter | None
) -> dict[str, Any]:
    loaded = load(spec, overrides)
    # The [bench] table is the protocol's, not the run's: left out, every run directory records
    # the same spec as a run of this spec made before the table existed.
    loaded = attrs.evolve(loaded, spec=attrs.evolve(loaded.spec, bench=None))
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


def _pretrain(protocol: Protocol, seed: int, reporter: Reporter | None) -> tuple[Path, float]:
    """The seed's pretraining (shared by every label setting): its ``final.pt`` and training seconds."""
    spec = protocol.specs[min(protocol.specs, key=Labels.sort_key)]
    run_dir = protocol.out / f"seed{seed}" / "pretrain"
    overrides = [*_seeded(protocol, seed, f"label_efficiency_seed{seed}_pretrain"), *protocol.overrides]
    log.info("seed %d: pretrain in %s", seed, run_dir)
    result = _run_one(spec, overrides, run_dir, "pretrain", reporter)
    return run_dir / "pretrain" / FINAL, float(result.get("wall_seconds", 0.0))


def arm_overrides(
    protocol: Protocol, seed: int, labels: Labels, pretrain_final: Path
) -> dict[str, tuple[str, list[str]]]:
    """Each arm's stage and ``--set`` overrides for one seed and label setting (in the order applied).

    Draws the labelled subset (through the dataset's :class:`~contrastive.interfaces.LabelledSubsets`).

    Raises:
        SpecError: The spec lacks what the protocol needs (:func:`check_spec`).
        DataError: The subset cannot be drawn.
    """
    setting = _setting(protocol, protocol.specs[labels])
    subset = subset_overrides(setting.loaded, labels, seed)
    return _arm_overrides(protocol, setting, seed, labels, subset, pretrain_final)


def _arm_overrides(
    protocol: Protocol,
    setting: _Setting,
    seed: int,
    labels: Labels,
    subset_set: Sequence[str],
    pretrain_final: Path,
) -> dict[str, tuple[str, list[str]]]:
    base = protocol.out / f"seed{seed}" / labels.folder
    subset = [*FINETUNE_RUNTIME, *subset_set]
    arms: dict[str, tuple[str, list[str]]] = {
        "finetune_head1": (
            "finetune",
            [*subset, _set("finetune.init", str(pretrain_final)), "finetune.from_layer=1"],
        ),
        "finetune_encoder": (
            "finetune",
            [*subset, _set("finetune.init", str(pretrain_final)), "finetune.from_layer=0"],
        ),
        "supervised": ("finetune", [*subset, *setting.supervised]),
        "distill": ("distill", [_set("distill.teacher", str(base / "finetune_head1" / "finetune" / FINAL))]),
    }
    for arm, (_, overrides) in arms.items():
        name = f"label_efficiency_seed{seed}_{labels.folder}_{arm}"
        overrides.extend([*_seeded(protocol, seed, name), *protocol.overrides])
    return arms


def _fraction(
    protocol: Protocol,
    setting: _Setting,
    seed: int,
    labels: Labels,
    subset: Sequence[str],
    pretrain_final: Path,
    reporter: Reporter | None,
    progress: Progress | None = None,
) -> tuple[list[Row], float]:
    """The arms of one seed and label setting (``subset``: :func:`subset_overrides`).

    The seconds are the training runs' (the linear arm's evaluation is not counted). ``progress``
    is advanced by one as each arm finishes; the linear arm's passes nest in it (without it, in
    ``reporter`` when that is a :class:`~contrastive.progress.Progress`).
    """
    runs = progress if progress is not None else NullProgress()
    base = protocol.out / f"seed{seed}" / labels.folder
    arms = _arm_overrides(protocol, setting, seed, labels, subset, pretrain_final)
    rows: list[Row] = []
    seconds = 0.0
    for arm in ("finetune_head1", "finetune_encoder", "supervised", "distill"):
        stage, overrides = arms[arm]
        log.info("seed %d, %s: %s", seed, labels.heading, arm)
        result = _run_one(setting.spec, overrides, base / arm, stage, reporter)
        rows.append(labels.row(arm, seed, float(result["top1"])))
        seconds += float(result.get("wall_seconds", 0.0))
        runs.advance(1)
    # The linear arm probes the subset the fine-tuning arms trained on: their spec, loaded again.
    arm_spec = load(setting.spec, arms["finetune_encoder"][1])
    finetune = arm_spec.spec.finetune
    assert finetune is not None and finetune.eval_dataset is not None
    log.info("seed %d, %s: %s", seed, labels.heading, LINEAR_ARM)
    record = linear_arm(
        pretrain_final,
        finetune.dataset,
        finetune.eval_dataset,
        base / LINEAR_ARM,
        registry=arm_spec.registry,
        device=_device(arm_spec.spec.runtime.device),
        progress=progress if progress is not None or not isinstance(reporter, Progress) else reporter,
    )
    runs.advance(1)
    rows.append(labels.row(LINEAR_ARM, seed, float(record["top1"])))
    rows.sort(key=lambda r: ARMS.index(r.arm))
    return rows, seconds


def linear_arm(
    pretrain_final: Path,
    train: ComponentSpec,
    test: ComponentSpec,
    arm_dir: Path,
    *,
    registry: Registry,
    device: str = "cpu",
    progress: Progress | None = None,
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

    Returns:
        The record (``top1``, ``top5``, ``train_samples``, ``test_samples``, ..., ``inputs``).

    Raises:
        RunError: No ``final.pt``, or no evaluation view recorded for the pretraining.
        DataError: A split is unlabelled or empty.
    """
    inputs = linear_inputs(pretrain_final, train, test)
    path = arm_dir / LINEAR_FILE
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
    options = chosen.options
    assert isinstance(options, LabelledSubsets)
    subset = options.labelled_subset(per_class=labels.per_class, fraction=labels.fraction, seed=seed)
    if type(subset) is not type(options):
        kind = type(options).__name__
        raise PluginError(f"{kind}.labelled_subset() must return a {kind}, got {subset!r}")
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
) -> str:
    """Mean ± standard deviation of test top-1 (%) per arm (rows) and label setting (columns).

    Args:
        rows: The measurements.
        train_seconds: Training time summed over every stage run, or None to leave it out.
        test_set: What top-1 was measured on (the first line says it).
        notes: Lines written under the table.
    """
    stats = summarize(rows)
    columns = settings_of(rows)
    arms = [arm for arm in ARMS if any(row.arm == arm for row in rows)]
    seeds = sorted({row.seed for row in rows})
    header = "| arm | " + " | ".join(labels.heading for labels in columns) + " |"
    lines = [
        f"Test top-1 (%) on {test_set}, mean ± sample standard deviation over "
        f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(str(s) for s in seeds)}).",
        "",
        header,
        "|---|" + "---:|" * len(columns),
    ]
    for arm in arms:
        cells = []
        for labels in columns:
            found = stats.get((arm, labels))
            cells.append("-" if found is None else f"{100 * found[0]:.1f} ± {100 * found[1]:.1f}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", *notes]
    if train_seconds is not None:
        lines += ["", f"Training time, summed over every stage run: {train_seconds / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def write_outputs(
    out: Path,
    rows: Sequence[Row],
    *,
    train_seconds: float | None,
    chart: bool,
    test_set: str = DIGITS_TEST_SET,
    title: str = "digits",
    notes: Sequence[str] = (),
) -> None:
    """Write ``label_efficiency.json``, ``label_efficiency.md`` and (when ``chart``) the PNG chart.

    A row's ``fraction`` is written only when it has one, so a labels-per-class protocol writes the
    records it always did.
    """
    out.mkdir(parents=True, exist_ok=True)
    records = [
        {key: value for key, value in attrs.asdict(row).items() if key != "fraction" or value is not None}
        for row in rows
    ]
    atomic.write_text(out / RESULTS_FILE, json.dumps(records, indent=2) + "\n")
    atomic.write_text(out / TABLE_FILE, markdown_table(rows, train_seconds, test_set=test_set, notes=notes))
    if chart:
        plot_chart(rows, out / CHART_FILE, title=title)
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
