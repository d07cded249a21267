"""Plugin discovery, provenance, failures, blocking, and building components by name."""

from __future__ import annotations

import inspect
from pathlib import Path

import click
import pytest
import torch

from contrastive import hookimpl, hookspecs
from contrastive.errors import PluginError, SpecError, UnknownComponentError
from contrastive.registry import disabled_from_env, load_registry
from tests import fake_plugins
from tests.conftest import REPO, FakeEntryPoint, entry_point


def test_discovery_records_provenance() -> None:
    registry = load_registry(
        [entry_point("core", fake_plugins.Core(), "contrastive-core", "9.9")], disabled=()
    )
    entry = registry.get("losses", "nt_xent")
    assert entry.as_record() == {
        "plugin": "core",
        "distribution": "contrastive-core",
        "version": "9.9",
        "category": "losses",
        "name": "nt_xent",
        "summary": "Fake nt_xent.",
    }
    assert registry.names("losses") == ["cross_entropy", "distillation", "nt_xent"]
    assert [c.category for c in registry.components()] == sorted(c.category for c in registry.components())


def test_duplicate_name_names_both_plugins() -> None:
    points = [
        entry_point("core", fake_plugins.Core()),
        entry_point("clash", fake_plugins.Clash(), "other-dist"),
    ]
    with pytest.raises(PluginError) as exc:
        load_registry(points, disabled=())
    message = str(exc.value)
    assert "'nt_xent' is offered by two plugins" in message
    assert "'core' (fake-dist)" in message and "'clash' (other-dist)" in message


def test_blocked_plugin_is_kept_out() -> None:
    points = [entry_point("core", fake_plugins.Core()), entry_point("clash", fake_plugins.Clash())]
    registry = load_registry(points, disabled=["clash"])
    assert registry.get("losses", "nt_xent").plugin.name == "core"
    assert [(p.name, p.disabled) for p in registry.plugins] == [("core", False), ("clash", True)]
    assert disabled_from_env({"CONTRASTIVE_DISABLE_PLUGINS": " clash, other ,,"}) == {"clash", "other"}


def test_blocked_by_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTRASTIVE_DISABLE_PLUGINS", "clash")
    points = [entry_point("core", fake_plugins.Core()), entry_point("clash", fake_plugins.Clash())]
    assert load_registry(points).get("losses", "nt_xent").plugin.name == "core"


def test_load_failure_names_plugin_and_fix() -> None:
    def boom() -> object:
        raise ImportError("No module named 'missing_dep'")

    point = FakeEntryPoint("broken", "broken_pkg", boom)
    with pytest.raises(PluginError) as exc:
        load_registry([point], disabled=())
    message = str(exc.value)
    assert "plugin 'broken' (distribution fake-dist 1.2.3) failed to load from 'broken_pkg'" in message
    assert "missing_dep" in message and "CONTRASTIVE_DISABLE_PLUGINS=broken" in message


def test_misspelled_hook_fails_at_startup() -> None:
    with pytest.raises(PluginError) as exc:
        load_registry([entry_point("typo", fake_plugins.Misspelled())], disabled=())
    assert "'typo' implements a hook that does not exist" in str(exc.value)
    assert "contrastive_register_loses" in str(exc.value)


def test_hook_must_return_components() -> None:
    with pytest.raises(PluginError, match=r"must return a list of contrastive\.Component"):
        load_registry([entry_point("bad", fake_plugins.BadReturn())], disabled=())


def test_unknown_component_and_category(fake_registry: object) -> None:
    registry = load_registry([entry_point("core", fake_plugins.Core())], disabled=())
    with pytest.raises(UnknownComponentError) as exc:
        registry.get("losses", "ntxent")
    assert "did you mean 'nt_xent'?" in str(exc.value)
    assert "contrastive list-plugins --category losses" in str(exc.value)
    with pytest.raises(UnknownComponentError, match='did you mean "losses"'):
        registry.get("lossess", "nt_xent")


