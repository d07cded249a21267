"""``contrastive export``: a finished stage's encoder or classifier, as a file another program runs.

Formats (:data:`FORMATS`):

* ``state_dict`` (the default): ``torch.save`` of the weights alone. The encoder's loads into the
  torchvision network its encoder names (``torchvision_model()``) where there is one; the
  classifier's into :class:`contrastive.stages.models.Classifier` (``encoder.``, ``head.``,
  ``classifier.`` keys).
* ``safetensors``: the same weights, and in the header the architecture record, input size, class
  names, the spec's digest and the evaluation preprocessing (:class:`contrastive.deploy.DeployMetadata`);
  :func:`load_safetensors` rebuilds the model from it.
* ``onnx`` (extra ``contrastive[onnx]``): the network with the evaluation augmentation's
  ``on_device`` part folded in (input ``images``: ``uint8 [batch, 3, S, S]``, the evaluation view;
  output ``logits`` or ``features``), a dynamic batch axis, the metadata as ``metadata_props``;
  checked with onnxruntime against PyTorch before it is written.
* ``torchscript``: the same graph traced, loadable with plain ``torch.jit.load``; the metadata as
  extra files (``contrastive``, ``class_names``, ``preprocessing``, ... see
  :meth:`contrastive.deploy.DeployMetadata.strings`).

Every file is written atomically (:mod:`contrastive.atomic`); :func:`export_model` refuses an
existing output unless told to replace it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from torch import nn

from contrastive import atomic
from contrastive.checkpoint import load_checkpoint, save_final
from contrastive.deploy import (
    METADATA_KEY,
    Deployable,
    DeployMetadata,
    What,
    load_stage,
    rebuild_network,
    record_from_json,
)
from contrastive.errors import MissingExtraError, RunError, SpecError, UnknownComponentError
from contrastive.interfaces import encoder_torchvision_model
from contrastive.registry import Registry, load_registry
from contrastive.spec.structure import structure_options
from contrastive.stages.records import ClassifierRecord, PretrainRecord, read_record
from contrastive.stages.results import FINAL

log = logging.getLogger(__name__)

_PREFIX = "encoder."


def encoder_state(final: PretrainRecord | ClassifierRecord, where: str) -> dict[str, torch.Tensor]:
    """The encoder's weights from a ``final.pt`` record (pretrain or classifier), without the prefix."""
    encoder = {k[len(_PREFIX) :]: v for k, v in final.state_dict.items() if k.startswith(_PREFIX)}
    if not encoder:
        raise RunError(f"{where} holds no encoder weights")
    return encoder


def torchvision_name(final: PretrainRecord | ClassifierRecord, registry: Registry, where: str) -> str | None:
    """The torchvision model the recorded encoder says it matches (its ``torchvision_model()``
    capability), or None: an encoder no installed plugin offers, or options that no longer
    validate."""
    try:
        entry = registry.get(final.encoder.category, final.encoder.name)
        options = structure_options(entry.options, final.encoder.options, source=where)
    except (UnknownComponentError, SpecError) as exc:
        log.info("%s: cannot ask the recorded encoder about torchvision: %s", where, exc)
        return None
    return encoder_torchvision_model(options)


def export(stage_dir: Path, out: Path, registry: Registry | None = None) -> tuple[Path, str | None]:
    """Write the encoder state_dict of ``stage_dir/final.pt`` to ``out``.

    Args:
        stage_dir: A finished stage directory (or its ``final.pt``).
        out: Where to write the state_dict.
        registry: Plugins that built the encoder, asked whether it is a torchvision network;
            default: every installed one.

    Returns:
        The written path, and the torchvision model name that loads it (None if none does).

    Raises:
        RunError: No finished stage there, or its file is not a contrastive checkpoint.
    """
    source = stage_dir / FINAL if stage_dir.is_dir() else stage_dir
    if not source.exists():
        raise RunError(f"{source} does not exist: export takes a finished stage directory (RUN_DIR/STAGE)")
    final = read_record(load_checkpoint(source), str(source))
    state = encoder_state(final, str(source))
    name = torchvision_name(final, load_registry() if registry is None else registry, str(source))
    if name is not None:
        name = name if _loads_into_torchvision(name, state) else None
    out.parent.mkdir(parents=True, exist_ok=True)
    save_final(out, state)
    return out, name


