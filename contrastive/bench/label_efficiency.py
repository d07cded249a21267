"""Label efficiency in miniature: SimCLRv2's few-label effect on the embedded digits data.

The protocol (fixed; README "Label efficiency"): the digits shards with their fixed 500-image
test split; the other 1,297 images are the unlabelled training set. For every seed ``s`` the
contrastive pretraining runs once (``experiment.seed = s``) and serves both label fractions, 1 and
13 labels per class, each a class-balanced draw with ``subset_seed = s``. Four arms share the
encoder architecture and the evaluation (top-1 on the test split):

* ``supervised``: ``finetune.init = "scratch"``, the pretraining encoder table trained on the
  labelled subset only (its tuned settings are :data:`SUPERVISED_OVERRIDES`);
* ``finetune_head1``: fine-tuned from projection-head layer 1 of the pretrained network (SimCLRv2);
* ``finetune_encoder``: the same, from the encoder output (``from_layer = 0``);
* ``distill``: a same-size student trained on the unlabelled images with ``finetune_head1`` as
  the teacher (self-distillation).

Every arm is an ordinary run of the fraction's spec (``specs/digits_1pct.toml`` for 1 label per
class, ``specs/digits_10pct.toml`` for 13) through :func:`contrastive.runner.run`, with ``--set``
style overrides, in its own run directory under ``OUT/seed<s>/``; rerunning skips finished arms.
"""

from __future__ import annotations

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
from contrastive.errors import Problem, RunDirectoryClash, RunError, SpecError
from contrastive.runner import run
from contrastive.spec.loader import LoadedSpec, load, to_dict
from contrastive.spec.toml_writer import dumps_value
from contrastive.stages.common import FINAL

log = logging.getLogger(__name__)

ARMS = ("supervised", "finetune_head1", "finetune_encoder", "distill")
LABELS_PER_CLASS = (1, 13)
RESULTS_FILE = "label_efficiency.json"
TABLE_FILE = "label_efficiency.md"
CHART_FILE = "label_efficiency.png"

#: Settings of the supervised baseline on top of the fraction's ``[finetune]`` table (same
#: crop augmentation, batch and evaluation): the best of its own grid over learning rate, epochs,
#: crop scale and rotation (docs/digits-tuning.md). A new network needs far larger steps than a
#: pretrained one (the SimCLRv2 fine-tuning lr, 0.005, gave 23% at 1 label per class). At 1 label
#: per class a 10-degree rotation helps it (57.9% -> 63.7%) though not the pretrained network, so
#: it gets one of its own; at 13 both use the 10 degrees of ``digits_10pct.toml``.
SUPERVISED_OVERRIDES: Mapping[int, tuple[str, ...]] = {
    1: ("finetune.optimizer.lr=0.1", "finetune.epochs=500", "finetune.augmentation.rotation_degrees=10.0"),
    13: ("finetune.optimizer.lr=0.05", "finetune.epochs=500"),
}

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
class Row:
    """One measurement: an arm's test top-1 for one label fraction and seed.

    Attributes:
        arm: One of :data:`ARMS`.
        labels_per_class: Labelled images per class.
        seed: Experiment and subset seed.
        top1: Test top-1 accuracy as a fraction in [0, 1].
    """

    arm: str
    labels_per_class: int
    seed: int
    top1: float


@attrs.frozen
class Protocol:
    """What to run and where.

    Attributes:
        out: Output directory (run directories, JSON, markdown, chart).
        seeds: Seeds to run, in order.
        specs: Labels per class to the spec file of that fraction.
        overrides: Extra ``--set`` overrides applied to every run, last (e.g. :data:`QUICK_OVERRIDES`).
    """

    out: Path
    seeds: tuple[int, ...]
    specs: Mapping[int, Path]
    overrides: tuple[str, ...] = ()


def default_specs() -> dict[int, Path]:
    """The packaged digits specs ``digits_1pct`` and ``digits_10pct`` (installed with the package)."""
    from contrastive.spec.packaged import packaged_spec

    return {1: packaged_spec("digits_1pct"), 13: packaged_spec("digits_10pct")}


