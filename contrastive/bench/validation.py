"""The label-efficiency protocol's validation split, and the top-1 of a finished run on it.

The split is either held out of the labelled pool by the dataset
(:class:`contrastive.interfaces.ValidationSubsets`, ``--val-per-class N``), disjoint from every
labelled subset of the seed, or the spec's ``finetune.val_dataset``. Settings are chosen on it;
the test split (``finetune.eval_dataset``) is only reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from contrastive import atomic
from contrastive.checkpoint import load_checkpoint
from contrastive.errors import DataError, PluginError, Problem, RunError, SpecError
from contrastive.evaluate import evaluate_classifier
from contrastive.interfaces import DataSource, ValidationSubsets
from contrastive.linear_eval import stage_augmentation
from contrastive.registry import Registry
from contrastive.spec.loader import LoadedSpec, to_dict
from contrastive.spec.structure import ComponentSpec
from contrastive.stages.models import Classifier, rebuild
from contrastive.stages.records import ClassifierRecord, read_record
from contrastive.stages.results import FINAL

log = logging.getLogger(__name__)

#: A finished run's validation record, beside its stage folders.
VAL_FILE = "val_eval.json"
#: Images per validation batch.
VAL_BATCH = 256


def held_out(loaded: LoadedSpec, per_class: int, seed: int, drawn: Sequence[Sequence[int]]) -> ComponentSpec:
    """The validation subset of ``per_class`` samples of every class of ``finetune.dataset``.

    Args:
        loaded: The spec (its ``finetune.dataset`` is the labelled pool).
        per_class: Validation samples per class.
        seed: The seed the labelled subsets are drawn with.
        drawn: For every label setting of the protocol, the samples it draws of each class
            (given the class sizes): each must leave ``per_class`` undrawn.

    Raises:
        SpecError: The dataset cannot hold samples out, or a label setting leaves too few.
        PluginError: ``validation_subset`` returned options of another class.
        DataError: The subset cannot be drawn.
    """
    finetune = loaded.spec.finetune
    assert finetune is not None
    chosen = finetune.dataset
    pool = chosen.options  # read only through the ValidationSubsets protocol
    source = str(loaded.path)
    if not isinstance(pool, ValidationSubsets):
        message = (
            f"the {chosen.name!r} dataset cannot hold out a validation subset (its options have no "
            "validation_subset(); see contrastive.interfaces.ValidationSubsets): name one as "
            "finetune.val_dataset instead of --val-per-class"
        )
        raise SpecError([Problem(source, "finetune.dataset", message)])
    sizes = pool.class_sizes()
    for counts in drawn:
        short = [
            c for c, (size, take) in enumerate(zip(sizes, counts, strict=True)) if size - take < per_class
        ]
        if short:
            c = short[0]
            message = (
                f"--val-per-class {per_class}: a label setting draws {counts[c]} of the {sizes[c]} "
                f"samples of class {c}, leaving fewer than {per_class} for validation "
                f"({len(short)} classes so): "
                "hold out fewer or draw fewer labels"
            )
            raise SpecError([Problem(source, "finetune.dataset", message)])
    subset = pool.validation_subset(per_class=per_class, seed=seed)
    if type(subset) is not type(pool):
        kind = type(pool).__name__
        raise PluginError(f"{kind}.validation_subset() must return a {kind}, got {subset!r}")
    return attrs.evolve(chosen, options=subset)


def class_sizes(loaded: LoadedSpec) -> tuple[int, ...] | None:
    """Samples per class of the labelled pool, or None when its dataset does not say."""
    finetune = loaded.spec.finetune
    assert finetune is not None
    pool = finetune.dataset.options
    return tuple(pool.class_sizes()) if isinstance(pool, ValidationSubsets) else None


def val_inputs(final: Path, dataset: ComponentSpec) -> dict[str, Any]:
    """What a run's validation top-1 depends on: its ``final.pt`` (path and SHA-256) and the split."""
    digest = hashlib.sha256()
    with final.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    inputs = {"checkpoint": str(final), "checkpoint_sha256": digest.hexdigest(), "val": to_dict(dataset)}
    result: dict[str, Any] = json.loads(json.dumps(inputs))
    return result


def run_val_top1(stage_dir: Path, dataset: ComponentSpec, registry: Registry, device: str = "cpu") -> float:
    """Validation top-1 of a finished fine-tuning or distillation stage, kept beside it.

    ``RUN_DIR/val_eval.json`` holds the record and the inputs it was computed from
    (:func:`val_inputs`); it is reused while they match. The view is the stage's evaluation view.

    Raises:
        RunError: No ``final.pt``, or it holds no classifier.
        DataError: The split is unlabelled or empty.
    """
    final = stage_dir / FINAL
    if not final.is_file():
        raise RunError(f"{final} does not exist: the run has not finished")
    inputs = val_inputs(final, dataset)
    path = stage_dir.parent / VAL_FILE
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if isinstance(previous, dict) and previous.get("inputs") == inputs:
        return float(previous["top1"])
    scores = classifier_scores(stage_dir, dataset, registry, device)
    atomic.write_json(path, {**scores, "inputs": inputs})
    return float(scores["top1"])


def classifier_scores(
    stage_dir: Path, dataset: ComponentSpec, registry: Registry, device: str = "cpu"
) -> dict[str, float | int]:
    """Top-1/top-5 of a finished stage's classifier on ``dataset`` (writes nothing).

    Raises:
        RunError: No classifier in ``final.pt``.
        DataError: The split is unlabelled or empty.
    """
    final = stage_dir / FINAL
    record = read_record(load_checkpoint(final), str(final))
    if not isinstance(record, ClassifierRecord):
        raise RunError(f"{final} holds a pretraining, not a classifier")
    model = rebuild(registry, record, str(final))
    assert isinstance(model, Classifier)
    model.load_state_dict(record.state_dict)
    model.to(device)
    augmentation = stage_augmentation(stage_dir, None, registry)
    data: DataSource = dataset.build(registry)
    if data.num_classes == 0:
        raise DataError(f"the validation split ({dataset.name}) carries no labels")
    batches = data.eval_batches(
        augmentation=augmentation, batch_size=VAL_BATCH, rank=0, world_size=1, num_workers=0
    )
    return evaluate_classifier(model, batches, device, augmentation.on_device)
