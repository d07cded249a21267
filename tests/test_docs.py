"""Documentation that is generated or promised stays true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from contrastive.plugins import load_registry
from contrastive.spec.loader import load
from contrastive.spec.reference import render
from tests.conftest import REPO

SPECS = sorted((REPO / "specs").glob("*.toml"))
ENVIRONMENT = {
    "IMAGENET_SHARDS": "/data/in1k",
    "IMAGENET_1PCT_SHARDS": "/d/1",
    "IMAGENET_10PCT_SHARDS": "/d/10",
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
    load(path, environ=ENVIRONMENT)


def test_readme_quickstart_has_the_two_commands() -> None:
    readme = (REPO / "README.md").read_text()
    assert "pip install . && contrastive run digits_1pct" in readme
    assert "pip install tox && tox" in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert "tox" in ci
