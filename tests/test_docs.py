"""Documentation that is generated or promised stays true."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import click
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


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


@pytest.mark.parametrize("doc", ["docs/writing-plugins.md", "README.md"])
def test_section_links_point_at_headings(doc: str) -> None:
    text = (REPO / doc).read_text()
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", FENCE.sub("", text), re.MULTILINE)}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert [link for link in links if link not in anchors] == []


def _leaf_commands(group: click.Group, prefix: str = "") -> set[str]:
    """Every command a user types, as ``"shards build imagefolder"`` (groups expanded, asked as
    click asks them, so a group whose commands come from plugins lists those)."""
    found: set[str] = set()
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            found |= _leaf_commands(command, f"{prefix}{name} ")
        else:
            found.add(prefix + name)
    return found


def _command_of(line: str, commands: set[str]) -> str:
    """The command a documented line runs: its longest prefix that is a command (else its first
    word, which then fails the comparison)."""
    words = line.split("#", 1)[0].split()[1:]
    prefixes = [" ".join(words[:n]) for n in range(len(words), 0, -1)]
    return next((prefix for prefix in prefixes if prefix in commands), words[0])


def test_readme_command_list_matches_the_command_line() -> None:
    """Every command of `contrastive --help` (and of its groups) is in the README's list, and the
    list names no command that does not exist."""
    from contrastive.cli import cli

    readme = (REPO / "README.md").read_text()
    block = readme.split("## Commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = _leaf_commands(cli)
    documented = {
        _command_of(line, commands) for line in block.splitlines() if line.startswith("contrastive ")
    }
    assert sorted(commands - documented) == [], "commands missing from the README's list"
    assert sorted(documented - commands) == [], "the README lists commands that do not exist"


def test_readme_quickstart_commands_exist() -> None:
    """The quickstart's `contrastive ...` lines use commands the command line has."""
    from contrastive.cli import cli

    commands = _leaf_commands(cli)
    quickstart = (REPO / "README.md").read_text().split("## Quickstart", 1)[1].split("## Commands", 1)[0]
    used = [
        line.split("#", 1)[0].split() for line in quickstart.splitlines() if line.startswith("contrastive ")
    ]
    assert used
    for words in used:
        assert any(" ".join(words[1:n]) in commands for n in range(2, len(words) + 1)), words
