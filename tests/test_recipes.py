"""The ImageNet specs hold SimCLRv2's published recipe.

The expected values are transcribed here from the paper (arXiv 2006.10029, section 4 "Settings and
Implementation Details") and from the official repository's README commands and flag defaults
(``../shared/reference/simclr_tf2``); each spec cites its sources value by value.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from contrastive import load_spec
from contrastive.registry import load_registry
from contrastive.steps import StepCount
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


# ----------------------------------------------------------------------------- memory, steps, resize

#: Training images of ImageNet-2012 and of the published 1% / 10% subsets (``1percent.txt``,
#: ``10percent.txt`` in the official repository's imagenet_subsets/; checked against
#: ``../shared/data/imagenet_subsets`` when it is there).
IMAGENET_TRAIN = 1_281_167
SUBSETS = {"1percent.txt": 12_811, "10percent.txt": 128_116}
SHARED_SUBSETS = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet_subsets"

#: (spec, pretraining, fine-tuning, distillation steps; None: no such stage), by the official
#: rule num_examples * epochs // batch + 1 (simclr_tf2/model.py get_train_steps).
STEP_CASES = [
    ("simclrv2_1pct.toml", 250_228, 751, 125_114),
    ("simclrv2_10pct.toml", 250_228, 3_754, 125_114),
    ("simclrv2_r152x3sk_to_r50_1pct.toml", 250_228, 751, 125_114),
    ("simclrv2_official_r152x3sk_distill_1pct.toml", None, 751, 125_114),
    ("simclr_imagenet_100ep.toml", 31_279, None, None),
]

#: Which stage trains on how many images.
STAGE_IMAGES = {"pretrain": IMAGENET_TRAIN, "distill": IMAGENET_TRAIN}
FINETUNE_IMAGES = {
    "simclrv2_10pct.toml": SUBSETS["10percent.txt"],
}

#: The resize of every augmentation table: the official TF2 code's (tf.image.resize bicubic) for the
#: SimCLRv2 recipes; TF1's resize_bicubic where the weights or the recipe come from the TF1 code.
RESIZE = {
    "simclrv2_1pct.toml": "tf2",
    "simclrv2_10pct.toml": "tf2",
    "simclrv2_r152x3sk_to_r50_1pct.toml": "tf2",
    "simclrv2_official_r152x3sk_distill_1pct.toml": "tf1",
    "simclr_imagenet_100ep.toml": "tf1",
}


def test_the_subset_sizes_are_the_published_lists() -> None:
    if not SHARED_SUBSETS.is_dir():
        pytest.skip("../shared/data/imagenet_subsets is not here")
    for name, size in SUBSETS.items():
        lines = [line for line in (SHARED_SUBSETS / name).read_text().splitlines() if line.strip()]
        assert len(lines) == size, name


@pytest.mark.parametrize(("spec", "pretrain", "finetune", "distill"), STEP_CASES)
def test_imagenet_specs_train_the_official_step_counts(
    spec: str, pretrain: int | None, finetune: int | None, distill: int | None
) -> None:
    loaded = load_spec(SPECS / spec).spec
    for stage, expected in (("pretrain", pretrain), ("finetune", finetune), ("distill", distill)):
        table = getattr(loaded, stage)
        if expected is None:
            assert table is None or (stage == "pretrain" and spec.startswith("simclrv2_official"))
            continue
        assert table.steps == "official", f"{stage}.steps"
        images = STAGE_IMAGES.get(stage) or FINETUNE_IMAGES.get(spec, SUBSETS["1percent.txt"])
        count = StepCount(table.steps, images, table.batch_size, table.epochs)
        assert count.total == images * table.epochs // table.batch_size + 1 == expected, stage


def test_the_pretraining_schedule_follows_the_official_count() -> None:
    # WarmUpAndCosineDecay: warmup int(round(warmup_epochs * num_examples // batch)), cosine to
    # get_train_steps; [I77]: warmup 5% of 800 epochs = 40.
    pretrain = load_spec(SPECS / "simclrv2_1pct.toml").spec.pretrain
    assert pretrain is not None
    count = StepCount(pretrain.steps, IMAGENET_TRAIN, pretrain.batch_size, pretrain.epochs)
    builder = load_registry().get("schedules", pretrain.schedule.name).component
    schedule = builder.build(
        pretrain.schedule.options,
        base_lr=pretrain.optimizer.options.lr,
        global_batch_size=pretrain.batch_size,
        steps_per_epoch=count.per_epoch,
        epochs=pretrain.epochs,
        steps=count,
    )
    assert (schedule.warmup_steps, schedule.total_steps) == (12_511, 250_228)
    assert schedule.warmup_steps == 40 * IMAGENET_TRAIN // 4096


@pytest.mark.parametrize("spec", [case[0] for case in CASES])
def test_simclrv2_pretraining_keeps_the_papers_memory_of_negatives(spec: str) -> None:
    # [P] (via [S]): 64K negatives from a memory network with EMA decay 0.999, as MoCo; MoCo's
    # queue holds one key per image.
    pretrain = load_spec(SPECS / spec).spec.pretrain
    assert pretrain is not None
    loss = pretrain.loss.options
    assert (loss.queue_size, loss.queue_keys) == (65_536, "one_view")
    assert pretrain.memory_momentum == 0.999


def test_simclr_v1_recipe_has_no_memory() -> None:
    pretrain = load_spec(SPECS / "simclr_imagenet_100ep.toml").spec.pretrain
    assert pretrain is not None
    assert pretrain.loss.options.queue_size == 0 and pretrain.memory_momentum == 0.0


@pytest.mark.parametrize(("spec", "resize"), RESIZE.items())
def test_imagenet_specs_resize_as_the_official_code(spec: str, resize: str) -> None:
    loaded = load_spec(SPECS / spec).spec
    tables = 0
    for stage in ("pretrain", "finetune", "distill"):
        table = getattr(loaded, stage)
        if table is None:
            continue
        keys = ["augmentation"] + (["eval_augmentation"] if stage != "pretrain" else [])
        for key in keys:
            assert getattr(table, key).options.resize == resize, f"{stage}.{key}"
            tables += 1
    assert tables >= 1


@pytest.mark.parametrize("spec", RESIZE)
def test_imagenet_specs_fine_tune_the_head_layer_and_distill_without_tau_squared(spec: str) -> None:
    # Defaults follow [F] (TF2) and [P]: the kept head layer trains; the soft targets have no tau^2.
    loaded = load_spec(SPECS / spec).spec
    if loaded.finetune is not None:
        assert loaded.finetune.freeze_head is False
    if loaded.distill is not None:
        assert loaded.distill.loss.options.scale_by_temperature_squared is False
