"""The ImageNet specs hold SimCLRv2's published recipe.

The expected values are transcribed here from the paper (arXiv 2006.10029, section 4 "Settings and
Implementation Details") and from the official repository's README commands and flag defaults
(``../shared/reference/simclr_tf2``); each spec cites its sources value by value.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from contrastive import load_spec
from tests.tiny_specs import spec_value

SPECS = Path(__file__).resolve().parents[1] / "specs"

#: SimCLRv2 pretraining: 800 epochs at batch 4096, LARS 0.1 x sqrt(B), wd 1e-4, 5% warmup,
#: temperature 0.1, 3-layer projection head to 128, global BN, 224 px, official crop and max-pool.
PRETRAIN = {
    "epochs": 800,
    "batch_size": 4096,
    "optimizer.name": "lars",
    "optimizer.lr": 0.1,
    "optimizer.momentum": 0.9,
    "optimizer.weight_decay": 1e-4,
    "schedule.name": "warmup_cosine",
    "schedule.scaling": "sqrt",
    "schedule.warmup_fraction": 0.05,
    "loss.name": "nt_xent",
    "loss.temperature": 0.1,
    "head.num_layers": 3,
    "head.out_dim": 128,
    "normalization.name": "global_bn",
    "augmentation.size": 224,
    "augmentation.crop_sampler": "official",
    "augmentation.color_strength": 1.0,
    "encoder.maxpool_padding": "tf_same",
}

#: Fine-tuning: from head layer 1, batch 1024, LARS with sqrt scaling, no weight decay, no warmup;
#: 60 epochs with 1% of the labels, 30 with 10%.
FINETUNE = {
    "batch_size": 1024,
    "from_layer": 1,
    "optimizer.name": "lars",
    "optimizer.weight_decay": 0.0,
    "schedule.scaling": "sqrt",
    "schedule.warmup_fraction": 0.0,
    "augmentation.crop_sampler": "official",
    "classifier.zero_init": True,
}

#: (spec, pretrain encoder, fine-tuning epochs, fine-tuning lr, distillation temperature): 0.005 x
#: sqrt(B) for standard ResNets, 0.002 x sqrt(B) for wider and/or SK ones; distillation at
#: temperature 0.1 into the same architecture, 1.0 big-to-small.
CASES = [
    ("simclrv2_1pct.toml", (50, 1, 0.0), 60, 0.005, 0.1),
    ("simclrv2_10pct.toml", (50, 1, 0.0), 30, 0.005, 0.1),
    ("simclrv2_r152x3sk_to_r50_1pct.toml", (152, 3, 0.0625), 60, 0.002, 1.0),
]


@pytest.fixture(autouse=True)
def shard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IMAGENET_SHARDS", "IMAGENET_1PCT_SHARDS", "IMAGENET_10PCT_SHARDS"):
        monkeypatch.setenv(name, "/nonexistent/shards")


@pytest.mark.parametrize(("spec", "encoder", "ft_epochs", "ft_lr", "distill_tau"), CASES)
def test_imagenet_specs_follow_the_simclrv2_recipe(
    spec: str, encoder: tuple[int, int, float], ft_epochs: int, ft_lr: float, distill_tau: float
) -> None:
    loaded = load_spec(SPECS / spec).spec
    assert loaded.pretrain is not None and loaded.finetune is not None and loaded.distill is not None
    for key, expected in PRETRAIN.items():
        assert spec_value(loaded.pretrain, key) == expected, f"pretrain.{key}"
    depth, width, sk = encoder
    options = loaded.pretrain.encoder.options
    assert (options.depth, options.width_multiplier, options.sk_ratio) == (depth, width, sk)
    for key, expected in FINETUNE.items():
        assert spec_value(loaded.finetune, key) == expected, f"finetune.{key}"
    assert loaded.finetune.epochs == ft_epochs
    assert loaded.finetune.optimizer.options.lr == ft_lr
    assert loaded.distill.loss.options.temperature == distill_tau
    assert loaded.distill.loss.options.labelled_weight == 0.0  # unlabelled images only
    student = loaded.distill.encoder.options
    assert (student.depth, student.width_multiplier, student.sk_ratio) == (50, 1, 0.0)
