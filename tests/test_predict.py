"""``contrastive predict``: a folder with a corrupt file in it, the JSON and CSV outputs, the same
top-1 from the run directory and from its ONNX, TorchScript and safetensors exports on the digits
test set, and the errors (tiny digits run)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from contrastive.cli import cli
from contrastive.data.scan import read_groups
from contrastive.errors import DataError, RunError
from contrastive.export import export_model
from contrastive.predict import Prediction, open_model, predict

#: Fixtures: digits_data, digits_env; tiny_run, digits_test (one tiny run for the session).
pytest_plugins = ["tests.stage_fixtures", "tests.deploy_fixtures"]

DIGITS = {str(i) for i in range(10)}


@pytest.fixture
def stage(tiny_run: Path, digits_env: Path) -> Path:
    return tiny_run / "finetune"


def image_folder(shards: Path, folder: Path, count: int = 6) -> list[Path]:
    """``count`` digits test images as files in ``folder`` (two levels), plus a corrupt PNG, an
    empty JPEG and a text file; returns the good images."""
    groups = read_groups(sorted(shards.glob("*.tar"))[0], want=lambda ext: True)[:count]
    good = []
    for i, group in enumerate(groups):
        path = folder / ("nested/deeper" if i % 2 else "") / f"digit{i}.{group.image_key}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(group.data[group.image_key])
        good.append(path)
    (folder / "nested" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    return good


def check_rows(rows: object, top_k: int) -> list[dict[str, object]]:
    """The ``--json`` schema: a list of {path, top_k: [{class, index, probability}, ...]}."""
    assert isinstance(rows, list)
    for row in rows:
        assert set(row) == {"path", "top_k"} and isinstance(row["path"], str)
        top = row["top_k"]
        assert len(top) == top_k
        assert all(set(entry) == {"class", "index", "probability"} for entry in top)
        assert all(entry["class"] == str(entry["index"]) and entry["class"] in DIGITS for entry in top)
        probabilities = [entry["probability"] for entry in top]
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(0.0 <= p <= 1.0 for p in probabilities) and sum(probabilities) <= 1.0 + 1e-5
        assert len({entry["index"] for entry in top}) == top_k
    return rows


def test_a_folder_with_corrupt_files_classifies_the_rest(
    stage: Path,
    digits_test: Path,
    tmp_path: Path,
) -> None:
    good = image_folder(digits_test, tmp_path / "images")
    result = CliRunner().invoke(
        cli, ["predict", str(stage), str(tmp_path / "images"), "--top-k", "3", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = check_rows(json.loads(result.stdout), top_k=3)
    assert sorted(row["path"] for row in rows) == sorted(str(p) for p in good)  # type: ignore[type-var]
    assert "corrupt.png" in result.stderr and "empty.jpg" in result.stderr
    assert "notes.txt" not in result.stderr  # not an image suffix: never tried
    assert "6 images; 2 skipped" in result.stderr


def test_nothing_readable_is_a_data_error(stage: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"garbage")
    result = CliRunner().invoke(
        cli, ["predict", str(stage), str(tmp_path / "bad.png"), str(tmp_path / "missing")]
    )
    assert result.exit_code == DataError.exit_code, result.output
    assert (
        "bad.png" in result.stderr
        and "missing" in result.stderr
        and "no image could be classified" in result.stderr
    )


def test_the_run_and_its_exports_give_the_same_top1_on_the_digits_test_set(
    stage: Path,
    digits_test: Path,
    tmp_path: Path,
) -> None:
    on_run = predict(open_model(stage), [digits_test], top_k=2, batch_size=128)
    assert len(on_run.predictions) == 500 and not on_run.failures
    for fmt, name in (("onnx", "c.onnx"), ("torchscript", "c.ts"), ("safetensors", "c.safetensors")):
        export_model(stage, tmp_path / name, format=fmt, what="classifier")
        on_export = predict(open_model(tmp_path / name), [digits_test], top_k=2, batch_size=37)
        assert [p.path for p in on_export.predictions] == [p.path for p in on_run.predictions]
        for ours, theirs in zip(on_run.predictions, on_export.predictions, strict=True):
            assert theirs.top[0][0] == ours.top[0][0] or _tied(ours), (fmt, ours, theirs)
            assert abs(theirs.top[0][2] - ours.top[0][2]) <= 1e-5


def _tied(prediction: Prediction) -> bool:
    """The first two classes closer than runtimes may differ (float rounding): either is right."""
    return abs(prediction.top[0][2] - prediction.top[1][2]) <= 2e-6


def test_the_csv_output(stage: Path, digits_test: Path, tmp_path: Path) -> None:
    good = image_folder(digits_test, tmp_path / "images", count=3)
    out = tmp_path / "predictions.csv"
    result = CliRunner().invoke(
        cli, ["predict", str(stage), *map(str, good), "--csv", str(out), "--top-k", "2"]
    )
    assert result.exit_code == 0, result.output
    with out.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "class_1", "probability_1", "class_2", "probability_2"]
    assert [row[0] for row in rows[1:]] == [str(p) for p in good]
    assert all(row[1] in DIGITS and float(row[2]) >= float(row[4]) for row in rows[1:])
    again = CliRunner().invoke(cli, ["predict", str(stage), str(good[0]), "--csv", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
    both = CliRunner().invoke(
        cli, ["predict", str(stage), str(good[0]), "--csv", str(tmp_path / "x"), "--json"]
    )
    assert both.exit_code == 2 and not (tmp_path / "x").exists()


def test_models_without_classes_are_refused(tiny_run: Path, digits_env: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["predict", str(tiny_run / "pretrain"), str(tmp_path)])
    assert result.exit_code == RunError.exit_code and "pretraining stage" in result.output
    encoder = tmp_path / "encoder.onnx"
    export_model(tiny_run / "finetune", encoder, format="onnx", what="encoder")
    result = CliRunner().invoke(cli, ["predict", str(encoder), str(tmp_path)])
    assert result.exit_code == RunError.exit_code and "--what classifier" in result.output
    (tmp_path / "weights.ts").write_bytes(b"not a model")
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "weights.ts"), str(tmp_path)])
    assert result.exit_code == RunError.exit_code and "not a TorchScript file" in result.output


def test_the_readme_deploy_commands_use_options_the_commands_have() -> None:
    """Every ``contrastive export``/``predict`` line of the README's Deploy section and Commands
    block names only options those commands define, and each format and part exists."""
    import re
    import shlex

    import click

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    deploy = readme.split("## Deploy", 1)[1].split("\n## ", 1)[0]
    commands = readme.split("## Commands", 1)[1].split("\n## ", 1)[0]
    lines = [
        line.split("  #", 1)[0]
        for line in (deploy + commands).splitlines()
        if re.match(r"contrastive (export|predict) ", line)
    ]
    assert sum("export" in line for line in lines) >= 6 and sum("predict" in line for line in lines) >= 4
    for line in lines:
        words = shlex.split(line.replace("[", " ").replace("]", " ").replace("|", " "))
        command = cli.commands[words[1]]
        assert isinstance(command, click.Command)
        known = {opt for param in command.params for opt in getattr(param, "opts", [])}
        for word in words[2:]:
            if word.startswith("--"):
                assert word in known, (line, word)
    formats = set(re.findall(r"--format (\w+)", deploy))
    assert formats == {"safetensors", "onnx", "torchscript"}