def run_protocol(protocol: Protocol, reporter: Reporter | None = None) -> list[Row]:
    """Run (or resume) every arm of every seed and write the JSON, markdown table and chart.

    Returns:
        One row per (seed, labels per class, arm), in that order.
    """
    rows: list[Row] = []
    seconds = 0.0
    for seed in protocol.seeds:
        pretrain_final, spent = _pretrain(protocol, seed, reporter)
        seconds += spent
        for labels in sorted(protocol.specs):
            arm_rows, spent = _fraction(protocol, seed, labels, pretrain_final, reporter)
            rows.extend(arm_rows)
            seconds += spent
        write_outputs(protocol.out, rows, train_seconds=seconds, chart=False)
    write_outputs(protocol.out, rows, train_seconds=seconds, chart=True)
    return rows


def _run_one(
    spec: Path, overrides: Sequence[str], run_dir: Path, stage: str, reporter: Reporter | None
) -> dict[str, Any]:
    loaded = load(spec, overrides)
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
    """The seed's pretraining (shared by both fractions): its ``final.pt`` and training seconds."""
    spec = protocol.specs[min(protocol.specs)]
    run_dir = protocol.out / f"seed{seed}" / "pretrain"
    overrides = [*_seeded(protocol, seed, f"label_efficiency_seed{seed}_pretrain"), *protocol.overrides]
    log.info("seed %d: pretrain in %s", seed, run_dir)
    result = _run_one(spec, overrides, run_dir, "pretrain", reporter)
    return run_dir / "pretrain" / FINAL, float(result.get("wall_seconds", 0.0))


def _fraction(
    protocol: Protocol, seed: int, labels: int, pretrain_final: Path, reporter: Reporter | None
) -> tuple[list[Row], float]:
    """The four arms of one seed and label fraction."""
    spec = protocol.specs[labels]
    base = protocol.out / f"seed{seed}" / f"labels{labels}"
    subset = [
        *FINETUNE_RUNTIME,
        f"finetune.dataset.labels_per_class={labels}",
        f"finetune.dataset.subset_seed={seed}",
    ]
    arms: dict[str, tuple[str, list[str]]] = {
        "finetune_head1": (
            "finetune",
            [*subset, _set("finetune.init", str(pretrain_final)), "finetune.from_layer=1"],
        ),
        "finetune_encoder": (
            "finetune",
            [*subset, _set("finetune.init", str(pretrain_final)), "finetune.from_layer=0"],
        ),
        "supervised": ("finetune", [*subset, *_scratch_overrides(spec, protocol.overrides, labels)]),
        "distill": ("distill", [_set("distill.teacher", str(base / "finetune_head1" / "finetune" / FINAL))]),
    }
    rows: list[Row] = []
    seconds = 0.0
    for arm in ("finetune_head1", "finetune_encoder", "supervised", "distill"):
        stage, arm_overrides = arms[arm]
        name = f"label_efficiency_seed{seed}_labels{labels}_{arm}"
        overrides = [*arm_overrides, *_seeded(protocol, seed, name), *protocol.overrides]
        log.info("seed %d, %d labels/class: %s", seed, labels, arm)
        result = _run_one(spec, overrides, base / arm, stage, reporter)
        rows.append(Row(arm=arm, labels_per_class=labels, seed=seed, top1=float(result["top1"])))
        seconds += float(result.get("wall_seconds", 0.0))
    rows.sort(key=lambda r: ARMS.index(r.arm))
    return rows, seconds


def _scratch_overrides(spec: Path, extra: Sequence[str], labels: int) -> list[str]:
    """The supervised arm: a new encoder with the pretraining encoder's table, no head."""
    pretrain = _pretrain_table(load(spec, extra))
    return [
        'finetune.init="scratch"',
        "finetune.from_layer=0",
        _set("finetune.encoder", to_dict(pretrain.encoder)),
        _set("finetune.normalization", to_dict(pretrain.normalization)),
        *SUPERVISED_OVERRIDES.get(labels, ()),
    ]


