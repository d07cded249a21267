"""What a user installs: the packaged specs, name lookup, and the README's quickstart from any folder.

Under tox (``CONTRASTIVE_TEST_INSTALLED=1``) the suite imports the installed wheel, and
:func:`test_packages_are_imported_from_site_packages` proves it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from click.testing import CliRunner

import contrastive
import contrastive_plugins
from contrastive.bench.label_efficiency import QUICK_OVERRIDES, default_specs
from contrastive.cli import cli
from contrastive.data.digits import DATA_ENV
from contrastive.errors import SpecError
from contrastive.spec.loader import load
from contrastive.spec.packaged import find_spec, packaged_spec, packaged_specs, specs_folder, summary
from tests.conftest import REPO

REPO_SPECS = sorted((REPO / "specs").glob("*.toml"))


def test_packaged_specs_are_the_repository_specs() -> None:
    packaged = packaged_specs()
    assert list(packaged) == [path.stem for path in REPO_SPECS]
    for path in REPO_SPECS:
        assert packaged[path.stem].read_bytes() == path.read_bytes(), path.name


def test_extends_resolves_beside_the_packaged_file() -> None:
    loaded = load(packaged_spec("digits_10pct"))
    assert [path.name for path in loaded.files] == ["digits_10pct.toml", "digits_1pct.toml"]
    assert loaded.files[1].parent == specs_folder()


@pytest.mark.parametrize("given", ["digits_1pct", "digits_1pct.toml"])
def test_a_name_finds_the_packaged_spec(given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_spec(given) == packaged_specs()["digits_1pct"]


@pytest.mark.parametrize("given", ["digits_1pct", "digits_1pct.toml"])
def test_a_local_file_wins_over_a_name(given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / given).write_text('[experiment]\nname = "mine"\n')
    assert find_spec(given) == Path(given)


def test_an_unknown_name_lists_the_packaged_names_with_a_suggestion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as caught:
        find_spec("digits_1pc")
    message = str(caught.value)
    assert message.startswith("digits_1pc: no such spec file, and no packaged spec of that name")
    assert '(did you mean "digits_1pct"?)' in message
    assert "packaged specs: " + ", ".join(packaged_specs()) in message


def test_a_missing_path_is_not_looked_up_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        SpecError, match=r'^specs/digits_1pct\.toml: no such spec file \(did you mean "digits_1pct"'
    ):
        find_spec("specs/digits_1pct.toml")


def test_cli_commands_take_a_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["validate", "digits_10pct"])
    assert result.exit_code == 0, result.output
    assert "spec is valid" in result.output
    result = runner.invoke(cli, ["show-spec", "digits_1pct", "--set", "pretrain.epochs=3"])
    assert result.exit_code == 0, result.output
    assert f"from {packaged_specs()['digits_1pct']} with --set pretrain.epochs=3" in result.output
    result = runner.invoke(cli, ["run", "digits_1pct", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "runs").exists()  # a dry run checks everything and writes nothing
    result = runner.invoke(cli, ["run", "digits_1pt"])
    assert result.exit_code == 2
    assert 'did you mean "digits_1pct"?' in result.output


def test_specs_command_lists_names_with_their_summary() -> None:
    result = CliRunner().invoke(cli, ["specs", "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert [r["name"] for r in records] == [path.stem for path in REPO_SPECS]
    by_name = {r["name"]: r for r in records}
    assert by_name["digits_1pct"]["summary"].startswith("The embedded demo: SimCLRv2's three stages")
    assert by_name["digits_1pct"]["path"] == str(packaged_specs()["digits_1pct"])
    table = CliRunner().invoke(cli, ["specs"])
    assert table.exit_code == 0, table.output
    assert all(path.stem in table.output for path in REPO_SPECS)


def test_summary_is_the_first_sentence_after_the_command(tmp_path: Path) -> None:
    spec = tmp_path / "x.toml"
    spec.write_text(
        "# contrastive run x.toml\n#\n# A spec (with a. dot; inside) for\n# tests. More.\n#\n# Other.\n"
    )
    assert summary(spec) == "A spec (with a. dot; inside) for tests"


def test_bench_uses_the_packaged_digits_specs() -> None:
    assert default_specs() == {1: packaged_spec("digits_1pct"), 13: packaged_spec("digits_10pct")}


@pytest.mark.skipif(
    os.environ.get("CONTRASTIVE_TEST_INSTALLED") != "1", reason="only under tox, against the installed wheel"
)
def test_packages_are_imported_from_site_packages() -> None:
    site = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    for module in (contrastive, contrastive_plugins):
        where = Path(module.__file__ or "").resolve()
        assert any(where.is_relative_to(folder) for folder in site), f"{module.__name__} from {where}"
        assert not where.is_relative_to(REPO / "contrastive") and not where.is_relative_to(REPO / "plugins")
    folder = specs_folder()
    installed = Path(contrastive.__file__ or "").resolve().parent / "packaged_specs"
    assert folder is not None and folder == installed


def _command(name: str) -> list[str]:
    """The console script beside this interpreter (what ``pip install`` put on PATH)."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", name]


def _quickstart_run_command() -> list[str]:
    """``contrastive run ...`` as the README's quickstart writes it after ``pip install . &&``."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    line = next(line for line in block.splitlines() if line.startswith("pip install . && "))
    words = shlex.split(line.removeprefix("pip install . && ").split("#", 1)[0])
    assert words[:2] == ["contrastive", "run"], line
    return words


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """An empty folder outside the checkout, and an environment whose digits data lives beside it."""
    base = tmp_path_factory.mktemp("outside")
    env = {**os.environ, DATA_ENV: str(base / "data"), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    (base / "cwd").mkdir()
    return base / "cwd", env


@pytest.mark.slow
def test_readme_quickstart_run_from_another_folder(outside: tuple[Path, dict[str, str]]) -> None:
    cwd, env = outside
    words = _quickstart_run_command()
    short = [f"{stage}.epochs=1" for stage in ("pretrain", "finetune", "distill")] + list(QUICK_OVERRIDES)
    command = [*_command(words[0]), *words[1:], *(arg for item in short for arg in ("--set", item))]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for stage in ("pretrain", "finetune", "distill"):
        assert (cwd / "runs" / "digits_1pct" / stage / "results.json").exists()


@pytest.mark.slow
def test_bench_quick_from_another_folder(outside: tuple[Path, dict[str, str]]) -> None:
    cwd, env = outside
    bench = ["bench", "label-efficiency", "--quick", "--seeds", "1", "--out", "le"]
    command = [*_command("contrastive"), *bench]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (cwd / "le" / "label_efficiency.json").exists()