def test_build_splits_options_from_inputs_and_validates() -> None:
    registry = load_registry([entry_point("core", fake_plugins.Core())], disabled=())
    options, inputs = registry.build("losses", "nt_xent", temperature=0.5, scale=3)
    assert options == fake_plugins.LossOptions(temperature=0.5)
    assert inputs == {"scale": 3}
    with pytest.raises(SpecError) as exc:
        registry.build("losses", "nt_xent", temperature=0, reduction="max")
    assert [str(p) for p in exc.value.problems] == [
        "build(losses.nt_xent): temperature: must be > 0.0, got 0.0",
        'build(losses.nt_xent): reduction: expected "mean" | "sum", got string \'max\'',
    ]


def test_every_hookspec_is_documented_with_the_template() -> None:
    guide = (REPO / "docs" / "writing-plugins.md").read_text()
    specs = {
        name
        for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("contrastive_")
    }
    assert specs == set(hookspecs.HOOKS.values()) | set(hookspecs.COMMAND_HOOKS)
    for name in specs:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert doc.startswith("Register "), name
        assert "\nReturns:\n" in doc, name
        assert name in hookspecs.COMMAND_HOOKS or "\nBuilder:\n" in doc, name
        assert name in guide, f"{name} is not in docs/writing-plugins.md"


def test_builtins_are_registered_through_entry_points() -> None:
    registry = load_registry(disabled=())
    names = {p.name for p in registry.plugins}
    assert {f"builtin_{c}" for c in hookspecs.HOOKS} | {"builtin_importers"} <= names
    assert set(registry.import_commands) >= {"simclrv2"}
    assert registry.import_commands["simclrv2"][1].name == "builtin_importers"
    assert all(p.distribution == "contrastive" for p in registry.plugins if p.name.startswith("builtin_"))


def test_public_api_builds_and_loads_through_the_same_validation(tmp_path: Path) -> None:
    import contrastive

    loss = contrastive.build("losses", "nt_xent", temperature=0.2)
    z = torch.randn(4, 8)
    out = loss(z, z + 0.01 * torch.randn(4, 8))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    with pytest.raises(SpecError, match="temperature: must be"):
        contrastive.build("losses", "nt_xent", temperature=-1.0)
    spec = tmp_path / "spec.toml"
    spec.write_text('[pretrain]\nepochs = 3\n[pretrain.dataset]\nname = "digits"\n')
    loaded = contrastive.load_spec(spec, overrides=["pretrain.batch_size=32"])
    assert loaded.spec.pretrain is not None
    assert (loaded.spec.pretrain.epochs, loaded.spec.pretrain.batch_size) == (3, 32)
    assert set(contrastive.__all__) == {
        "Component",
        "ContrastiveError",
        "NoOptions",
        "__version__",
        "build",
        "hookimpl",
        "load_spec",
        "option",
    }


class _Importer:
    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def contrastive_register_import_commands(self) -> list[click.Command]:
        @click.command(self.name)
        def imported() -> None:
            """Import nothing, loudly."""
            click.echo(f"imported by {self.name}")

        return [imported]


def test_a_plugin_adds_an_import_command_that_the_cli_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from contrastive import plugins
    from contrastive.cli import cli

    points = [entry_point("core", fake_plugins.Core()), entry_point("mine", _Importer("fromzoo"))]
    registry = load_registry(points, disabled=())
    assert registry.import_commands["fromzoo"][1].name == "mine"
    monkeypatch.setattr(plugins, "load_registry", lambda: registry)
    listed = CliRunner().invoke(cli, ["import", "--help"])
    assert listed.exit_code == 0 and "fromzoo" in listed.output and "simclrv2" not in listed.output
    ran = CliRunner().invoke(cli, ["import", "fromzoo"])
    assert (ran.exit_code, ran.output) == (0, "imported by fromzoo\n")


def test_two_plugins_offering_one_import_command_are_named() -> None:
    points = [entry_point("one", _Importer("same")), entry_point("two", _Importer("same"))]
    with pytest.raises(PluginError, match="offered by two plugins: 'one' and 'two'"):
        load_registry(points, disabled=())
