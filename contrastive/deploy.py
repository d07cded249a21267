"""A finished stage as a deployable network: its weights, its evaluation preprocessing, its classes.

What ``contrastive export`` writes and ``contrastive predict`` runs share this module:

* :func:`load_stage` rebuilds a stage's network from its ``final.pt`` record (the classifier, or
  the encoder alone), in eval mode with its trained weights, together with the stage's evaluation
  augmentation (rebuilt from the ``eval_augmentation`` table of the run's
  ``spec.resolved.toml``: any augmentation plugin, asked only through
  :class:`contrastive.interfaces.Augmentation` and its ``preprocessing()`` capability) and the
  class names of its training shards (:class:`contrastive.interfaces.NamedClasses`).
* :class:`Deployable` folds the augmentation's ``on_device`` part (uint8 to float, normalization)
  into the network, so an exported graph takes the evaluation view as ``uint8 [B, 3, S, S]``.
  The geometric part (``per_sample``: crop and resize of an image of any size) cannot be batched
  into a graph; it is recorded as metadata (:class:`DeployMetadata`): the augmentation's component
  record, which ``contrastive predict`` rebuilds, and its plain-data description for other
  runtimes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tomllib
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from torch import nn

from contrastive.checkpoint import load_checkpoint
from contrastive.errors import ContrastiveError, RunError
from contrastive.hookspecs import Category
from contrastive.interfaces import Augmentation, NamedClasses, augmentation_preprocessing
from contrastive.registry import Registry
from contrastive.stages.models import Classifier, rebuild, spec_from_record
from contrastive.stages.records import ClassifierRecord, ComponentRecord, PretrainRecord, read_record
from contrastive.stages.results import FINAL

__all__ = [
    "METADATA_KEY",
    "DeployMetadata",
    "Deployable",
    "StageNetwork",
    "What",
    "build_augmentation",
    "load_stage",
    "rebuild_network",
    "record_from_json",
    "table_record",
]

log = logging.getLogger(__name__)

#: What an export holds: the classifier (logits) or the encoder alone (features).
What = Literal["encoder", "classifier"]
WHATS: tuple[What, ...] = ("encoder", "classifier")

#: The metadata key (ONNX ``metadata_props``, safetensors header) and TorchScript extra file
#: holding the whole :class:`DeployMetadata` as JSON.
METADATA_KEY = "contrastive"
METADATA_FORMAT = "contrastive-export"
METADATA_VERSION = 1

SPEC_FILE = "spec.resolved.toml"


@attrs.frozen
class DeployMetadata:
    """What an exported model needs besides its weights.

    Attributes:
        what: ``"classifier"`` (output: logits ``[B, num_classes]``) or ``"encoder"`` (features).
        stage: The stage directory it was exported from.
        record: The ``final.pt`` record without its weights (component names and options), which
            :func:`rebuild_network` turns back into the same architecture.
        input_size: Side S of the square evaluation view.
        class_names: Class names, position = class index (empty for an encoder).
        spec_digest: SHA-256 of the run's ``spec.resolved.toml``.
        augmentation: The evaluation augmentation's component record ``{name, options}``.
        preprocessing: Its ``preprocessing()`` description, or None when it gives none.
    """

    what: What
    stage: str
    record: dict[str, Any]
    input_size: int
    class_names: tuple[str, ...]
    spec_digest: str
    augmentation: dict[str, Any]
    preprocessing: dict[str, Any] | None

    def to_json(self, graph_input: str) -> dict[str, Any]:
        """The JSON document, with ``graph_input`` saying what the stored network takes."""
        return {
            "format": METADATA_FORMAT,
            "version": METADATA_VERSION,
            "what": self.what,
            "stage": self.stage,
            "input_size": self.input_size,
            "graph_input": graph_input,
            "class_names": list(self.class_names),
            "spec_digest": self.spec_digest,
            "augmentation": self.augmentation,
            "preprocessing": self.preprocessing,
            "record": self.record,
        }

    def strings(self, graph_input: str) -> dict[str, str]:
        """String metadata (ONNX ``metadata_props``, safetensors header, TorchScript extra files):
        the whole document under :data:`METADATA_KEY`, and the parts a person looks for first."""
        return {
            METADATA_KEY: json.dumps(self.to_json(graph_input), default=str),
            "class_names": json.dumps(list(self.class_names)),
            "preprocessing": json.dumps(
                {
                    "graph_input": graph_input,
                    "augmentation": self.augmentation,
                    "description": self.preprocessing,
                },
                default=str,
            ),
            "input_size": str(self.input_size),
            "spec_digest": self.spec_digest,
        }

    @classmethod
    def from_strings(cls, strings: dict[str, str], where: str) -> DeployMetadata:
        """Read the metadata back from :meth:`strings`' output.

        Raises:
            RunError: No contrastive metadata there, or a malformed document.
        """
        text = strings.get(METADATA_KEY)
        if text is None:
            raise RunError(
                f"{where} holds no {METADATA_KEY!r} metadata: not a model `contrastive export` wrote"
            )
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise RunError(f"{where}: the {METADATA_KEY!r} metadata is not JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != METADATA_FORMAT:
            raise RunError(f"{where}: the {METADATA_KEY!r} metadata is not a {METADATA_FORMAT} document")
        if doc.get("version") != METADATA_VERSION:
            raise RunError(f"{where}: export metadata version {doc.get('version')!r} is not supported")
        try:
            what = doc["what"]
            if what not in WHATS:
                raise ValueError(f"what = {what!r}")
            return cls(
                what=what,
                stage=str(doc["stage"]),
                record=dict(doc["record"]),
                input_size=int(doc["input_size"]),
                class_names=tuple(str(name) for name in doc["class_names"]),
                spec_digest=str(doc["spec_digest"]),
                augmentation=dict(doc["augmentation"]),
                preprocessing=None if doc["preprocessing"] is None else dict(doc["preprocessing"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RunError(f"{where}: malformed export metadata ({type(exc).__name__}: {exc})") from exc


class Deployable(nn.Module):
    """A network with its evaluation augmentation's ``on_device`` part in front.

    ``forward``: the evaluation view ``uint8 [B, 3, S, S]`` (RGB) to the network's output
    (logits ``float32 [B, num_classes]`` for a classifier, features ``[B, D]`` for an encoder).
    """

    def __init__(self, network: nn.Module, augmentation: Augmentation) -> None:
        super().__init__()
        self.network = network
        self.augmentation = augmentation

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        views = self.augmentation.on_device(images.unsqueeze(1))
        out: torch.Tensor = self.network(views.squeeze(1))
        return out


@attrs.frozen
class StageNetwork:
    """A finished stage, ready to export or run.

    Attributes:
        network: Eval mode, trained weights, no gradients: float views ``[B, 3, S, S]`` (what the
            augmentation's ``on_device`` returns) to logits or features.
        augmentation: The stage's evaluation augmentation.
        metadata: What an export records besides the weights.
    """

    network: nn.Module
    augmentation: Augmentation
    metadata: DeployMetadata

    def deployable(self) -> Deployable:
        """The network with the ``on_device`` part folded in (eval mode)."""
        return Deployable(self.network, self.augmentation).eval()


def load_stage(stage_dir: Path, what: What, registry: Registry) -> StageNetwork:
    """Rebuild a finished stage's classifier (or encoder) with its evaluation preprocessing.

    Args:
        stage_dir: ``RUN_DIR/STAGE`` holding ``final.pt``, its run's ``spec.resolved.toml`` one
            folder up.
        what: The classifier or the encoder alone.
        registry: The plugins that rebuild its components.

    Raises:
        RunError: No finished stage there, a pretraining stage asked for a classifier, no
            resolved spec beside it, or an evaluation augmentation that cannot serve (not one view).
    """
    source = stage_dir / FINAL
    if not source.is_file():
        raise RunError(f"{source} does not exist: expected a finished stage directory (RUN_DIR/STAGE)")
    record = read_record(load_checkpoint(source), str(source))
    if what == "classifier" and isinstance(record, PretrainRecord):
        raise RunError(
            f"{stage_dir} is a pretraining stage: it has an encoder and a projection head, no classifier; "
            "export --what encoder, or the classifier of a finetune or distill stage"
        )
    network = rebuild_network(record, what, registry, str(source))
    network.load_state_dict(_weights(record, what))
    table, spec_path = _stage_table(stage_dir)
    where = f"{spec_path}: {stage_dir.name}.eval_augmentation"
    augmentation, augmentation_record, description = build_augmentation(
        table_record(table.get("eval_augmentation"), where, Category.AUGMENTATIONS), registry, where
    )
    names: tuple[str, ...] = ()
    if isinstance(record, ClassifierRecord) and what == "classifier":
        names = stage_class_names(table, registry, record.num_classes, f"{spec_path}: {stage_dir.name}")
    metadata = DeployMetadata(
        what=what,
        stage=str(stage_dir),
        record=record_without_weights(record),
        input_size=int(augmentation.size),
        class_names=names,
        spec_digest=hashlib.sha256(spec_path.read_bytes()).hexdigest(),
        augmentation=augmentation_record,
        preprocessing=description,
    )
    return StageNetwork(network=network, augmentation=augmentation, metadata=metadata)


def rebuild_network(
    record: PretrainRecord | ClassifierRecord, what: What, registry: Registry, where: str
) -> nn.Module:
    """The untrained network a record describes (the classifier, or its encoder), in eval mode
    without gradients."""
    model = rebuild(registry, record, where)
    network: nn.Module = model if what == "classifier" else model.encoder
    if what == "classifier" and not isinstance(model, Classifier):
        raise RunError(f"{where} holds a pretraining record: no classifier to rebuild")
    return network.eval().requires_grad_(False)


def _weights(record: PretrainRecord | ClassifierRecord, what: What) -> dict[str, torch.Tensor]:
    if what == "classifier":
        return dict(record.state_dict)
    prefix = "encoder."
    return {k[len(prefix) :]: v for k, v in record.state_dict.items() if k.startswith(prefix)}


def record_without_weights(record: PretrainRecord | ClassifierRecord) -> dict[str, Any]:
    """The record's plain dict (``to_state()``) without ``state_dict``: what rebuilds the
    architecture."""
    return {k: v for k, v in record.to_state().items() if k != "state_dict"}


def record_from_json(doc: dict[str, Any], where: str) -> PretrainRecord | ClassifierRecord:
    """The record :func:`record_without_weights` wrote (with an empty ``state_dict``)."""
    return read_record({**doc, "state_dict": {}}, where)


def _stage_table(stage_dir: Path) -> tuple[dict[str, Any], Path]:
    """The stage's table of its run's resolved spec, and that file's path."""
    path = stage_dir.parent / SPEC_FILE
    if not path.is_file():
        raise RunError(
            f"{path} does not exist: the evaluation preprocessing of {stage_dir} is recorded in its run's "
            "resolved spec (export the state_dict format, which needs none)"
        )
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: not readable TOML: {exc}") from exc
    table = doc.get(stage_dir.name)
    if not isinstance(table, dict):
        raise RunError(f"{path} has no [{stage_dir.name}] table for the stage {stage_dir}")
    return table, path


def table_record(chosen: Any, where: str, category: Category) -> ComponentRecord:
    """The component record of a spec's component table (``{name, ...options}``).

    Raises:
        RunError: Not a table with a name.
    """
    if not isinstance(chosen, dict) or not isinstance(chosen.get("name"), str):
        raise RunError(f"{where}: expected a component table with a name, found {chosen!r}")
    options = {k: v for k, v in chosen.items() if k != "name"}
    return ComponentRecord(name=chosen["name"], options=options, category=category)


def build_augmentation(
    record: ComponentRecord, registry: Registry, where: str
) -> tuple[Augmentation, dict[str, Any], dict[str, Any] | None]:
    """Build an evaluation augmentation from its component record.

    Returns:
        The augmentation, its record as ``{name, options}``, and its ``preprocessing()``
        description (None when it gives none).

    Raises:
        RunError: Options that no longer validate, or an augmentation that does not make one view.
        UnknownComponentError: No installed plugin offers it.
    """
    spec = spec_from_record(registry, record, where)
    augmentation: Augmentation = spec.build(registry)
    if int(augmentation.num_views) != 1:
        raise RunError(
            f"{where}: {spec.name} makes {augmentation.num_views} views; an evaluation view is one"
        )
    return augmentation, record.to_state(), augmentation_preprocessing(spec.options)


def stage_class_names(
    table: dict[str, Any], registry: Registry, num_classes: int, where: str
) -> tuple[str, ...]:
    """The class names of a stage's training shards: its ``dataset``, else its ``eval_dataset``,
    whichever built source names ``num_classes`` classes (:class:`NamedClasses`); else
    ``"0"``, ``"1"``, ... with a warning."""
    for key in ("dataset", "eval_dataset"):
        chosen = table.get(key)
        if not isinstance(chosen, dict):
            continue
        try:
            record = table_record(chosen, where, Category.DATASETS)
            source = spec_from_record(registry, record, f"{where}.{key}").build(registry)
        except (ContrastiveError, OSError) as exc:
            log.warning("%s.%s: cannot open it for its class names: %s", where, key, exc)
            continue
        if isinstance(source, NamedClasses) and len(source.classes) == num_classes:
            return tuple(str(name) for name in source.classes)
    log.warning(
        "%s: no dataset names its %d classes; they are called 0..%d", where, num_classes, num_classes - 1
    )
    return tuple(str(i) for i in range(num_classes))
