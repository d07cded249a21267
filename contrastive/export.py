"""``contrastive export``: a stage's encoder as a plain state_dict (torchvision-loadable when it can be)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from contrastive.checkpoint import load_checkpoint, save_final
from contrastive.errors import RunError
from contrastive.stages.common import FINAL

log = logging.getLogger(__name__)

_PREFIX = "encoder."


def encoder_state(final: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """The encoder's weights from a ``final.pt`` (pretrain or classifier), without the prefix."""
    state = final.get("state_dict")
    if not isinstance(state, dict):
        raise RunError(f"{where} holds no state_dict; is it a contrastive final.pt?")
    encoder = {k[len(_PREFIX) :]: v for k, v in state.items() if k.startswith(_PREFIX)}
    if not encoder:
        raise RunError(f"{where} holds no encoder weights")
    return encoder


def torchvision_name(final: dict[str, Any]) -> str | None:
    """``resnetN`` when the encoder matches a torchvision ResNet (width 1, no SK, ImageNet stem)."""
    rec = final.get("encoder") or {}
    options = rec.get("options", {})
    if rec.get("name") != "resnet" or options.get("sk_ratio", 0) or options.get("cifar_stem"):
        return None
    if options.get("width_multiplier", 1) != 1 or options.get("base_width", 64) != 64:
        return None
    return f"resnet{options.get('depth', 50)}"


def export(stage_dir: Path, out: Path) -> tuple[Path, str | None]:
    """Write the encoder state_dict of ``stage_dir/final.pt`` to ``out``.

    Returns:
        The written path, and the torchvision model name that loads it (None if none does).

    Raises:
        RunError: No finished stage there, or its file is not a contrastive checkpoint.
    """
    source = stage_dir / FINAL if stage_dir.is_dir() else stage_dir
    if not source.exists():
        raise RunError(f"{source} does not exist: export takes a finished stage directory (RUN_DIR/STAGE)")
    final = load_checkpoint(source)
    state = encoder_state(final, str(source))
    name = torchvision_name(final)
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
