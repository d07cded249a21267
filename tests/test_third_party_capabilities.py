"""A third-party encoder, head and loss whose options share no name with the built-ins' go through
pretrain -> finetune -> distill -> export and get the validation a built-in gets: core asks
components through their capabilities (contrastive/interfaces.py), never by option name."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch

from contrastive.errors import SpecError
from contrastive.export import export
from contrastive.registry import Registry, discover_entry_points, load_registry
from contrastive.runner import run
from contrastive.spec.loader import load
from tests import fake_plugins
from tests.conftest import entry_point
from tests.tiny_specs import DIGITS_SPEC, TINY_DIGITS_OVERRIDES

pytest_plugins = ["tests.stage_fixtures"]  # its fixtures: digits_data, digits_env

#: The tiny digits run with the third-party components in place of the built-ins' (the digits
#: spec's resnet and projection_mlp options are left behind: a new name starts from its defaults).
OVERRIDES = (
    *(o for o in TINY_DIGITS_OVERRIDES if ".encoder." not in o),
    "pretrain.encoder.name=tiny_cnn",
    "pretrain.head.name=stacked_mlp",
    "pretrain.head.widths=[16, 8]",
    "distill.encoder.name=tiny_cnn",
    "distill.encoder.arch=torchvision_resnet18",
    "distill.loss.name=soft_targets",
    "distill.loss.hard_label_weight=0.5",
)


def registry_with_third_party() -> Registry:
    """Every installed plugin (the built-ins) and the test's third-party one."""
    third_party = entry_point("thirdparty", fake_plugins.ThirdParty(), "contrastive-thirdparty", "0.1.0")
    return load_registry([*discover_entry_points(), third_party], disabled=())


def problems(exc: pytest.ExceptionInfo[SpecError]) -> list[str]:
    return [str(p) for p in exc.value.problems]


def test_its_options_share_no_name_with_a_builtin() -> None:
    registry = registry_with_third_party()
    builtin, third_party = set(), set()
    for entry in registry.components():
        names = {field.name for field in attrs.fields(entry.options)}
        (builtin if entry.plugin.distribution == "contrastive" else third_party).update(names)
    assert third_party == {"channels", "arch", "widths", "tau", "hard_label_weight", "bank", "scale"}
    assert not third_party & builtin


def test_it_gets_the_validation_a_builtin_gets() -> None:
    registry = registry_with_third_party()
    # The built-in projection head: 3 layers in the digits spec.
    with pytest.raises(SpecError) as exc:
        load(DIGITS_SPEC, ["finetune.from_layer=4"], registry=registry)
    assert problems(exc) == ["--set: finetune.from_layer: the pretraining head has 3 layers, cannot keep 4"]
    # The third-party head says how many layers it has through layer_count().
    with pytest.raises(SpecError) as exc:
        load(DIGITS_SPEC, [*OVERRIDES, "finetune.from_layer=3"], registry=registry)
    assert problems(exc) == ["--set: finetune.from_layer: the pretraining head has 2 layers, cannot keep 3"]
    load(DIGITS_SPEC, [*OVERRIDES, "finetune.from_layer=2"], registry=registry)
    # The third-party loss says how it is called through loss_kind().
    with pytest.raises(SpecError) as exc:
        load(DIGITS_SPEC, [*OVERRIDES, "finetune.loss.name=soft_targets"], registry=registry)
    assert problems(exc) == [
        "--set: finetune.loss.name: 'soft_targets' is a distillation loss (loss(student_logits, "
        "teacher_logits, targets) with a teacher); finetune needs a supervised loss "
        "(loss(logits, targets) on labels)"
    ]
    # Its options are checked like any: a misspelled option, located at --set.
    with pytest.raises(SpecError) as exc:
        load(DIGITS_SPEC, [*OVERRIDES, "distill.loss.hard_label_wieght=1"], registry=registry)
    assert problems(exc) == [
        '--set: distill.loss.hard_label_wieght: unknown key (did you mean "hard_label_weight"?)'
    ]


def test_pretrain_finetune_distill_and_export(digits_env: Path, tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    registry = registry_with_third_party()
    run_dir = tmp_path / "run"
    loaded = load(DIGITS_SPEC, OVERRIDES, registry=registry)
    assert loaded.spec.pretrain is not None and loaded.spec.distill is not None
    assert loaded.spec.pretrain.encoder.options == fake_plugins.TinyEncoderOptions()
    outcome = run(loaded, run_dir=run_dir)

    results = outcome.results
    assert [results[s]["steps"] for s in ("pretrain", "finetune", "distill")] == [3, 2, 2]
    assert results["finetune"]["labelled_images"] == 10
    # uses_labels() is what tells distillation that its loss learns from labels.
    assert results["distill"]["labelled_images"] == 1297
    for stage in ("finetune", "distill"):
        assert 0.0 <= results[stage]["top1"] <= results[stage]["top5"] <= 1.0

    # Fine-tuning kept the third-party head's first layer (from_layer = 1 in the digits spec).
    finetuned = torch.load(run_dir / "finetune" / "final.pt", map_location="cpu", weights_only=True)
    head_keys = {k for k in finetuned["state_dict"] if k.startswith("head.")}
    assert head_keys and all(k.startswith("head.layers.0.") for k in head_keys)

    # export asks the encoder through torchvision_model(): the tiny CNN is no torchvision network,
    # the distilled student is torchvision's ResNet-18 and loads into it.
    for stage, expected in (("pretrain", None), ("finetune", None), ("distill", "resnet18")):
        out, name = export(run_dir / stage, tmp_path / f"{stage}.pt", registry=registry)
        assert out.exists() and name == expected, stage
    exported = torch.load(tmp_path / "distill.pt", map_location="cpu", weights_only=True)
    missing, unexpected = torchvision.models.resnet18(weights=None).load_state_dict(exported, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and unexpected == []


def test_its_contrastive_loss_gets_a_memory_and_momentum_encoder(digits_env: Path, tmp_path: Path) -> None:
    """remembers_negatives() is all core asks: pretraining feeds the loss's remember() every step
    from the momentum encoder and checkpoints the loss's state; without it the option is refused."""
    registry = registry_with_third_party()
    overrides = [*OVERRIDES, "pretrain.loss.name=banked_infonce", "pretrain.memory_momentum=0.5"]
    with pytest.raises(SpecError) as exc:
        load(DIGITS_SPEC, overrides, registry=registry)
    assert problems(exc)[0].startswith("--set: pretrain.memory_momentum: a momentum encoder only feeds")
    loaded = load(DIGITS_SPEC, [*overrides, "pretrain.loss.bank=40"], registry=registry)
    run(loaded, run_dir=tmp_path / "run", stages=["pretrain"])
    checkpoints = sorted((tmp_path / "run" / "pretrain" / "checkpoints").glob("ckpt-*.pt"))
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)["state"]
    assert state["loss._extra_state"]["fed"] == 3  # one feed a step
    assert state["loss._extra_state"]["keys"].shape == (40, 8)  # 3 steps of 32 view-2 keys, cut to 40
    assert any(key.startswith("network.encoder.") for key in state)  # the momentum encoder