def _loads_into_torchvision(name: str, state: dict[str, torch.Tensor]) -> bool:
    import torchvision

    builder = getattr(torchvision.models, name, None)
    if builder is None:
        return False
    with torch.device("meta"):
        model = builder(weights=None)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    ok = not unexpected and set(missing) <= {"fc.weight", "fc.bias"}
    if not ok:
        log.info(
            "encoder does not load into torchvision.%s: missing %s, unexpected %s", name, missing, unexpected
        )
    return ok


Format = Literal["state_dict", "safetensors", "onnx", "torchscript"]
FORMATS: tuple[Format, ...] = ("state_dict", "safetensors", "onnx", "torchscript")

#: ONNX opset of the exported graphs (onnxruntime >= 1.14 runs it).
ONNX_OPSET = 17

#: Largest difference between onnxruntime's and PyTorch's outputs an export accepts, as a fraction
#: of the largest output magnitude (at least 1).
ONNX_TOLERANCE = 1e-4

#: What an exported graph (ONNX, TorchScript) takes, and what the weights-only formats' network takes.
GRAPH_INPUT = (
    "uint8 [batch, 3, S, S] RGB evaluation view (crop and resize as described); "
    "scaling and normalization are in the graph"
)
WEIGHTS_INPUT = "float32 [batch, 3, S, S]: the evaluation view scaled and normalized as described"


@attrs.frozen
class ExportResult:
    """What :func:`export_model` wrote.

    Attributes:
        path: The file.
        format: Its format.
        what: ``"encoder"`` or ``"classifier"``.
        torchvision_name: The torchvision model an encoder state_dict loads into, or None.
        max_difference: ONNX: largest |onnxruntime - PyTorch| on the check batch; else None.
    """

    path: Path
    format: Format
    what: What
    torchvision_name: str | None = None
    max_difference: float | None = None


def export_model(
    stage_dir: Path,
    out: Path,
    *,
    format: str = "state_dict",  # noqa: A002 - the command line's name
    what: str = "encoder",
    force: bool = False,
    registry: Registry | None = None,
) -> ExportResult:
    """Export a finished stage's encoder or classifier to ``out`` in ``format``.

    Args:
        stage_dir: ``RUN_DIR/STAGE`` (state_dict of the encoder: also its ``final.pt``).
        out: The file to write (atomically).
        format: One of :data:`FORMATS`.
        what: ``"encoder"`` or ``"classifier"`` (a finetune or distill stage).
        force: Replace an existing ``out``; without it an existing file is an error.
        registry: Plugins that rebuild the stage's components; default: every installed one.

    Raises:
        RunError: Unknown format or part, ``out`` exists, no finished stage, a pretraining stage
            asked for its classifier, or an ONNX graph that disagrees with PyTorch.
        MissingExtraError: ``onnx`` without the ``contrastive[onnx]`` extra.
    """
    if format not in FORMATS:
        raise RunError(f"--format {format}: unknown format (choose one of {', '.join(FORMATS)})")
    if what not in ("encoder", "classifier"):
        raise RunError(f"--what {what}: choose encoder or classifier")
    if out.is_dir() or (out.exists() and not force):
        kind = "a folder" if out.is_dir() else "a file"
        raise RunError(
            f"{out} is {kind} that already exists: choose another OUT, or pass --force to replace a file"
        )
    chosen_format: Format = format  # type: ignore[assignment]
    chosen: What = what  # type: ignore[assignment]
    registry = load_registry() if registry is None else registry
    if chosen_format == "state_dict" and chosen == "encoder":
        path, name = export(stage_dir, out, registry)
        return ExportResult(path, chosen_format, chosen, torchvision_name=name)
    if chosen_format == "state_dict":
        return ExportResult(_classifier_state(stage_dir, out, registry), chosen_format, chosen)
    if chosen_format == "onnx":
        _onnx_modules()  # the missing extra is reported before any work
    stage = load_stage(stage_dir, chosen, registry)
    if chosen_format == "safetensors":
        return ExportResult(_write_safetensors(out, stage.network, stage.metadata), chosen_format, chosen)
    deployable = stage.deployable()
    size = stage.metadata.input_size
    if chosen_format == "torchscript":
        return ExportResult(_write_torchscript(out, deployable, stage.metadata, size), chosen_format, chosen)
    path, difference = _write_onnx(out, deployable, stage.metadata, size)
    return ExportResult(path, chosen_format, chosen, max_difference=difference)


