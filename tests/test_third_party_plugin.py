"""A real third-party plugin: installed with pip, discovered through its entry point, usable in a spec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest_plugins = ["tests.stage_fixtures"]  # digits_data: the shards a run reads

EXAMPLE = REPO / "tests" / "plugin_example"

SPEC = """
[experiment]
name = "third_party"

[pretrain]
epochs = 1
batch_size = 8

[pretrain.dataset]
name = "digits"

[pretrain.loss]
name = "neg_cosine"
scale = 2.0
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
        cwd=tmp_path_factory.mktemp("build"),
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH", "")]))
    return env


def contrastive(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "contrastive", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def test_list_plugins_shows_the_installed_plugin(installed: dict[str, str], tmp_path: Path) -> None:
    result = contrastive(installed, "list-plugins", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert {
        "plugin": "example",
        "distribution": "contrastive-example",
        "version": "0.3.1",
        "category": "losses",
        "name": "neg_cosine",
        "summary": "Negative cosine similarity of the two views (example plugin).",
    } in records
    assert any(r["distribution"] == "contrastive" for r in records)


def test_a_spec_using_it_validates_and_its_options_are_checked(
    installed: dict[str, str], tmp_path: Path
) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    result = contrastive(installed, "validate", str(spec), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "spec is valid" in result.stdout
    spec.write_text(SPEC.replace("scale = 2.0", "scal = 2.0"))
    result = contrastive(installed, "validate", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    assert f'{spec}: pretrain.loss.scal: unknown key (did you mean "scale"?)' in result.stderr


def test_disabling_it_by_environment(installed: dict[str, str], tmp_path: Path) -> None:
    env = {**installed, "CONTRASTIVE_DISABLE_PLUGINS": "example"}
    result = contrastive(env, "list-plugins", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not any(r["plugin"] == "example" for r in json.loads(result.stdout))


def test_its_declared_loss_kind_is_checked_at_validation(installed: dict[str, str], tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(
        SPEC + '[finetune]\n[finetune.dataset]\nname = "digits"\n[finetune.loss]\nname = "neg_cosine"\n'
    )
    result = contrastive(installed, "validate", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{spec}: finetune.loss.name: 'neg_cosine' is a contrastive loss" in result.stderr


def test_its_encoder_and_augmentations_are_listed_and_keep_their_contract(
    installed: dict[str, str], tmp_path: Path
) -> None:
    result = contrastive(installed, "list-plugins", "--json", cwd=tmp_path)
    mine = {(r["category"], r["name"]) for r in json.loads(result.stdout) if r["plugin"] == "example"}
    assert mine == {
        ("losses", "neg_cosine"),
        ("encoders", "mini_cnn"),
        ("augmentations", "pad_crop"),
        ("augmentations", "crop_flip_invert"),
    }
    result = contrastive(installed, "check-plugin", "example", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "4 checked, no violation" in result.stdout


def test_the_extended_builtin_has_the_builtin_options_and_its_own(
    installed: dict[str, str], tmp_path: Path
) -> None:
    result = contrastive(installed, "show-plugin", "augmentations.crop_flip_invert", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    options = {o["name"]: o for o in json.loads(result.stdout)["options"]}
    assert {"size", "crop_sampler", "flip_probability", "invert_probability"} <= set(options)
    assert options["invert_probability"]["default"] == "0.0"
    assert options["crop_sampler"]["default"] == '"official"'


RUN_SPEC = """
[experiment]
name = "example_components"

[runtime]
num_workers = 0
threads = 1

[pretrain]
epochs = 1
batch_size = 16
max_steps = 2

[pretrain.dataset]
name = "digits"

[pretrain.augmentation]
name = "pad_crop"
size = 16

[pretrain.encoder]
name = "mini_cnn"
channels = [8, 16]

[pretrain.normalization]
name = "batch_norm"

[pretrain.loss]
name = "neg_cosine"

[finetune]
epochs = 1
batch_size = 10
max_steps = 2
from_layer = 1

[finetune.dataset]
name = "digits"
labels_per_class = 1

[finetune.augmentation]
name = "crop_flip_invert"
size = 16
invert_probability = 0.5

[finetune.eval_augmentation]
size = 16
"""


def test_a_spec_trains_with_its_encoder_and_augmentations(
    installed: dict[str, str], digits_data: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(RUN_SPEC)
    env = {**installed, "CONTRASTIVE_DATA": str(digits_data)}
    result = contrastive(env, "run", str(spec), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for stage in ("pretrain", "finetune"):
        assert (tmp_path / "run" / stage / "final.pt").is_file()
    plugins = json.loads((tmp_path / "run" / "plugins.json").read_text())
    assert "mini_cnn" in json.dumps(plugins) and "crop_flip_invert" in json.dumps(plugins)
