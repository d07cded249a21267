"""Property: any mutation of a valid spec gives a valid spec or a clean, located SpecError."""

from __future__ import annotations

import math
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contrastive import contracts
from contrastive.cli import cli
from contrastive.errors import SpecError
from contrastive.registry import Registry
from contrastive.spec import loader
from contrastive.spec.loader import load
from contrastive.spec.toml_writer import dumps
from tests.test_spec import VALID

BASE: dict[str, Any] = tomllib.loads(
    VALID + "\n[runtime]\nnum_workers = 2\n[finetune]\nfrom_layer = 1\n"
    '[finetune.dataset]\nname = "webdataset"\nurls = "x"\n'
)

toml_values = st.recursive(
    st.one_of(
        st.booleans(),
        st.integers(min_value=-(2**40), max_value=2**40),
        st.floats(allow_nan=False, allow_infinity=False, width=32),
        st.text(max_size=8),
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=5), inner, max_size=2)
    ),
    max_leaves=4,
)


def paths(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for key, value in data.items():
        found.append((*prefix, key))
        if isinstance(value, dict):
            found.extend(paths(value, (*prefix, key)))
    return found


def copy(data: Any) -> Any:
    return {k: copy(v) for k, v in data.items()} if isinstance(data, dict) else data


@st.composite
def mutated_specs(draw: st.DrawFn) -> str:
    data = copy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        candidates = paths(data)
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        operation = draw(st.sampled_from(["drop", "rename", "retype", "extreme"]))
        if operation == "drop":
            del parent[key]
        elif operation == "rename":
            parent[key + draw(st.sampled_from(["e", "_", "x"]))] = parent.pop(key)
        elif operation == "retype":
            parent[key] = draw(toml_values)
        else:
            parent[key] = draw(st.sampled_from([-1, 0, -1e9, 10**12, 1e-300, ""]))
    text = dumps(data)
    if draw(st.booleans()):
        position = draw(st.integers(0, len(text)))
        text = text[:position] + draw(st.sampled_from(["=", "[", '"', "\n[x", "]]", "= ="])) + text[position:]
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=mutated_specs())
def test_mutated_specs_are_valid_or_clean_errors(text: str, tmp_path: Path, fake_registry: Registry) -> None:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    spec = work / "spec.toml"
    spec.write_text(text)
    try:
        loaded = load(spec, registry=fake_registry)
    except SpecError as error:
        assert error.problems
        for problem in error.problems:
            assert problem.source.startswith(str(spec)) or problem.source == "--set"
            assert problem.message
            assert str(problem).count(": ") >= 1
    else:
        assert loaded.spec.stages()
        assert math.isfinite(loaded.spec.runtime.max_skipped_fraction)
    assert sorted(p.name for p in work.iterdir()) == ["spec.toml"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=mutated_specs())
def test_cli_dry_run_writes_nothing_and_rejects_invalid_specs(
    text: str, tmp_path: Path, fake_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "load_registry", lambda: fake_registry)
    # the fake components are stand-ins whose builders build nothing: no contract to check here
    monkeypatch.setattr(contracts, "check_spec", lambda loaded: [])
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    run_dir = tmp_path / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    result = CliRunner().invoke(cli, ["run", str(spec), "--run-dir", str(run_dir), "--dry-run"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    # A dry run writes nothing, valid spec or not; an invalid one is exit 2 with its problems.
    assert not run_dir.exists()
    if result.exit_code == 5:  # a valid spec whose stage input (finetune.init, ...) is missing
        assert "does not exist" in result.output and len(result.output.strip().splitlines()) == 1
    elif result.exit_code != 0:
        assert result.exit_code == 2, result.output
        assert "error: spec has" in result.output