def _classifier_state(stage_dir: Path, out: Path, registry: Registry) -> Path:
    """Write the classifier's state_dict (keys of :class:`contrastive.stages.models.Classifier`),
    checked against the architecture its record describes."""
    source = stage_dir / FINAL if stage_dir.is_dir() else stage_dir
    if not source.is_file():
        raise RunError(f"{source} does not exist: export takes a finished stage directory (RUN_DIR/STAGE)")
    record = read_record(load_checkpoint(source), str(source))
    if isinstance(record, PretrainRecord):
        raise RunError(
            f"{stage_dir} is a pretraining stage: it has an encoder and a projection head, no classifier; "
            "export --what encoder, or the classifier of a finetune or distill stage"
        )
    network = rebuild_network(record, "classifier", registry, str(source))
    network.load_state_dict(record.state_dict)
    return save_final(out, dict(network.state_dict()))


def _example(size: int, batch: int, seed: int = 0) -> torch.Tensor:
    """Random evaluation views ``uint8 [batch, 3, size, size]``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)


# --- safetensors ------------------------------------------------------------------------------


def _write_safetensors(out: Path, network: nn.Module, metadata: DeployMetadata) -> Path:
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous() for k, v in network.state_dict().items()}
    return atomic.write_bytes(out, save(tensors, metadata=metadata.strings(WEIGHTS_INPUT)))


def read_safetensors_metadata(path: Path) -> DeployMetadata:
    """The :class:`DeployMetadata` in a safetensors file's header.

    Raises:
        RunError: Not a safetensors file, or not one ``contrastive export`` wrote.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            strings = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types on a bad header
        raise RunError(f"{path}: not a safetensors file ({type(exc).__name__}: {exc})") from exc
    return DeployMetadata.from_strings(dict(strings), str(path))


def load_safetensors(path: Path, registry: Registry | None = None) -> tuple[nn.Module, DeployMetadata]:
    """Rebuild the model a ``--format safetensors`` export holds, its weights loaded (eval mode).

    The network takes what the evaluation augmentation's ``on_device`` returns (``float32 [B, 3,
    S, S]``); wrap it in :class:`contrastive.deploy.Deployable` to feed uint8 views.

    Raises:
        RunError: Not such an export, or weights that do not fit the recorded architecture.
    """
    from safetensors.torch import load_file

    metadata = read_safetensors_metadata(path)
    record = record_from_json(metadata.record, f"{path}: record")
    network = rebuild_network(
        record, metadata.what, load_registry() if registry is None else registry, str(path)
    )
    try:
        network.load_state_dict(load_file(str(path)))
    except RuntimeError as exc:
        raise RunError(f"{path}: the weights do not fit the recorded architecture: {exc}") from exc
    return network, metadata


# --- TorchScript ------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence the tracer's and the legacy ONNX exporter's warnings (the result is checked)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _write_torchscript(out: Path, module: Deployable, metadata: DeployMetadata, size: int) -> Path:
    with _quiet_tracing(), torch.no_grad():
        traced = torch.jit.trace(module, (_example(size, 2),), check_inputs=[(_example(size, 3, seed=1),)])
    extra = metadata.strings(GRAPH_INPUT)
    buffer = io.BytesIO()
    with _quiet_tracing():
        torch.jit.save(traced, buffer, _extra_files=extra)
    return atomic.write_bytes(out, buffer.getvalue())


