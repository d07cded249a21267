"""Relative paths in a spec follow one rule: relative to the spec file that sets them (as
``extends``), ``--set`` values relative to the current directory; so a spec runs the same from any
folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from contrastive.cli import cli
from contrastive.spec.loader import load

SPEC = """
[experiment]
name = "paths"

[pretrain]
epochs = 1
batch_size = 8

[pretrain.dataset]
name = "webdataset"
urls = "shards/train"

[finetune]
init = "scratch"
from_layer = 0

[finetune.encoder]
name = "resnet"

[finetune.dataset]
name = "webdataset"
urls = ["a/{000..001}.tar", "/abs/b.tar", "https://host/c", "pipe:cat x.tar", "~/d"]
index = "../idx/index.json"
"""


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A spec in ``project/specs`` and a current directory elsewhere."""
    specs = tmp_path / "project" / "specs"
    specs.mkdir(parents=True)
    (specs / "run.toml").write_text(SPEC)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return specs, elsewhere


def test_relative_paths_are_relative_to_the_spec_file(layout: tuple[Path, Path]) -> None:
    specs, _ = layout
    spec = load(os.path.relpath(specs / "run.toml")).spec
    assert spec.pretrain.dataset.options.urls == str(specs / "shards" / "train")
    assert spec.finetune.dataset.options.urls == (
        str(specs / "a" / "{000..001}.tar"),
        "/abs/b.tar",
        "https://host/c",
        "pipe:cat x.tar",
        "~/d",
    )
    assert spec.finetune.dataset.options.index == str(specs.parent / "idx" / "index.json")
    assert spec.finetune.init == "scratch"  # a keyword, not a file


def test_a_base_specs_paths_are_relative_to_the_base(layout: tuple[Path, Path]) -> None:
    specs, elsewhere = layout
    child = elsewhere / "mine" / "child.toml"
    child.parent.mkdir()
    child.write_text(
        f'extends = "{os.path.relpath(specs / "run.toml", child.parent)}"\n[distill]\nteacher = "t.pt"\n'
        '[distill.dataset]\nname = "digits"\n'
    )
    spec = load(child).spec
    assert spec.pretrain.dataset.options.urls == str(specs / "shards" / "train")
    assert spec.distill.teacher == str(child.parent / "t.pt")


def test_set_values_are_relative_to_the_current_directory(layout: tuple[Path, Path]) -> None:
    specs, elsewhere = layout
    overrides = ["pretrain.dataset.urls=mine/train", "finetune.dataset.index=ckpt/index.json"]
    spec = load(specs / "run.toml", overrides).spec
    assert spec.pretrain.dataset.options.urls == str(elsewhere / "mine" / "train")
    assert spec.finetune.dataset.options.index == str(elsewhere / "ckpt" / "index.json")


def test_a_missing_folder_is_named_with_the_directory_it_was_resolved_against(
    layout: tuple[Path, Path],
) -> None:
    specs, _ = layout
    result = CliRunner().invoke(cli, ["run", str(specs / "run.toml"), "--stage", "pretrain", "--dry-run"])
    assert result.exit_code == 4, result.output
    assert f"{specs / 'shards' / 'train'} does not exist" in result.stderr


def test_show_spec_prints_the_resolved_path(layout: tuple[Path, Path]) -> None:
    specs, _ = layout
    result = CliRunner().invoke(cli, ["show-spec", os.path.relpath(specs / "run.toml")])
    assert result.exit_code == 0, result.output
    assert f'urls = "{specs / "shards" / "train"}"' in result.output


def test_a_value_read_from_the_environment_is_relative_to_the_current_directory(
    layout: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    specs, elsewhere = layout
    text = SPEC.replace('urls = "shards/train"', 'urls = "${TRAIN:-shards/train}"')
    (specs / "env.toml").write_text(text)
    monkeypatch.delenv("TRAIN", raising=False)
    assert load(specs / "env.toml").spec.pretrain.dataset.options.urls == str(elsewhere / "shards" / "train")
    monkeypatch.setenv("TRAIN", "mine")
    assert load(specs / "env.toml").spec.pretrain.dataset.options.urls == str(elsewhere / "mine")
