"""Helpers of the stage, resume and torchrun tests: tiny specs, subprocesses, reading run outputs.

Every spec here is tiny (8 px views, a ResNet-18 with 4 base filters) so a stage takes a fraction
of a second on a CPU. Subprocesses find the digits data through ``$CONTRASTIVE_DATA``
(:func:`subprocess_env`); the fixtures that build it are in ``tests/stage_fixtures.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from contrastive.data.digits import DATA_ENV

REPO = Path(__file__).resolve().parents[1]
DIGITS_SPEC = REPO / "specs" / "digits_1pct.toml"

#: ``--set`` overrides that shrink ``specs/digits_1pct.toml`` to a few seconds for all three stages.
TINY_DIGITS_OVERRIDES = (
    "runtime.device=cpu",
    "runtime.num_workers=0",
    "runtime.log_every=1",
    "runtime.checkpoint_every=2",
    "pretrain.max_steps=3",
    "pretrain.batch_size=32",
    "pretrain.encoder.base_width=4",
    "pretrain.augmentation.size=8",
    "pretrain.eval_augmentation.size=8",
    "finetune.max_steps=2",
    "finetune.augmentation.size=8",
    "finetune.eval_augmentation.size=8",
    "finetune.eval_dataset.labels_per_class=2",
    "distill.max_steps=2",
    "distill.batch_size=32",
    "distill.encoder.base_width=4",
    "distill.augmentation.size=8",
    "distill.eval_augmentation.size=8",
    "distill.eval_dataset.labels_per_class=2",
)


def tiny_pretrain_spec(
    *,
    name: str = "tiny",
    seed: int = 0,
    batch_size: int = 64,
    epochs: int = 2,
    max_steps: int = 4,
    num_workers: int = 0,
    checkpoint_every: int = 1,
    deterministic: bool = False,
    dataset: str = 'name = "digits"\nsplit = "train"\nlabelled = false',
    augmentation: str = 'name = "simclr"\nsize = 8\ncrop_min_area = 0.3',
    normalization: str = "global_bn",
    schedule: str = "warmup_cosine",
) -> str:
    """A pretrain-only spec (TOML text) on 8 px views and a ResNet-18 with 4 base filters."""
    return f"""
[experiment]
name = "{name}"
seed = {seed}

[runtime]
device = "cpu"
num_workers = {num_workers}
log_every = 1
checkpoint_every = {checkpoint_every}
deterministic = {str(deterministic).lower()}

[pretrain]
epochs = {epochs}
batch_size = {batch_size}
max_steps = {max_steps}

[pretrain.dataset]
{dataset}

[pretrain.augmentation]
{augmentation}

[pretrain.normalization]
name = "{normalization}"

[pretrain.encoder]
name = "resnet"
depth = 18
cifar_stem = true
base_width = 4

[pretrain.head]
name = "projection_mlp"
num_layers = 2
out_dim = 16

[pretrain.loss]
name = "nt_xent"
temperature = 0.2

[pretrain.optimizer]
name = "lars"
lr = 0.1

[pretrain.schedule]
name = "{schedule}"
"""


def write_spec(path: Path, text: str) -> Path:
    """Write spec text to ``path`` and return it."""
    path.write_text(text, encoding="utf-8")
    return path


def subprocess_env(data: Path) -> dict[str, str]:
    """Environment of a ``python -m contrastive`` subprocess: the test data, one CPU thread."""
    env = dict(os.environ)
    env.update({DATA_ENV: str(data), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return env


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a stage's ``final.pt`` (loaded with ``weights_only=True``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and isinstance(state.get("state_dict"), dict)
    return dict(state["state_dict"])


def files_snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path to bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def spec_value(stage: Any, dotted: str) -> Any:
    """``stage.component.option`` or ``stage.key`` of a structured spec table: a component's name
    (``"loss.name"``) or one of its options (``"loss.temperature"``)."""
    first, _, rest = dotted.partition(".")
    if not rest:
        return getattr(stage, first)
    component = getattr(stage, first)
    return component.name if rest == "name" else getattr(component.options, rest)