def load_torchscript(path: Path) -> tuple[torch.jit.ScriptModule, DeployMetadata]:
    """A ``--format torchscript`` export (``torch.jit.load``) and its metadata.

    Raises:
        RunError: Not a TorchScript file, or not one ``contrastive export`` wrote.
    """
    extra = {METADATA_KEY: ""}
    try:
        with _quiet_tracing():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise RunError(f"{path}: not a TorchScript file ({reason})") from exc
    text = extra[METADATA_KEY]
    strings = {METADATA_KEY: text.decode() if isinstance(text, bytes) else text} if text else {}
    return module, DeployMetadata.from_strings(strings, str(path))


# --- ONNX -------------------------------------------------------------------------------------


def _onnx_modules() -> tuple[Any, Any]:
    """``onnx`` and ``onnxruntime``, or the error naming the extra that installs them."""
    try:
        import onnx
    except ImportError as exc:
        raise MissingExtraError("the onnx format", "onnx", "onnx") from exc
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingExtraError("the onnx format", "onnxruntime", "onnx") from exc
    return onnx, onnxruntime


def onnx_session(model_bytes: bytes) -> Any:
    """An onnxruntime CPU inference session of a serialized model."""
    _, onnxruntime = _onnx_modules()
    settings = onnxruntime.SessionOptions()
    settings.log_severity_level = 3
    return onnxruntime.InferenceSession(model_bytes, settings, providers=["CPUExecutionProvider"])


def _write_onnx(out: Path, module: Deployable, metadata: DeployMetadata, size: int) -> tuple[Path, float]:
    onnx, _ = _onnx_modules()
    output = "logits" if metadata.what == "classifier" else "features"
    buffer = io.BytesIO()
    with _quiet_tracing(), torch.no_grad():
        torch.onnx.export(
            module,
            (_example(size, 2),),
            buffer,  # type: ignore[arg-type]  # the TorchScript-based exporter writes to a file object
            dynamo=False,
            input_names=["images"],
            output_names=[output],
            dynamic_axes={"images": {0: "batch"}, output: {0: "batch"}},
            opset_version=ONNX_OPSET,
        )
    model = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata.strings(GRAPH_INPUT).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    data = model.SerializeToString()
    difference = check_onnx(data, module, _example(size, 3, seed=1))
    return atomic.write_bytes(out, data), difference


def check_onnx(model_bytes: bytes, module: nn.Module, images: torch.Tensor) -> float:
    """Run a serialized ONNX graph and ``module`` on the same ``uint8 [B, 3, S, S]`` views.

    Returns:
        The largest absolute difference of their outputs.

    Raises:
        RunError: It exceeds :data:`ONNX_TOLERANCE` of the largest output magnitude (at least 1).
    """
    session = onnx_session(model_bytes)
    (got,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    module.eval()
    with torch.no_grad():
        expected = module(images)
    difference = float((torch.from_numpy(got) - expected).abs().max())
    scale = max(1.0, float(expected.abs().max()))
    if not difference <= ONNX_TOLERANCE * scale:
        raise RunError(
            f"the ONNX graph disagrees with PyTorch by {difference:.3g} "
            f"(allowed {ONNX_TOLERANCE * scale:.3g}): an operation of this model does not export faithfully"
        )
    return difference


def read_onnx_metadata(model_bytes: bytes, where: str) -> DeployMetadata:
    """The :class:`DeployMetadata` in a serialized ONNX model's ``metadata_props``.

    Raises:
        RunError: Not an ONNX model, or not one ``contrastive export`` wrote.
    """
    onnx, _ = _onnx_modules()
    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise RunError(f"{where}: not an ONNX model ({type(exc).__name__}: {exc})") from exc
    return DeployMetadata.from_strings({p.key: p.value for p in model.metadata_props}, where)


def metadata_json(metadata: DeployMetadata, graph_input: str = GRAPH_INPUT) -> str:
    """The metadata document as indented JSON (for a person)."""
    return json.dumps(metadata.to_json(graph_input), indent=2, default=str)
