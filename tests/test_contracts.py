"""Plugin contract checks: `check-plugin`, `validate` and `run` name a plugin's broken rule (exit 3)
in one line instead of a traceback at run time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from contrastive import registry as plugins
from contrastive.cli import cli
from tests import fake_plugins
from tests.conftest import entry_point

PROVIDER = "(plugin 'broken', contrastive-broken 0.1)"

#: component -> the rule its line must state (bug 4 of issue 25, and the rest of the contract).
BROKEN = {
    "encoders.no_norm_layer": "the builder must accept build(options, norm_layer=...)",
    "encoders.no_feature_dim": "the built encoder has no attribute 'feature_dim'",
    "encoders.wrong_width": "core needs floats [2, 5] (the second size is feature_dim)",
    "augmentations.one_view": "core needs uint8 [2, 3, 8, 8] (num_views, 3, size, size)",
    "augmentations.float_views": "per_sample maps uint8 [3, 15, 19] to float32 [2, 3, 8, 8]",
    "augmentations.uint_on_device": "on_device maps uint8 [2, 2, 3, 8, 8] to uint8 [2, 2, 3, 8, 8]",
    "losses.bad_annotation": "annotations of its options class BadAnnotationOptions cannot be resolved "
    "(NameError: name 'Undefined' is not defined)",
    "losses.tuple_loss": "returned tuple; it must return contrastive.interfaces.LossOutput",
    "optimizers.drops_classifier": "must hold each of the 6 trainable parameters of `roles` once",
}


@pytest.fixture
def with_plugin(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Install a fake plugin next to the real ones (as `pip install` would)."""
    installed = plugins.discover_entry_points()

    def install(name: str, obj: object) -> None:
        extra = entry_point(name, obj, "contrastive-broken", "0.1")
        monkeypatch.setattr(plugins, "discover_entry_points", lambda: [*installed, extra])

    return install


def test_check_plugin_names_every_broken_rule(with_plugin: Any) -> None:
    with_plugin("broken", fake_plugins.Broken())
    result = CliRunner().invoke(cli, ["check-plugin", "broken"])
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert (
        lines[0] == f"error: {len(BROKEN)} plugin contract violations (a bug in the plugin, not in the spec):"
    )
    assert "Traceback" not in result.output
    for component, rule in BROKEN.items():
        (line,) = [line for line in lines if line.strip().startswith(f"{component} ")]
        assert line.strip().startswith(f"{component} {PROVIDER}: "), line
        assert rule in line, line


@pytest.mark.parametrize("component", sorted(BROKEN))
def test_check_plugin_one_component(with_plugin: Any, component: str) -> None:
    with_plugin("broken", fake_plugins.Broken())
    result = CliRunner().invoke(cli, ["check-plugin", component])
    assert result.exit_code == 3, result.output
    assert f"{component} {PROVIDER}: " in result.stderr and BROKEN[component] in result.stderr


def test_check_plugin_accepts_good_components_and_unknown_names() -> None:
    result = CliRunner().invoke(cli, ["check-plugin", "builtin_encoders"])
    assert result.exit_code == 0, result.output
    assert "1 checked, no violation: encoders.resnet" in result.output
    result = CliRunner().invoke(cli, ["check-plugin", "contrastive"])  # every built-in
    assert result.exit_code == 0, result.output
    assert "checked, no violation" in result.output and "losses.nt_xent" in result.output
    result = CliRunner().invoke(cli, ["check-plugin", "losses.nt_xnet"])
    assert result.exit_code == 2
    assert "did you mean 'nt_xent'" in result.stderr


SPEC = """
[experiment]
name = "contract"

[pretrain]
epochs = 1
batch_size = 8

[pretrain.dataset]
name = "digits"

[pretrain.{table}]
name = "{name}"
"""

IN_SPEC = [
    ("encoder", "no_norm_layer"),
    ("encoder", "no_feature_dim"),
    ("augmentation", "one_view"),
    ("augmentation", "float_views"),
    ("loss", "bad_annotation"),
    ("loss", "tuple_loss"),
    ("optimizer", "drops_classifier"),
]


@pytest.mark.parametrize(("table", "name"), IN_SPEC)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_validate_and_run_report_the_spec_key_and_rule(
    with_plugin: Any, tmp_path: Path, table: str, name: str, command: str
) -> None:
    with_plugin("broken", fake_plugins.Broken())
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(table=table, name=name))
    args = [command, str(spec)] + (["--run-dir", str(tmp_path / "run")] if command == "run" else [])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    category = {"encoder": "encoders", "augmentation": "augmentations", "loss": "losses"}.get(
        table, "optimizers"
    )
    rule = BROKEN[f"{category}.{name}"]
    assert rule in result.stderr
    if name != "bad_annotation":  # that one stops the spec's validation itself
        assert f"pretrain.{table}: {category}.{name} {PROVIDER}: " in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_misspelled_hook_names_the_plugin_and_how_to_run_without_it(with_plugin: Any) -> None:
    with_plugin("typo", fake_plugins.Misspelled())
    result = CliRunner().invoke(cli, ["run", "digits_1pct", "--dry-run"])
    assert result.exit_code == 3, result.output
    message = result.stderr
    assert (
        "plugin 'typo' (distribution contrastive-broken 0.1) implements a hook that does not exist" in message
    )
    assert "contrastive_register_loses" in message
    assert "CONTRASTIVE_DISABLE_PLUGINS=typo" in message


def test_a_one_view_augmentation_for_pretraining_is_a_spec_error(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(table="augmentation", name="crop_flip"))
    result = CliRunner().invoke(cli, ["validate", str(spec)])
    assert result.exit_code == 2, result.output
    expected = "pretrain.augmentation.name: 'crop_flip' makes 1 view of every image; pretraining needs 2"
    assert f"{spec}: {expected}" in result.stderr


def test_check_plugin_says_when_a_required_option_kept_a_component_unbuilt() -> None:
    """A component whose options have no defaults (torchvision's `model`) cannot be built on dummy
    inputs: the report says it checked the options class only, naming the option."""
    unbuilt = CliRunner().invoke(cli, ["check-plugin", "encoders.torchvision"])
    assert unbuilt.exit_code == 0, unbuilt.output
    assert "not built without a spec's required options: encoders.torchvision (needs model)" in " ".join(
        unbuilt.output.split()
    )
    built = CliRunner().invoke(cli, ["check-plugin", "encoders.resnet"])
    assert built.exit_code == 0 and "not built" not in built.output, built.output
