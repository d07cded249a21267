"""The command line: listing, validation, resolved specs, run directories, error handling."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from contrastive.cli import cli
from contrastive.rundir import prepare
from contrastive.spec.loader import load

pytest_plugins = ["tests.stage_fixtures"]  # digits_env: dry runs open every stage's data

SPEC = """
[experiment]
name = "cli_test"

[pretrain]
epochs = 2
batch_size = 16

[pretrain.dataset]
name = "digits"

[pretrain.loss]
name = "nt_xent"
temperature = 0.2
"""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(SPEC)
    return path


def test_list_plugins_json_has_records_with_provenance(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["list-plugins", "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    keys = {"plugin", "distribution", "version", "category", "name", "summary"}
    assert records and all(keys <= set(r) for r in records)
    nt_xent = next(r for r in records if r["name"] == "nt_xent")
    assert nt_xent["category"] == "losses" and nt_xent["distribution"] == "contrastive"
    only = json.loads(runner.invoke(cli, ["list-plugins", "--json", "--category", "optimizers"]).output)
    assert {r["category"] for r in only} == {"optimizers"}
    assert {"lars", "sgd", "adamw"} <= {r["name"] for r in only}


def test_list_plugins_table_and_unknown_category(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["list-plugins"])
    assert result.exit_code == 0
    assert "nt_xent" in result.output and "builtin_losses" in result.output
    result = runner.invoke(cli, ["list-plugins", "--category", "loss"])
    assert result.exit_code == 2
    assert 'did you mean "losses"' in result.output


def test_validate_ok_and_every_error(runner: CliRunner, spec: Path) -> None:
    result = runner.invoke(cli, ["validate", str(spec)])
    assert result.exit_code == 0, result.output
    assert "spec is valid" in result.output
    spec.write_text(SPEC.replace("temperature", "temprature").replace("epochs = 2", "epochs = 0"))
    result = runner.invoke(cli, ["validate", str(spec)])
    assert result.exit_code == 2
    assert "spec has 2 problems" in result.output
    assert f'{spec}: pretrain.loss.temprature: unknown key (did you mean "temperature"?)' in result.output
    assert f"{spec}: pretrain.epochs: must be >= 1, got 0" in result.output
    assert "Traceback" not in result.output


def test_validate_with_overrides(runner: CliRunner, spec: Path) -> None:
    result = runner.invoke(cli, ["validate", str(spec), "--set", "pretrain.loss.temperature=-2"])
    assert result.exit_code == 2
    assert "--set: pretrain.loss.temperature: must be > 0.0, got -2.0" in result.output


def test_show_spec_prints_resolved_defaults(runner: CliRunner, spec: Path) -> None:
    result = runner.invoke(cli, ["show-spec", str(spec), "--set", "pretrain.epochs=5"])
    assert result.exit_code == 0, result.output
    data = tomllib.loads(result.output)
    assert data["pretrain"]["epochs"] == 5
    assert data["pretrain"]["loss"] == {
        "name": "nt_xent",
        "temperature": 0.2,
        "queue_size": 0,
        "queue_keys": "one_view",
    }
    assert data["pretrain"]["optimizer"]["name"] == "lars"
    assert "momentum" in data["pretrain"]["optimizer"]
    assert data["runtime"]["keep_checkpoints"] == 2


def test_run_prepares_the_run_directory(
    runner: CliRunner, spec: Path, tmp_path: Path, digits_env: Path
) -> None:
    run_dir = tmp_path / "run"
    result = runner.invoke(cli, ["run", str(spec), "--run-dir", str(run_dir), "--stage", "none"])
    assert result.exit_code == 2 and "none" in result.output
    assert not run_dir.exists()
    result = runner.invoke(cli, ["run", str(spec), "--run-dir", str(run_dir), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert not run_dir.exists()  # a dry run checks, and writes nothing
    prepare(load(spec), run_dir)
    resolved = tomllib.loads((run_dir / "spec.resolved.toml").read_text())
    assert resolved["pretrain"]["loss"]["temperature"] == 0.2
    plugins = json.loads((run_dir / "plugins.json").read_text())
    used = {c["key"]: c for c in plugins["components"]}
    assert used["pretrain.loss"]["name"] == "nt_xent"
    assert used["pretrain.loss"]["distribution"] == "contrastive"
    assert any(p["name"] == "builtin_losses" and p["version"] for p in plugins["plugins"])


def test_invalid_spec_writes_nothing(runner: CliRunner, spec: Path, tmp_path: Path) -> None:
    spec.write_text(SPEC.replace("nt_xent", "nt_xnet"))
    run_dir = tmp_path / "run"
    result = runner.invoke(cli, ["run", str(spec), "--run-dir", str(run_dir), "--dry-run"])
    assert result.exit_code == 2
    assert not run_dir.exists()


def test_run_directory_clash_needs_force(
    runner: CliRunner, spec: Path, tmp_path: Path, digits_env: Path
) -> None:
    run_dir = tmp_path / "run"
    prepare(load(spec), run_dir)
    (run_dir / "pretrain").mkdir()  # pretraining started here (a stage never started is not compared)
    before = (run_dir / "spec.resolved.toml").read_text()
    other = ["run", str(spec), "--run-dir", str(run_dir), "--dry-run", "--set", "pretrain.epochs=3"]
    result = runner.invoke(cli, other)
    assert result.exit_code == 5
    assert "holds a run of a different spec (pretrain.epochs: 2 before, 3 now)" in result.output
    assert (run_dir / "spec.resolved.toml").read_text() == before
    # --dry-run --force checks and writes nothing: the finished run stays usable by its own command.
    assert runner.invoke(cli, [*other, "--force"]).exit_code == 0
    assert (run_dir / "spec.resolved.toml").read_text() == before
    assert runner.invoke(cli, ["run", str(spec), "--run-dir", str(run_dir), "--dry-run"]).exit_code == 0


def test_traceback_flag_shows_the_traceback(runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = runner.invoke(cli, ["validate", str(missing)])
    assert result.exit_code == 2
    assert f"{missing}: no such spec file" in result.output
    result = runner.invoke(cli, ["--traceback", "validate", str(missing)])
    assert result.exit_code != 0
    assert result.exc_info is not None and type(result.exc_info[1]).__name__ == "SpecError"
