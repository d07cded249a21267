"""A real third-party plugin: installed with pip, discovered through its entry point, usable in a spec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

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
