"""Spec semantics a user can predict: a new component name starts from that component's defaults,
a loss that cannot serve its stage fails validation, problems name the source that caused them
(--set, the extends key), disabled plugins are named, and a misspelled --stage gets a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from contrastive import NoOptions
from contrastive.cli import cli
from contrastive.errors import SpecError
from contrastive.registry import Registry, load_registry
from contrastive.spec.loader import load
from tests import fake_plugins
from tests.conftest import entry_point
from tests.tiny_specs import DIGITS_SPEC

BASE = """
[experiment]
name = "base"

[pretrain]
epochs = 10
batch_size = 64

[pretrain.dataset]
name = "webdataset"
urls = "x"

[pretrain.loss]
name = "nt_xent"
temperature = 0.5
reduction = "sum"

[pretrain.encoder]
depth = 18
"""


def write(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(exc: pytest.ExceptionInfo[SpecError]) -> list[str]:
    return [str(p) for p in exc.value.problems]


def test_a_child_spec_choosing_another_component_starts_from_its_defaults(
    tmp_path: Path, fake_registry: Registry
) -> None:
    write(tmp_path, BASE, "base.toml")
    # cross_entropy takes no options: the base's nt_xent options are not carried over to it.
    child = write(tmp_path, 'extends = "base.toml"\n[pretrain.loss]\nname = "cross_entropy"\n', "a.toml")
    loss = load(child, registry=fake_registry).spec.pretrain.loss
    assert (loss.name, loss.options) == ("cross_entropy", NoOptions())
    # Options the child repeats are kept, the others are the new component's defaults.
    text = 'extends = "base.toml"\n[pretrain.loss]\ntemperature = 0.3\nname = "distillation"\n'
    loss = load(write(tmp_path, text, "b.toml"), registry=fake_registry).spec.pretrain.loss
    assert loss.options == fake_plugins.LossOptions(temperature=0.3, reduction="mean")
    # The same name keeps the base's options; so does naming the default a base left implicit.
    text = 'extends = "base.toml"\n[pretrain.loss]\nname = "nt_xent"\n[pretrain.encoder]\nname = "resnet"\n'
    spec = load(write(tmp_path, text, "c.toml"), registry=fake_registry).spec
    assert spec.pretrain.loss.options == fake_plugins.LossOptions(temperature=0.5, reduction="sum")
    assert spec.pretrain.encoder.options.depth == 18
    # A problem in the child's options is the child's.
    text = 'extends = "base.toml"\n[pretrain.loss]\nname = "distillation"\ntypo = 1\n'
    with pytest.raises(SpecError) as exc:
        load(write(tmp_path, text, "d.toml"), registry=fake_registry)
    assert problems(exc) == [
        f"{tmp_path / 'd.toml'}: pretrain.loss.typo: unknown key; expected one of: temperature, reduction"
    ]


def test_set_choosing_another_component_starts_from_its_defaults(
    tmp_path: Path, fake_registry: Registry
) -> None:
    path = write(tmp_path, BASE, "base.toml")
    loss = load(path, ["pretrain.loss.name=cross_entropy"], registry=fake_registry).spec.pretrain.loss
    assert loss.options == NoOptions()
    # Options given with --set are kept whatever their order; the file's are left behind.
    for overrides in (
        ["pretrain.loss.temperature=0.3", "pretrain.loss.name=distillation"],
        ["pretrain.loss.name=distillation", "pretrain.loss.temperature=0.3"],
    ):
        loss = load(path, overrides, registry=fake_registry).spec.pretrain.loss
        assert loss.options == fake_plugins.LossOptions(temperature=0.3, reduction="mean"), overrides
    with pytest.raises(SpecError) as exc:
        load(
            path, ["pretrain.loss.name=cross_entropy", "pretrain.loss.temperature=1"], registry=fake_registry
        )
    assert problems(exc) == ["--set: pretrain.loss.temperature: unknown key; this table takes none"]


def test_the_digits_spec_with_another_optimizer_uses_that_optimizers_defaults() -> None:
    registry = load_registry()
    spec = load(DIGITS_SPEC, ["pretrain.optimizer.name=adamw"], registry=registry).spec
    adamw = registry.get("optimizers", "adamw").options
    assert spec.pretrain.optimizer.options == adamw()  # not the spec's LARS lr and weight decay


def test_a_loss_that_cannot_serve_its_stage_fails_validation(tmp_path: Path) -> None:
    registry = load_registry()
    with pytest.raises(SpecError) as exc:
        load(
            DIGITS_SPEC, ["finetune.loss.name=nt_xent", "distill.loss.name=cross_entropy"], registry=registry
        )
    assert problems(exc) == [
        "--set: finetune.loss.name: 'nt_xent' is a contrastive loss (loss(z1, z2) on two views); "
        "finetune needs a supervised loss (loss(logits, targets) on labels)",
        "--set: distill.loss.name: 'cross_entropy' is a supervised loss (loss(logits, targets) on "
        "labels); distill needs a distillation loss (loss(student_logits, teacher_logits, targets) "
        "with a teacher)",
    ]
    child = write(tmp_path, f'extends = "{DIGITS_SPEC}"\n[pretrain.loss]\nname = "distillation"\n', "c.toml")
    result = CliRunner().invoke(cli, ["validate", str(child)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{child}: pretrain.loss.name: 'distillation' is a distillation loss" in result.output


def test_a_head_that_does_not_say_its_layers_cannot_be_cut(tmp_path: Path, fake_registry: Registry) -> None:
    text = BASE + '\n[finetune]\nfrom_layer = 1\n[finetune.dataset]\nname = "webdataset"\nurls = "x"\n'
    path = write(tmp_path, text, "spec.toml")
    with pytest.raises(SpecError) as exc:
        load(path, registry=fake_registry)
    assert problems(exc) == [
        f"{path}: finetune.from_layer: the pretraining head 'projection_mlp' cannot be cut (its options "
        "do not say how many layers it has: no layer_count()); use from_layer = 0"
    ]
    load(path, ["finetune.from_layer=0"], registry=fake_registry)


def test_set_problems_name_set(tmp_path: Path) -> None:
    registry = load_registry()
    with pytest.raises(SpecError) as exc:
        load(DIGITS_SPEC, ["foo.bar=1", "pretrain.augmentation.mean=[0.5, 0.5]"], registry=registry)
    assert problems(exc) == [
        "--set: foo: unknown key; expected one of: experiment, runtime, pretrain, finetune, distill, bench",
        "--set: pretrain.augmentation: mean and std need one value per RGB channel, got [0.5, 0.5] and "
        "[0.229, 0.224, 0.225]",
    ]
    # The same problem written in a file is the file's, even when --set touches other tables.
    spec = write(
        tmp_path, f'extends = "{DIGITS_SPEC}"\n[pretrain.augmentation]\nmean = [0.5, 0.5]\n', "c.toml"
    )
    with pytest.raises(SpecError) as exc:
        load(spec, ["pretrain.epochs=3"], registry=registry)
    assert [p.source for p in exc.value.problems] == [str(spec)]


def test_a_disabled_plugins_component_says_the_plugin_is_disabled(tmp_path: Path) -> None:
    points = [
        entry_point("core", fake_plugins.Core()),
        entry_point("thirdparty", fake_plugins.ThirdParty(), "contrastive-thirdparty", "0.1.0"),
    ]
    registry = load_registry(points, disabled=["thirdparty"])
    path = write(tmp_path, BASE.replace('name = "nt_xent"', 'name = "soft_targets"'), "spec.toml")
    path.write_text(path.read_text().replace('temperature = 0.5\nreduction = "sum"\n', ""))
    with pytest.raises(SpecError) as exc:
        load(path, registry=registry)
    assert problems(exc) == [
        f"{path}: pretrain.loss.name: unknown losses component 'soft_targets'; CONTRASTIVE_DISABLE_PLUGINS "
        "disables the installed plugin 'thirdparty' (contrastive-thirdparty 0.1.0), which may offer it; "
        "run `contrastive list-plugins --category losses` to see what is installed"
    ]


def test_a_misspelled_stage_gets_a_suggestion() -> None:
    result = CliRunner().invoke(cli, ["run", str(DIGITS_SPEC), "--stage", "pretrian", "--dry-run"])
    assert result.exit_code == 2
    assert 'pretrian (did you mean "pretrain"?) not in this spec' in result.output
