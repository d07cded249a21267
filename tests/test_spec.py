"""Spec loading: structure, every-error-at-once reporting, extends, --set, variables."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from contrastive.errors import SpecError
from contrastive.registry import Registry
from contrastive.spec.loader import load, parse_override, to_dict
from contrastive.spec.packaged import packaged_spec
from contrastive.spec.toml_writer import dumps

VALID = """
[experiment]
name = "toy"

[pretrain]
epochs = 10
batch_size = 64

[pretrain.dataset]
name = "webdataset"
urls = "data/train-{000000..000003}.tar"

[pretrain.loss]
name = "nt_xent"
temperature = 0.2
"""


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(exc: pytest.ExceptionInfo[SpecError]) -> list[str]:
    return [str(p) for p in exc.value.problems]


def test_valid_spec_fills_defaults(tmp_path: Path, fake_registry: Registry) -> None:
    loaded = load(write(tmp_path, VALID), registry=fake_registry)
    spec = loaded.spec
    assert spec.stages() == ["pretrain"]
    assert spec.pretrain is not None
    assert spec.pretrain.loss.name == "nt_xent"
    assert spec.pretrain.loss.options.temperature == 0.2
    assert spec.pretrain.encoder.name == "resnet"  # default component
    assert spec.pretrain.encoder.options.depth == 50  # default option
    assert spec.runtime.keep_checkpoints == 2
    assert spec.finetune is None


def test_every_problem_is_reported_at_once(tmp_path: Path, fake_registry: Registry) -> None:
    text = (
        VALID.replace("temperature = 0.2", "temprature = 0.2\nreduction = 'meen'")
        + """
[pretrain.encoder]
name = "resnet"
depth = 42
width = "two"

