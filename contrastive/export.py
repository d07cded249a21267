"""``contrastive export``: a stage's encoder as a plain state_dict (torchvision-loadable when it can be)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from contrastive.checkpoint import load_checkpoint, save_final
from contrastive.errors import RunError, SpecError, UnknownComponentError
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
