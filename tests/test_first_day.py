"""Small things a new user meets on the first day (issue 25, item 12)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

from contrastive import console
from contrastive.bench.label_efficiency import Labels, Row, markdown_table
from contrastive.cli import cli
from contrastive.cli.evaluate import eval_command
from contrastive.errors import SpecError
from contrastive.linear_eval import fit_linear_probe
from contrastive.registry import load_registry
from contrastive.runner import preflight
from contrastive.spec.loader import load
from contrastive.spec.packaged import find_spec
from tests.conftest import REPO
from tests.test_docs import ENVIRONMENT


def test_list_plugins_keeps_component_names_whole_on_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    terminal = Console(file=screen, width=80, force_terminal=True, color_system=None, soft_wrap=True)
    monkeypatch.setattr(console, "stdout_console", lambda: terminal)
    result = CliRunner().invoke(cli, ["list-plugins"])
    assert result.exit_code == 0, result.output
    lines = screen.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    for entry in load_registry().components():
        name = f"{entry.category}.{entry.name}"
        assert any(line.split() and line.split()[0] == name for line in lines), name
        assert any(entry.plugin.name in line.split() for line in lines), entry.plugin.name


def test_show_plugin_prints_each_option_with_type_default_and_doc() -> None:
    result = CliRunner().invoke(cli, ["show-plugin", "losses.nt_xent"])
    assert result.exit_code == 0, result.output
    assert "losses.nt_xent: SimCLR NT-Xent" in result.output
    row = next(line for line in result.output.splitlines() if line.split()[:1] == ["temperature"])
    assert row.split()[1:4] == ["float", "0.1", "(>"], row
    assert "Softmax temperature of the cosine similarities." in row
    assert CliRunner().invoke(cli, ["show-plugin", "nt_xent"]).output == result.output
    unknown = CliRunner().invoke(cli, ["show-plugin", "losses.nt_xnet"])
    assert unknown.exit_code == 2 and "did you mean 'nt_xent'" in unknown.stderr


def test_one_seed_prints_the_value_alone() -> None:
    table = markdown_table([Row("distill", 1, 0, 0.9012)])
    assert "| distill | 90.1 |" in table
    assert "±" not in table
    assert "seed 0 (one seed: no standard deviation)" in table
    two = markdown_table([Row("distill", 1, 0, 0.9), Row("distill", 1, 1, 0.8)])
    assert "| distill | 85.0 ± 7.1 |" in two and Labels(per_class=1).heading in two


def test_the_linear_probe_warns_when_it_stops_at_its_iteration_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(60, 5, generator=generator)
    labels = (features[:, 0] + 0.3 * torch.randn(60, generator=generator) > 0).long()
    with caplog.at_level(logging.WARNING, logger="contrastive.linear_eval"):
        probe = fit_linear_probe(features, labels, 2, l2=1e-2, max_iter=2)
    assert probe.at_limit
    assert "stopped at its limit of 2 iterations without converging" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="contrastive.linear_eval"):
        probe = fit_linear_probe(features, labels, 2, l2=1e-2, max_iter=1000)
    assert not probe.at_limit and probe.iterations < 1000
    assert caplog.text == ""


def test_eval_help_gives_a_test_split_as_the_test_example() -> None:
    helps = {p.name: p.help or "" for p in eval_command.params}
    assert "digits:test" in helps["test"] and "digits:train" not in helps["test"]
    assert "digits:train" in helps["train"]


def test_a_set_value_is_blamed_on_set() -> None:
    result = CliRunner().invoke(cli, ["validate", "digits_1pct", "--set", "pretrain.dataset.name=webdataset"])
    assert result.exit_code == 2
    assert "  --set: pretrain.dataset.urls: missing required key" in result.stderr
    loaded = load(find_spec("digits_1pct"), ["pretrain.batch_size=7"])
    with pytest.raises(SpecError) as exc:
        preflight(loaded, ["pretrain"], 2)
    assert str(exc.value) == "--set: pretrain.batch_size: 7 is not divisible by the 2 ranks"
    assert loaded.source_of("finetune.epochs") == str(find_spec("digits_1pct"))


@pytest.mark.parametrize("path", sorted((REPO / "specs").glob("*.toml")), ids=lambda p: p.name)
def test_contract_checks_accept_every_shipped_spec(path: Path) -> None:
    """`validate` and `run` build every component a spec names: no false alarm on our own specs."""
    from contrastive.contracts import check_spec, view_problems

    loaded = load(path, environ=ENVIRONMENT)
    assert check_spec(loaded) == []
    assert view_problems(loaded) == []
