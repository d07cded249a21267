"""Bad specs (mutated shipped specs, benchmarks/spec_fuzz.py) are rejected with exit 2, cleanly.

Every mutation kind is checked through the command line (``contrastive run SPEC --dry-run``): exit
code 2, no traceback, no file written. The regression tests below pin the failures the fuzzer
found: integers beyond 64 bits (an OverflowError, or a ValueError from Python's limit on digits),
and an ``extends`` chain deep enough to exhaust the recursion limit.
"""

from __future__ import annotations

import collections
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner

from contrastive.cli import cli
from contrastive.errors import SpecError
from contrastive.spec.loader import MAX_EXTENDS, load, parse_override

FUZZ = Path(__file__).resolve().parents[1] / "benchmarks" / "spec_fuzz.py"
#: 14 specs of each kind; the kinds come in turn, so every kind is there.
COUNT = 154


def _import_fuzz() -> ModuleType:
    """benchmarks/spec_fuzz.py as a module (benchmarks/ is not installed; it is beside tests/)."""
    if not FUZZ.is_file():
        pytest.skip("benchmarks/spec_fuzz.py is not in this checkout", allow_module_level=True)
    spec = importlib.util.spec_from_file_location("spec_fuzz", FUZZ)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("spec_fuzz", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


fuzz = _import_fuzz()


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    return list(fuzz.bad_specs(seed=0, count=COUNT, workdir=tmp_path_factory.mktemp("bad-specs")))


def test_every_kind_is_generated_equally_often(generated: list[Any]) -> None:
    counts = collections.Counter(bad.kind for bad in generated)
    assert set(counts) == set(fuzz.KINDS)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = list(fuzz.bad_specs(seed=3, count=2 * len(fuzz.KINDS), workdir=tmp_path / "a"))
    again = list(fuzz.bad_specs(seed=3, count=2 * len(fuzz.KINDS), workdir=tmp_path / "b"))
    assert [b.description for b in first] == [b.description for b in again]
    assert [b.path.read_bytes() for b in first] == [b.path.read_bytes() for b in again]


def test_unmutated_specs_written_by_the_generator_are_valid(tmp_path: Path) -> None:
    """The mutation, not the generator's writer or environment, is what makes each spec bad."""
    runner = CliRunner()
    for path in fuzz.control_specs(tmp_path):
        result = runner.invoke(cli, ["validate", str(path)], env=fuzz._variables_in_specs())
        assert result.exit_code == 0, (path, result.output)


@pytest.mark.parametrize("kind", fuzz.KINDS)
def test_bad_specs_are_rejected_cleanly(generated: list[Any], kind: str, tmp_path: Path) -> None:
    bads = [bad for bad in generated if bad.kind == kind]
    assert bads
    for bad in bads:
        outcome = fuzz.check(bad.path, tmp_path / bad.path.parent.name / "run")
        assert outcome.exit_code == 2, (bad.description, outcome.output)
        assert not outcome.traceback, (bad.description, outcome.output)
        assert not outcome.files_written, (bad.description, outcome.files_written)


# Regressions found by the fuzzer ----------------------------------------------------------------


def _spec(tmp_path: Path, table: str) -> Path:
    """A minimal valid spec plus ``table`` (TOML text)."""
    path = tmp_path / "spec.toml"
    path.write_text(f'[pretrain.dataset]\nname = "webdataset"\nurls = "x"\n\n{table}\n')
    return path


@pytest.mark.parametrize(
    "table",
    [
        "[pretrain.loss]\ntemperature = 1" + "0" * 400,  # float(int): OverflowError
        "[pretrain.loss]\ntemperature = 0x" + "f" * 5000,  # too long to print in decimal
        "[pretrain.encoder]\nbase_width = 9223372036854775808",  # 2**63: passed, then broke later
        "[pretrain.encoder]\nbase_width = -9223372036854775809",
        "[pretrain.augmentation]\nstd = [0.2, 1" + "0" * 30 + ", 0.2]",
    ],
)
def test_integers_beyond_64_bits_are_spec_errors(tmp_path: Path, table: str) -> None:
    with pytest.raises(SpecError) as exc:
        load(_spec(tmp_path, table))
    (problem,) = exc.value.problems
    assert "outside the 64-bit range" in problem.message
    assert len(problem.message) < 200


def test_an_integer_with_too_many_digits_is_invalid_toml(tmp_path: Path) -> None:
    """tomllib raises ValueError (not TOMLDecodeError) past Python's 4300-digit limit."""
    with pytest.raises(SpecError) as exc:
        load(_spec(tmp_path, "[pretrain.loss]\ntemperature = " + "9" * 5000))
    (problem,) = exc.value.problems
    assert problem.message.startswith("invalid TOML:")
    key, value = parse_override("pretrain.loss.temperature=" + "9" * 5000)
    assert key == "pretrain.loss.temperature" and value == "9" * 5000  # a string, then a type error


def test_a_64_bit_integer_is_still_accepted(tmp_path: Path) -> None:
    loaded = load(_spec(tmp_path, "[pretrain.encoder]\nbase_width = 9223372036854775807"))
    assert loaded.spec.pretrain is not None
    assert loaded.spec.pretrain.encoder.options.base_width == 2**63 - 1


def test_a_long_extends_cycle_is_a_spec_error_not_a_recursion_error(tmp_path: Path) -> None:
    count = 1100  # deeper than Python's recursion limit
    for i in range(count):
        (tmp_path / f"link_{i}.toml").write_text(f'extends = "link_{(i + 1) % count}.toml"\n')
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "link_0.toml")])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"more than {MAX_EXTENDS} files deep" in result.output


def test_an_extends_chain_up_to_the_limit_loads(tmp_path: Path) -> None:
    (tmp_path / "link_0.toml").write_text('[pretrain.dataset]\nname = "webdataset"\nurls = "x"\n')
    for i in range(1, MAX_EXTENDS):
        (tmp_path / f"link_{i}.toml").write_text(f'extends = "link_{i - 1}.toml"\n')
    top = tmp_path / f"link_{MAX_EXTENDS - 1}.toml"
    assert len(load(top).files) == MAX_EXTENDS
    (tmp_path / "over.toml").write_text(f'extends = "{top.name}"\n')
    with pytest.raises(SpecError, match="files deep"):
        load(tmp_path / "over.toml")
