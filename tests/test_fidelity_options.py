"""Options that pick between the official TF1 and TF2 behaviours (README, "Fidelity").

``finetune.freeze_head``: TF1 (``simclr_tf1/model.py``) trains only the ``trainable_variables_inblock_*``
collections when fine-tuning, which hold the ResNet's variables (``resnet.py``) and the supervised
head's (``model_util.supervised_head``) but not the projection head's: the head layers it
fine-tunes from stay as pretrained. TF2 trains them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contrastive.checkpoint import latest_checkpoint, load_checkpoint
from contrastive.errors import SpecError
from contrastive.runner import run
from contrastive.spec.loader import load
from tests.tiny_specs import DIGITS_SPEC, TINY_DIGITS_OVERRIDES, load_state_dict

pytest_plugins = ["tests.stage_fixtures"]  # its fixtures: digits_data, digits_env

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


Weights = dict[str, torch.Tensor]


def _finetune(tmp_path: Path, name: str, freeze: bool) -> tuple[Weights, Weights, int]:
    """Pretrain, 2 fine-tuning steps: pretrained and fine-tuned weights, the optimizer's tensor count."""
    overrides = [*TINY_DIGITS_OVERRIDES, f"finetune.freeze_head={str(freeze).lower()}"]
    run_dir = tmp_path / name
    run(load(DIGITS_SPEC, overrides), run_dir=run_dir, stages=("pretrain", "finetune"))
    pretrained = load_state_dict(run_dir / "pretrain" / "final.pt")
    tuned = load_state_dict(run_dir / "finetune" / "final.pt")
    state = load_checkpoint(latest_checkpoint(run_dir / "finetune" / "checkpoints"))  # type: ignore[arg-type]
    optimizer = state["optimizer"]
    tensors = sum(len(group["params"]) for group in optimizer["param_groups"])
    assert set(optimizer["state"]) <= {i for group in optimizer["param_groups"] for i in group["params"]}
    return pretrained, tuned, tensors


def test_freeze_head_keeps_the_kept_head_layer_as_pretrained_and_out_of_the_optimizer(
    digits_env: Path, tmp_path: Path
) -> None:
    pretrained, frozen, frozen_tensors = _finetune(tmp_path, "frozen", True)
    _, trained, trained_tensors = _finetune(tmp_path, "trained", False)
    head = [k for k in frozen if k.startswith("head.") and not k.endswith(BUFFERS)]
    assert head, "fine-tuning from layer 1 keeps a head layer"
    for key in head:
        assert torch.equal(frozen[key], pretrained[key]), key  # TF1: not trained
    assert any(not torch.equal(trained[key], pretrained[key]) for key in head)  # TF2: trained
    encoder = [k for k in frozen if k.startswith("encoder.") and not k.endswith(BUFFERS)]
    assert any(not torch.equal(frozen[key], pretrained[key]) for key in encoder)  # the rest trains
    # The frozen head's tensors are not handed to the optimizer (no momentum buffers for them).
    assert trained_tensors - frozen_tensors == len(head)


def test_freeze_head_needs_a_head_layer(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"finetune\.freeze_head: from_layer = 0 keeps no head layer"):
        load(DIGITS_SPEC, [*TINY_DIGITS_OVERRIDES, "finetune.freeze_head=true", "finetune.from_layer=0"])
