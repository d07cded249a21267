"""``contrastive predict``: classify image files, folders or a shard set with a stage or an export.

The model is a finished stage directory (``RUN_DIR/finetune`` or ``RUN_DIR/distill``: its
classifier), or a file ``contrastive export --what classifier`` wrote: ONNX (run by onnxruntime),
TorchScript or safetensors. Every image gets the stage's evaluation view: the evaluation
augmentation's ``per_sample`` (rebuilt from the stage's resolved spec, or from the export's
metadata) on the decoded image, then its ``on_device`` part (in the exported graph for ONNX and
TorchScript). So an export and the stage it came from report the same classes for the same images.

Inputs: image files (any format the decoder reads), folders (searched recursively for
:data:`IMAGE_SUFFIXES`, hidden entries skipped, in sorted order) and shard sets (a folder holding
``index.json``: every sample of every indexed shard, named ``FOLDER/SHARD#KEY``). An input that
cannot be read or decoded is reported as a :class:`Failure` and skipped; the rest are classified.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from contrastive.data.decode import decode
from contrastive.data.index import index_path, read_index
from contrastive.deploy import Deployable, DeployMetadata, build_augmentation, load_stage
from contrastive.errors import DataError, RunError
from contrastive.hookspecs import Category
from contrastive.interfaces import Augmentation
from contrastive.progress import Progress, tracked
from contrastive.registry import Registry, load_registry
from contrastive.stages.records import ComponentRecord

__all__ = [
    "IMAGE_SUFFIXES",
    "Failure",
    "LoadedModel",
    "PredictResult",
    "Prediction",
    "csv_rows",
    "list_inputs",
    "open_model",
    "predict",
    "write_csv",
]

log = logging.getLogger(__name__)

#: How PIL names the in-memory file it was given (``<_io.BytesIO object at 0x...>``).
_BYTES_OBJECT = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")

#: File suffixes a folder is searched for (lower case; explicit files may have any suffix).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


@attrs.frozen
class Prediction:
    """The top classes of one image.

    Attributes:
        path: The image (``FOLDER/SHARD#KEY`` for a shard sample).
        top: ``(class name, class index, probability)``, most probable first.
    """

    path: str
    top: tuple[tuple[str, int, float], ...]

    def to_json(self) -> dict[str, Any]:
        """``{"path": ..., "top_k": [{"class": NAME, "index": I, "probability": P}, ...]}``."""
        return {
            "path": self.path,
            "top_k": [{"class": name, "index": index, "probability": p} for name, index, p in self.top],
        }


@attrs.frozen
class Failure:
    """An input that could not be classified, and why."""

    path: str
    reason: str


@attrs.frozen
class PredictResult:
    """Every classified image in input order, and every input skipped."""

    predictions: tuple[Prediction, ...]
    failures: tuple[Failure, ...]


@attrs.frozen
class LoadedModel:
    """A classifier ready to run on evaluation views.

    Attributes:
        source: The stage directory or export file.
        class_names: Position = class index.
        augmentation: The evaluation augmentation (its ``per_sample`` makes the views).
        logits: ``uint8 [B, 3, S, S]`` views to ``float32 [B, C]`` logits (CPU tensors).
    """

    source: str
    class_names: tuple[str, ...]
    augmentation: Augmentation
    logits: Callable[[torch.Tensor], torch.Tensor]


def open_model(path: Path, registry: Registry | None = None, device: str = "cpu") -> LoadedModel:
    """The classifier of a stage directory or of an export file (by suffix: ``.onnx``,
    ``.safetensors``, anything else TorchScript).

    Raises:
        RunError: No such stage or file, a pretraining stage or an encoder export (no classes),
            a file ``contrastive export`` did not write.
        MissingExtraError: An ONNX file without the ``contrastive[onnx]`` extra.
    """
    registry = load_registry() if registry is None else registry
    if path.is_dir():
        stage = load_stage(path, "classifier", registry)
        module = stage.deployable().to(device)
        return LoadedModel(
            str(path), stage.metadata.class_names, stage.augmentation, _torch_logits(module, device)
        )
    if not path.is_file():
        raise RunError(
            f"{path} does not exist: predict takes RUN_DIR/STAGE or an exported .onnx/TorchScript file"
        )
    from contrastive import export

    if path.suffix.lower() == ".onnx":
        data = path.read_bytes()
        metadata = export.read_onnx_metadata(data, str(path))
        session = export.onnx_session(data)
        return _from_export(path, metadata, registry, _onnx_logits(session))
    if path.suffix.lower() == ".safetensors":
        network, metadata = export.load_safetensors(path, registry)
        augmentation = _export_augmentation(path, metadata, registry)
        module = Deployable(network, augmentation).eval().to(device)
        return _from_export(path, metadata, registry, _torch_logits(module, device))
    scripted, metadata = export.load_torchscript(path)
    return _from_export(path, metadata, registry, _torch_logits(scripted.to(device), device))


def _from_export(
    path: Path, metadata: DeployMetadata, registry: Registry, logits: Callable[[torch.Tensor], torch.Tensor]
) -> LoadedModel:
    if metadata.what != "classifier":
        raise RunError(
            f"{path} holds an encoder (features, no classes): export the classifier with --what classifier"
        )
    return LoadedModel(
        str(path), metadata.class_names, _export_augmentation(path, metadata, registry), logits
    )


def _export_augmentation(path: Path, metadata: DeployMetadata, registry: Registry) -> Augmentation:
    where = f"{path}: evaluation augmentation"
    chosen = metadata.augmentation
    record = ComponentRecord.from_state(chosen, where, Category.AUGMENTATIONS)
    augmentation, _, _ = build_augmentation(record, registry, where)
    return augmentation


def _torch_logits(module: nn.Module, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    module.eval()

    def run(views: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = module(views.to(device))
        return out.float().cpu()

    return run


def _onnx_logits(session: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    name = session.get_inputs()[0].name

    def run(views: torch.Tensor) -> torch.Tensor:
        (out,) = session.run(None, {name: views.numpy()})
        return torch.from_numpy(out).float()

    return run


# --- inputs -----------------------------------------------------------------------------------


@attrs.frozen
class _Item:
    """One input: its name, and how to get its bytes (raises on an unreadable one)."""

    path: str
    read: Callable[[], bytes]


@attrs.frozen
class _ShardSet:
    folder: Path
    total: int


def list_inputs(inputs: Sequence[Path]) -> tuple[list[Path | _ShardSet], list[Failure]]:
    """Expand the inputs: files as given, folders into their image files (recursively), shard
    sets (folders holding ``index.json``) kept whole. Missing inputs are failures."""
    found: list[Path | _ShardSet] = []
    failures: list[Failure] = []
    for path in inputs:
        if path.is_dir() and index_path(path).is_file():
            try:
                found.append(_ShardSet(path, read_index(path).total))
            except DataError as exc:
                failures.append(Failure(str(path), str(exc)))
        elif path.is_dir():
            found.extend(_images_under(path))
        elif path.exists():
            found.append(path)
        else:
            failures.append(Failure(str(path), "no such file or folder"))
    return found, failures


def _images_under(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted, hidden files and folders skipped."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.is_file()
    )


def _items(found: Sequence[Path | _ShardSet], failures: list[Failure]) -> Iterator[_Item]:
    for entry in found:
        if isinstance(entry, Path):
            yield _Item(str(entry), entry.read_bytes)
        else:
            yield from _shard_items(entry, failures)


def _shard_items(shards: _ShardSet, failures: list[Failure]) -> Iterator[_Item]:
    """Every sample of an indexed shard set; a shard that cannot be read is one failure."""
    from contrastive.data.scan import read_groups

    for entry in read_index(shards.folder).shards:
        shard = shards.folder / entry.name
        try:
            groups = read_groups(shard, want=lambda ext: True)
        except (DataError, OSError) as exc:
            failures.append(Failure(str(shard), str(exc)))
            continue
        for group in groups:
            data = group.data[group.image_key]
            yield _Item(f"{shard}#{group.key}", lambda data=data: data)  # type: ignore[misc]


# --- prediction -------------------------------------------------------------------------------


def predict(
    model: LoadedModel,
    inputs: Sequence[Path],
    *,
    top_k: int = 5,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> PredictResult:
    """Classify every image of ``inputs`` (files, folders, shard sets) with ``model``.

    Args:
        model: From :func:`open_model`.
        inputs: Image files, folders, shard-set folders.
        top_k: Classes reported per image (at most the model's class count).
        batch_size: Images per forward pass.
        progress: Told of every image read (classified or not).

    Returns:
        The predictions in input order and the inputs skipped (unreadable, undecodable, missing).

    Raises:
        ValueError: ``top_k`` or ``batch_size`` below 1.
    """
    if top_k < 1 or batch_size < 1:
        raise ValueError(f"top_k and batch_size must be >= 1, got {top_k} and {batch_size}")
    found, failures = list_inputs(inputs)
    total = sum(entry.total if isinstance(entry, _ShardSet) else 1 for entry in found)
    predictions: list[Prediction] = []
    pending: list[tuple[str, torch.Tensor]] = []
    with tracked(progress, total, "predict (images)") as advance:
        for item in _items(found, failures):
            view = _view(item, model.augmentation, failures)
            advance(1)
            if view is not None:
                pending.append((item.path, view))
            if len(pending) == batch_size:
                predictions.extend(_classify(model, pending, top_k))
                pending = []
        if pending:
            predictions.extend(_classify(model, pending, top_k))
    return PredictResult(tuple(predictions), tuple(failures))


def _view(item: _Item, augmentation: Augmentation, failures: list[Failure]) -> torch.Tensor | None:
    """The evaluation view ``uint8 [3, S, S]`` of one input, or None (its failure recorded)."""
    try:
        image = decode(item.read())
        views = augmentation.per_sample(image)
    except Exception as exc:  # decoders raise many kinds on bad bytes; OSError on unreadable files
        reason = _BYTES_OBJECT.sub("", " ".join(str(exc).split()))[:200] or type(exc).__name__
        failures.append(Failure(item.path, f"cannot read the image: {reason}"))
        return None
    return views[0]


def _classify(model: LoadedModel, pending: list[tuple[str, torch.Tensor]], top_k: int) -> list[Prediction]:
    views = torch.stack([view for _, view in pending])
    probabilities = torch.softmax(model.logits(views).double(), dim=1)
    k = min(top_k, probabilities.shape[1])
    values, indices = probabilities.topk(k, dim=1)
    names = model.class_names
    rows: list[Prediction] = []
    for (path, _), p_row, i_row in zip(pending, values.tolist(), indices.tolist(), strict=True):
        top = tuple(
            (names[i] if i < len(names) else str(i), int(i), _rounded(p))
            for p, i in zip(p_row, i_row, strict=True)
        )
        rows.append(Prediction(path, top))
    return rows


def _rounded(p: float) -> float:
    """A probability to 6 decimals (NaN kept: a model that outputs NaN shows it)."""
    return p if math.isnan(p) else round(p, 6)


def write_csv(path: Path, result: PredictResult, top_k: int) -> Path:
    """Write :func:`csv_rows` to ``path`` atomically."""
    import csv
    import io

    from contrastive.atomic import write_text

    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(csv_rows(result, top_k))
    return write_text(path, text.getvalue())


def csv_rows(result: PredictResult, top_k: int) -> list[list[str]]:
    """The CSV table: a header ``path, class_1, probability_1, ..., class_K, probability_K``, then
    one row per classified image (cells left empty where fewer classes exist)."""
    header = ["path"] + [f"{kind}_{i}" for i in range(1, top_k + 1) for kind in ("class", "probability")]
    rows = [header]
    for prediction in result.predictions:
        cells = [prediction.path]
        for i in range(top_k):
            if i < len(prediction.top):
                name, _, p = prediction.top[i]
                cells += [name, f"{p:.6f}"]
            else:
                cells += ["", ""]
        rows.append(cells)
    return rows