[runtime]
num_workers = -1
"""
    )
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as exc:
        load(path, registry=fake_registry)
    found = problems(exc)
    assert f'{path}: pretrain.loss.temprature: unknown key (did you mean "temperature"?)' in found
    assert any(p.startswith(f"{path}: pretrain.loss.reduction: expected") and '"mean"' in p for p in found)
    assert f"{path}: pretrain.encoder.depth: must be one of 18, 34, 50, got 42" in found
    assert any(p.startswith(f"{path}: pretrain.encoder.width: expected integer, got string") for p in found)
    assert f"{path}: runtime.num_workers: must be >= 0, got -1" in found
    assert len(found) == 5


def test_unknown_component_suggests_and_says_how_to_list(tmp_path: Path, fake_registry: Registry) -> None:
    path = write(tmp_path, VALID.replace('name = "nt_xent"', 'name = "nt_xnet"'))
    with pytest.raises(SpecError) as exc:
        load(path, registry=fake_registry)
    (message,) = problems(exc)
    assert message.startswith(f"{path}: pretrain.loss.name: unknown losses component 'nt_xnet'")
    assert "'nt_xent'" in message
    assert "contrastive list-plugins --category losses" in message


def test_missing_required_table_and_key(tmp_path: Path, fake_registry: Registry) -> None:
    text = VALID.replace('urls = "data/train-{000000..000003}.tar"', "") + "\n[finetune]\nepochs = 3\n"
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as exc:
        load(path, registry=fake_registry)
    found = problems(exc)
    assert any(p.startswith(f"{path}: pretrain.dataset.urls: missing required key") for p in found)
    assert any(p.startswith(f"{path}: finetune.dataset: missing table [finetune.dataset]") for p in found)


def test_wrong_kinds_bool_is_not_int_and_tables(tmp_path: Path, fake_registry: Registry) -> None:
    text = 'runtime = "fast"\n' + VALID.replace("epochs = 10", "epochs = true\nbatch_size_x = 1")
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as exc:
        load(path, registry=fake_registry)
    found = problems(exc)
    assert f"{path}: pretrain.epochs: expected integer, got boolean true" in found
    assert f"{path}: runtime: expected a table, got string 'fast'" in found
    assert any(p.startswith(f"{path}: pretrain.batch_size_x: unknown key") for p in found)


def test_toml_syntax_error_has_line_and_column(tmp_path: Path, fake_registry: Registry) -> None:
    path = write(tmp_path, "[pretrain]\nepochs = = 3\n")
    with pytest.raises(SpecError) as exc:
        load(path, registry=fake_registry)
    (message,) = problems(exc)
    assert message.startswith(f"{path}:2:")
    assert "invalid TOML" in message


def test_no_stage_is_an_error(tmp_path: Path, fake_registry: Registry) -> None:
    with pytest.raises(SpecError) as exc:
        load(write(tmp_path, '[experiment]\nname = "x"\n'), registry=fake_registry)
    assert "no stage to run" in problems(exc)[0]


def test_extends_merges_and_locates_problems_in_the_base(tmp_path: Path, fake_registry: Registry) -> None:
    base = write(tmp_path, VALID.replace("temperature = 0.2", "temperature = 0.5\ntypo = 1"), "base.toml")
    child = write(tmp_path, 'extends = "base.toml"\n[pretrain]\nepochs = 3\n', "child.toml")
    with pytest.raises(SpecError) as exc:
        load(child, registry=fake_registry)
    assert problems(exc) == [
        f"{base}: pretrain.loss.typo: unknown key; expected one of: temperature, reduction"
    ]
    base.write_text(VALID.replace("temperature = 0.2", "temperature = 0.5"))
    loaded = load(child, registry=fake_registry)
    assert loaded.spec.pretrain is not None
    assert loaded.spec.pretrain.epochs == 3
    assert loaded.spec.pretrain.batch_size == 64
    assert loaded.spec.pretrain.loss.options.temperature == 0.5
    assert loaded.files == (child, base)


def test_extends_cycle_and_missing_base(tmp_path: Path, fake_registry: Registry) -> None:
    write(tmp_path, 'extends = "b.toml"\n', "a.toml")
    write(tmp_path, 'extends = "a.toml"\n', "b.toml")
    with pytest.raises(SpecError) as exc:
        load(tmp_path / "a.toml", registry=fake_registry)
    assert problems(exc)[0].startswith(f"{tmp_path / 'b.toml'}: extends: extends itself in a cycle")
    write(tmp_path, 'extends = "nope.toml"\n', "c.toml")
    with pytest.raises(SpecError) as exc:
        load(tmp_path / "c.toml", registry=fake_registry)
    # The file to fix is the one whose extends key names the missing base.
    assert problems(exc) == [f"{tmp_path / 'c.toml'}: extends: no such spec file: {tmp_path / 'nope.toml'}"]


def test_overrides_are_typed_and_validated(tmp_path: Path, fake_registry: Registry) -> None:
    path = write(tmp_path, VALID)
    loaded = load(
        path,
        ["pretrain.loss.temperature=0.3", "experiment.name=other", "pretrain.encoder.strides=[2, 2]"],
        registry=fake_registry,
    )
    assert loaded.spec.pretrain is not None
    assert loaded.spec.pretrain.loss.options.temperature == 0.3
    assert loaded.spec.experiment.name == "other"
    assert loaded.spec.pretrain.encoder.options.strides == (2, 2)
    with pytest.raises(SpecError) as exc:
        load(
            path,
            ["pretrain.loss.temperature=-1", "pretrain.epochs", "experiment.name.x=1"],
            registry=fake_registry,
        )
    found = problems(exc)
    assert "--set: pretrain.epochs: expected KEY=VALUE with a dotted key, e.g. pretrain.epochs=100" in found
    assert "--set: experiment.name.x: experiment.name is a value, not a table" in found
    with pytest.raises(SpecError) as exc:
        load(path, ["pretrain.loss.temperature=-1"], registry=fake_registry)
    assert problems(exc) == ["--set: pretrain.loss.temperature: must be > 0.0, got -1.0"]


def test_parse_override_values() -> None:
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("a = hello world") == ("a", "hello world")
    assert parse_override('a="x"') == ("a", "x")
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    with pytest.raises(ValueError):
        parse_override("a..b=1")


def test_environment_variables(tmp_path: Path, fake_registry: Registry) -> None:
    text = VALID.replace('urls = "data/train-{000000..000003}.tar"', 'urls = "${SHARDS}/train-{0..3}.tar"')
    path = write(tmp_path, text)
    loaded = load(path, registry=fake_registry, environ={"SHARDS": "/data/in1k"})
    assert loaded.spec.pretrain is not None
    assert loaded.spec.pretrain.dataset.options.urls == "/data/in1k/train-{0..3}.tar"
    with pytest.raises(SpecError) as exc:
        load(path, registry=fake_registry, environ={})
    assert problems(exc) == [
        f"{path}: pretrain.dataset.urls: environment variable SHARDS is not set (use ${{SHARDS:-default}})"
    ]
    path.write_text(text.replace("${SHARDS}", "${SHARDS:-/tmp/x}"))
    loaded = load(path, registry=fake_registry, environ={})
    assert loaded.spec.pretrain is not None
    assert loaded.spec.pretrain.dataset.options.urls == "/tmp/x/train-{0..3}.tar"


def test_resolved_spec_round_trips_through_toml(tmp_path: Path, fake_registry: Registry) -> None:
    loaded = load(write(tmp_path, VALID), registry=fake_registry)
    text = dumps(to_dict(loaded.spec), header="resolved")
    assert text.startswith("# resolved\n")
    again = load(write(tmp_path, text, "resolved.toml"), registry=fake_registry)
    assert again.spec == loaded.spec
    assert tomllib.loads(text)["pretrain"]["loss"] == {
        "name": "nt_xent",
        "temperature": 0.2,
        "reduction": "mean",
    }


def test_toml_writer_quotes_and_special_floats() -> None:
    data = {"a": 'quote " and \\ back', "b": float("inf"), "c": [1.5, 2.0], "t": {"odd key": 1, "u": {}}}
    assert tomllib.loads(dumps(data)) == data


def test_cross_key_rules(tmp_path: Path, fake_registry: Registry) -> None:
    text = (
        VALID
        + '\n[finetune]\ninit = "scratch"\nfrom_layer = 1\n'
        + '[finetune.dataset]\nname = "webdataset"\nurls = "x"\n'
    )
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as exc:
        load(path, registry=fake_registry)
    assert problems(exc) == [
        f'{path}: finetune.encoder: init = "scratch" needs an encoder table to train',
        f'{path}: finetune.from_layer: must be 0 with init = "scratch" (there is no head)',
    ]
    loaded = load(path, ["finetune.from_layer=0", 'finetune.encoder.name="resnet"'], registry=fake_registry)
    assert loaded.spec.finetune is not None and loaded.spec.finetune.encoder is not None


def test_finetune_normalization_only_from_scratch(tmp_path: Path, fake_registry: Registry) -> None:
    """A pretrained encoder keeps its pretraining's normalization: changing it is refused, not ignored."""
    base = VALID + '\n[finetune]\nfrom_layer = 0\n[finetune.dataset]\nname = "webdataset"\nurls = "x"\n'
    path = write(tmp_path, base + '[finetune.normalization]\nname = "batch_norm"\n')
    with pytest.raises(SpecError) as exc:
        load(path, registry=fake_registry)
    assert problems(exc) == [
        f'{path}: finetune.normalization: only used with init = "scratch"; a pretrained encoder keeps '
        "the normalization it was pretrained with (set it in the pretraining's table)"
    ]
    # the default, written out, changes nothing and is accepted
    written_default = base + '[finetune.normalization]\nname = "global_bn"\n'
    load(write(tmp_path, written_default, "default.toml"), registry=fake_registry)
    scratch = ['finetune.init="scratch"', 'finetune.encoder.name="resnet"']
    loaded = load(path, scratch, registry=fake_registry)
    assert loaded.spec.finetune is not None and loaded.spec.finetune.normalization.name == "batch_norm"


def test_finetune_normalization_option_refused_on_packaged_spec() -> None:
    """The real plugins: an option of the default normalization counts as a change too."""
    with pytest.raises(SpecError) as exc:
        load(packaged_spec("digits_1pct"), ["finetune.normalization.momentum=0.01"])
    assert [p.key for p in exc.value.problems] == ["finetune.normalization"]
    assert load(packaged_spec("digits_1pct")).spec.finetune is not None