def _pretrain_table(loaded: LoadedSpec) -> Any:
    if loaded.spec.pretrain is None:
        raise SpecError([Problem(str(loaded.path), "pretrain", "the protocol needs a [pretrain] table")])
    return loaded.spec.pretrain


def _set(key: str, value: Any) -> str:
    """A ``--set`` string whose value is written as TOML (strings quoted, tables inline)."""
    return f"{key}={dumps_value(value)}"


def summarize(rows: Sequence[Row]) -> dict[tuple[str, int], tuple[float, float, int]]:
    """(arm, labels per class) to (mean top-1, sample standard deviation, number of seeds)."""
    groups: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        groups.setdefault((row.arm, row.labels_per_class), []).append(row.top1)
    return {
        key: (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))
        for key, values in groups.items()
    }


def markdown_table(rows: Sequence[Row], train_seconds: float | None = None) -> str:
    """Mean ± standard deviation of test top-1 (%) per arm (rows) and label fraction (columns)."""
    stats = summarize(rows)
    fractions = sorted({row.labels_per_class for row in rows})
    arms = [arm for arm in ARMS if any(row.arm == arm for row in rows)]
    seeds = sorted({row.seed for row in rows})
    header = "| arm | " + " | ".join(f"{n} label{'s' if n > 1 else ''}/class" for n in fractions) + " |"
    lines = [
        "Test top-1 (%) on the 500 held-out digits, mean ± sample standard deviation over "
        f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(str(s) for s in seeds)}).",
        "",
        header,
        "|---|" + "---:|" * len(fractions),
    ]
    for arm in arms:
        cells = []
        for n in fractions:
            found = stats.get((arm, n))
            cells.append("-" if found is None else f"{100 * found[0]:.1f} ± {100 * found[1]:.1f}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if train_seconds is not None:
        lines += ["", f"Training time, summed over every stage run: {train_seconds / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, rows: Sequence[Row], *, train_seconds: float | None, chart: bool) -> None:
    """Write ``label_efficiency.json``, ``label_efficiency.md`` and (when ``chart``) the PNG chart."""
    out.mkdir(parents=True, exist_ok=True)
    records = [attrs.asdict(row) for row in rows]
    atomic.write_text(out / RESULTS_FILE, json.dumps(records, indent=2) + "\n")
    atomic.write_text(out / TABLE_FILE, markdown_table(rows, train_seconds))
    if chart:
        plot_chart(rows, out / CHART_FILE)
    log.info("wrote %s and %s", out / RESULTS_FILE, out / TABLE_FILE)


def plot_chart(rows: Sequence[Row], path: Path) -> None:
    """Grouped bars: mean top-1 per arm for each label fraction, standard deviation as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = summarize(rows)
    fractions = sorted({row.labels_per_class for row in rows})
    arms = [arm for arm in ARMS if any(row.arm == arm for row in rows)]
    width = 0.8 / max(len(arms), 1)
    figure, axis = plt.subplots(figsize=(7, 4))
    for i, arm in enumerate(arms):
        means = [100 * stats.get((arm, n), (math.nan, 0.0, 0))[0] for n in fractions]
        errors = [100 * stats.get((arm, n), (0.0, 0.0, 0))[1] for n in fractions]
        positions = [f + (i - (len(arms) - 1) / 2) * width for f in range(len(fractions))]
        axis.bar(positions, means, width, yerr=errors, capsize=3, label=arm)
    axis.set_xticks(range(len(fractions)), [f"{n} label{'s' if n > 1 else ''}/class" for n in fractions])
    axis.set(ylabel="test top-1 (%)", ylim=(0, 100), title="Label efficiency on digits")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(arms), frameon=False)
    figure.tight_layout()
    atomic.write_with(path, lambda handle: figure.savefig(handle, format="png", dpi=80))
    plt.close(figure)


def read_rows(path: Path) -> list[Row]:
    """Rows from a ``label_efficiency.json``."""
    return [Row(**record) for record in json.loads(path.read_text())]
