"""Documentation that is generated or promised stays true."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from contrastive.registry import load_registry
from contrastive.spec.loader import load
from contrastive.spec.reference import render
from tests.conftest import REPO

SPECS = sorted((REPO / "specs").glob("*.toml"))
ENVIRONMENT = {
    "IMAGENET_SHARDS": "/data/in1k",
    "IMAGENET_1PCT_SHARDS": "/d/1",
    "IMAGENET_10PCT_SHARDS": "/d/10",
    "CIFAR10_SHARDS": "/d/cifar10",
}


def test_spec_reference_is_up_to_date() -> None:
    committed = (REPO / "docs" / "spec-reference.md").read_text()
    assert committed == render(load_registry()), (
        "docs/spec-reference.md is stale: run python -m contrastive.spec.reference > docs/spec-reference.md"
    )


def test_spec_reference_documents_every_builtin_option() -> None:
    text = (REPO / "docs" / "spec-reference.md").read_text()
    for entry in load_registry().components():
        if entry.plugin.distribution == "contrastive":
            assert f"### {entry.category}: `{entry.name}`" in text


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_shipped_specs_validate_and_start_with_their_command(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert re.match(rf"# contrastive run specs/{path.name}\b", first), first
    if 'name = "timm"' in path.read_text() and importlib.util.find_spec("timm") is None:
        pytest.skip("the spec's timm encoder needs timm: pip install 'contrastive[timm]'")
    load(path, environ=ENVIRONMENT)


def test_readme_quickstart_has_the_two_commands() -> None:
    readme = (REPO / "README.md").read_text()
    assert "pip install . && contrastive run digits_1pct" in readme
    assert "pip install tox && tox" in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert "tox" in ci


PLUGIN_EXAMPLE = REPO / "tests" / "plugin_example"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _example_files() -> set[str]:
    """The example plugin's source files (not what pip leaves behind: build/, *.egg-info)."""
    return {
        path.relative_to(REPO).as_posix()
        for path in PLUGIN_EXAMPLE.rglob("*")
        if path.suffix in {".py", ".toml"}
        and not any(part == "build" or part.endswith(".egg-info") for part in path.parts)
        and "__pycache__" not in path.parts
    }


def test_writing_plugins_shows_the_tested_example_package_whole() -> None:
    """Each block whose info string names a file (```python tests/...) is that file, verbatim."""
    text = (REPO / "docs" / "writing-plugins.md").read_text()
    shown: dict[str, str] = {}
    for info, body in FENCE.findall(text):
        words = info.split()
        if len(words) >= 2:
            shown[words[1]] = body
    assert set(shown) == _example_files(), "docs/writing-plugins.md must show every example file"
    for path, body in shown.items():
        assert body == (REPO / path).read_text(), (
            f"docs/writing-plugins.md: the block marked {path} differs from that file; copy it back"
        )
    for target in re.findall(r"^pip install (?:-e )?(\S+)", text, re.MULTILINE):
        assert (REPO / target / "pyproject.toml").is_file(), f"install path {target} is not the example"
