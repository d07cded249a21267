"""Plugin discovery and the component registry.

Plugins are found through the entry-point group ``contrastive`` (built-ins included: the core has
no special path for them). Each registered component is recorded with the plugin, distribution
and version that provided it. ``CONTRASTIVE_DISABLE_PLUGINS=name,...`` keeps installed plugins
(by entry-point name) out of the registry.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs
import pluggy

from contrastive import hookspecs
from contrastive.component import Component
from contrastive.errors import PluginError, UnknownComponentError
from contrastive.options import close_matches, structure_options

log = logging.getLogger(__name__)

DISABLE_ENV = "CONTRASTIVE_DISABLE_PLUGINS"


class EntryPointLike(Protocol):
    """What discovery needs of an entry point (``importlib.metadata.EntryPoint`` fits)."""

    name: str
    value: str

    def load(self) -> Any: ...


@attrs.frozen
class PluginInfo:
    """An installed plugin.

    Attributes:
        name: Entry-point name.
        module: Import path the entry point loads.
        distribution: Distribution that declared it (``""`` if unknown).
        version: That distribution's version (``""`` if unknown).
        disabled: Whether ``CONTRASTIVE_DISABLE_PLUGINS`` kept it out.
    """

    name: str
    module: str
    distribution: str
    version: str
    disabled: bool = False


__all__ = [
    "DISABLE_ENV",
    "PluginInfo",
    "RegisteredComponent",
    "Registry",
    "close_matches",
    "load_registry",
]


@attrs.frozen
class RegisteredComponent:
    """A component with its provenance.

    Attributes:
        category: Category (``losses``, ``encoders``, ...).
        component: The record the plugin returned.
        plugin: The providing plugin.
    """

    category: str
    component: Component
    plugin: PluginInfo

    @property
    def name(self) -> str:
        return self.component.name

    @property
    def summary(self) -> str:
        return self.component.summary

    @property
    def options(self) -> type:
        return self.component.options

    def as_record(self) -> dict[str, str]:
        """A JSON-ready record: plugin, distribution, version, category, name, summary."""
        return {
            "plugin": self.plugin.name,
            "distribution": self.plugin.distribution,
            "version": self.plugin.version,
            "category": self.category,
            "name": self.name,
            "summary": self.summary,
        }


@attrs.frozen
class Registry:
    """Every component of every enabled plugin, by category and name.

    Attributes:
        plugins: The installed plugins, enabled and disabled.
        entries: ``(category, name) -> RegisteredComponent``.
        import_commands: ``contrastive import`` subcommand name -> (its ``click.Command``, the
            plugin that offers it).
    """

    plugins: tuple[PluginInfo, ...]
    entries: Mapping[tuple[str, str], RegisteredComponent]
    import_commands: Mapping[str, tuple[Any, PluginInfo]] = attrs.field(factory=dict)

    def names(self, category: str) -> list[str]:
        """Sorted component names of a category."""
        self._check_category(category)
        return sorted(name for cat, name in self.entries if cat == category)

    def components(self, category: str | None = None) -> list[RegisteredComponent]:
        """Registered components sorted by category then name, optionally of one category."""
        if category is not None:
            self._check_category(category)
        return [self.entries[key] for key in sorted(self.entries) if category is None or key[0] == category]

    def get(self, category: str, name: str) -> RegisteredComponent:
        """Look a component up.

        Raises:
            UnknownComponentError: No such category or component; the message suggests close
                matches and the command that lists what exists, and names the plugins that
                ``CONTRASTIVE_DISABLE_PLUGINS`` keeps out (one of them may offer it).
        """
        self._check_category(category)
        try:
            return self.entries[(category, name)]
        except KeyError:
            disabled = [plugin for plugin in self.plugins if plugin.disabled]
            raise UnknownComponentError(
                unknown_component_message(category, name, self.names(category), disabled)
            ) from None

    def build(self, category: str, name: str, /, **kwargs: Any) -> Any:
        """Build a component: keywords naming options configure it, the rest are build inputs.

        Options are validated exactly as in a spec; problems raise
        :class:`contrastive.errors.SpecError` located at ``build(category.name)``.
        """
        entry = self.get(category, name)
        option_names = {field.name for field in attrs.fields(entry.options)}
        values = {key: value for key, value in kwargs.items() if key in option_names}
        inputs = {key: value for key, value in kwargs.items() if key not in option_names}
        options = structure_options(entry.options, values, source=f"build({category}.{name})")
        return entry.component.build(options, **inputs)

    def _check_category(self, category: str) -> None:
        if category not in hookspecs.HOOKS:
            hint = close_matches(category, hookspecs.HOOKS)
            suggestion = f' (did you mean "{hint[0]}"?)' if hint else ""
            raise UnknownComponentError(
                f"unknown category {category!r}{suggestion}; categories: {', '.join(hookspecs.HOOKS)}"
            )


def unknown_component_message(
    category: str, name: str, known: Sequence[str], disabled: Sequence[PluginInfo] = ()
) -> str:
    """``unknown losses "nt_xnet" (did you mean "nt_xent"?); ...`` with the listing command.

    Disabled plugins are not imported, so which components they offer is unknown: the message
    names them, since one of them may offer ``name``.
    """
    hint = close_matches(name, known)
    suggestion = f" (did you mean {' or '.join(repr(h) for h in hint)}?)" if hint else ""
    blocked = ""
    if disabled:
        names = ", ".join(
            f"{p.name!r}" + (f" ({p.distribution} {p.version})" if p.distribution else "") for p in disabled
        )
        blocked = (
            f"; {DISABLE_ENV} disables the installed plugin{'s' if len(disabled) > 1 else ''} "
            f"{names}, which may offer it"
        )
    return (
        f"unknown {category} component {name!r}{suggestion}{blocked}; "
        f"run `contrastive list-plugins --category {category}` to see what is installed"
    )


def discover_entry_points() -> list[importlib.metadata.EntryPoint]:
    """Entry points of the ``contrastive`` group from every installed distribution."""
    return sorted(importlib.metadata.entry_points(group=hookspecs.PROJECT), key=lambda ep: ep.name)


def disabled_from_env(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """Plugin names listed in ``CONTRASTIVE_DISABLE_PLUGINS`` (comma-separated)."""
    raw = (os.environ if environ is None else environ).get(DISABLE_ENV, "")
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def _plugin_info(entry_point: EntryPointLike, disabled: bool) -> PluginInfo:
    dist = getattr(entry_point, "dist", None)
    return PluginInfo(
        name=entry_point.name,
        module=entry_point.value,
        distribution=getattr(dist, "name", "") or "" if dist is not None else "",
        version=getattr(dist, "version", "") or "" if dist is not None else "",
        disabled=disabled,
    )


def _load(entry_point: EntryPointLike, info: PluginInfo) -> object:
    try:
        plugin: object = entry_point.load()
        return plugin
    except Exception as exc:  # a broken third-party plugin must not look like our bug
        where = f" (distribution {info.distribution} {info.version})" if info.distribution else ""
        raise PluginError(
            f"plugin {info.name!r}{where} failed to load from {info.module!r}: "
            f"{type(exc).__name__}: {exc}; fix or uninstall it, or set {DISABLE_ENV}={info.name}"
        ) from exc


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def load_registry(
    entry_points: Iterable[EntryPointLike] | None = None,
    *,
    disabled: Iterable[str] | None = None,
) -> Registry:
    """Discover plugins, validate their hooks and collect their components.

    Args:
        entry_points: Entry points to load; default: every installed one in group ``contrastive``.
        disabled: Plugin names to keep out; default: ``CONTRASTIVE_DISABLE_PLUGINS``.

    Returns:
        The registry of every enabled plugin's components.

    Raises:
        PluginError: A plugin failed to import, implements a hook that does not exist (a typo in
            a hook name), returned something other than components, or offers a name that another
            plugin already offers in the same category.
    """
    points = list(discover_entry_points() if entry_points is None else entry_points)
    blocked = disabled_from_env() if disabled is None else frozenset(disabled)
    manager = _new_manager()
    infos: dict[str, PluginInfo] = {}
    for entry_point in points:
        info = _plugin_info(entry_point, entry_point.name in blocked)
        if info.name in infos:
            first = infos[info.name]
            raise PluginError(
                f"two plugins are named {info.name!r}: {first.distribution or first.module}"
                f" and {info.distribution or info.module}; uninstall one"
            )
        infos[info.name] = info
        if info.disabled:
            log.info("plugin %s disabled by %s", info.name, DISABLE_ENV)
            continue
        manager.register(_load(entry_point, info), name=info.name)
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        name = manager.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(
            f"plugin {name!r} implements a hook that does not exist: {exc}; "
            f"the hooks are: {', '.join([*hookspecs.HOOKS.values(), *hookspecs.COMMAND_HOOKS])}"
        ) from exc
    return Registry(
        plugins=tuple(infos.values()),
        entries=_collect(manager, infos),
        import_commands=_collect_import_commands(manager, infos),
    )


def _collect(
    manager: pluggy.PluginManager, infos: Mapping[str, PluginInfo]
) -> dict[tuple[str, str], RegisteredComponent]:
    entries: dict[tuple[str, str], RegisteredComponent] = {}
    for category, hook_name in hookspecs.HOOKS.items():
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            info = infos[impl.plugin_name]
            for component in _call_hook(impl, info, hook_name):
                key = (category, component.name)
                if key in entries:
                    other = entries[key].plugin
                    raise PluginError(
                        f"{category} component {component.name!r} is offered by two plugins: "
                        f"{other.name!r} ({other.distribution or other.module}) and "
                        f"{info.name!r} ({info.distribution or info.module}); "
                        f"disable one with {DISABLE_ENV}"
                    )
                entries[key] = RegisteredComponent(category=category, component=component, plugin=info)
    return entries


def _call_hook(impl: pluggy.HookImpl, info: PluginInfo, hook_name: str) -> list[Component]:
    try:
        result = impl.function()
    except Exception as exc:
        raise PluginError(f"plugin {info.name!r} raised in {hook_name}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(result, (list, tuple)) or not all(isinstance(c, Component) for c in result):
        raise PluginError(f"plugin {info.name!r}: {hook_name} must return a list of contrastive.Component")
    return list(result)


def _collect_import_commands(
    manager: pluggy.PluginManager, infos: Mapping[str, PluginInfo]
) -> dict[str, tuple[Any, PluginInfo]]:
    """Every plugin's ``contrastive import`` commands by name.

    Raises:
        PluginError: A hook returned something other than click commands, or two plugins offer
            a command of the same name.
    """
    import click

    hook_name = "contrastive_register_import_commands"
    commands: dict[str, tuple[Any, PluginInfo]] = {}
    for impl in getattr(manager.hook, hook_name).get_hookimpls():
        info = infos[impl.plugin_name]
        try:
            result = impl.function()
        except Exception as exc:
            raise PluginError(
                f"plugin {info.name!r} raised in {hook_name}: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(result, (list, tuple)) or not all(isinstance(c, click.Command) for c in result):
            raise PluginError(f"plugin {info.name!r}: {hook_name} must return a list of click commands")
        for command in result:
            if command.name in commands:
                other = commands[command.name][1]
                raise PluginError(
                    f"`contrastive import {command.name}` is offered by two plugins: {other.name!r} and "
                    f"{info.name!r}; disable one with {DISABLE_ENV}"
                )
            commands[str(command.name)] = (command, info)
    return commands
