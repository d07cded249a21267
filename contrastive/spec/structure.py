"""Turn plain TOML tables into frozen attrs classes, collecting every problem on the way.

Used for whole specs (sections, stage tables, component tables) and for the options of a single
component built from Python (:func:`contrastive.build`): one validator, one set of messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from contrastive.errors import UnknownComponentError
from contrastive.hookspecs import Category
from contrastive.options import (
    ABSENT,
    INT64_RANGE,
    Problems,
    check_range,
    convert,
    describe_type,
    kind_of,
    structure_options,
)
from contrastive.options import structure as structure_plain
from contrastive.registry import Registry

__all__ = [
    "INT64_RANGE",
    "ComponentSpec",
    "Context",
    "check_range",
    "component",
    "component_fields",
    "components",
    "convert",
    "describe_type",
    "section",
    "structure",
    "structure_options",
]


@attrs.frozen
class ComponentSpec:
    """A chosen component and its validated options.

    Attributes:
        name: Component name within its category.
        options: Instance of that component's options class.
        category: The category it was chosen from (:class:`contrastive.hookspecs.Category`).
    """

    name: str
    options: Any
    category: Category = attrs.field(kw_only=True, converter=Category)

    def build(self, registry: Registry, **inputs: Any) -> Any:
        """Build this component with its build-time inputs (the category's hookspec lists them)."""
        return registry.get(self.category, self.name).component.build(self.options, **inputs)


def component(category: Category, default: str | None, doc: str, *, required: bool = True) -> Any:
    """Declare a spec field that chooses a component of ``category``.

    Args:
        category: Plugin category, e.g. ``"losses"``.
        default: Component used when the table is absent (None: the table must be given).
        doc: One line saying what the component is for in this stage.
        required: When False and no default, an absent table leaves the field None.
    """
    metadata = {"doc": doc, "category": category, "default_name": default, "required": required}
    return attrs.field(default=None, metadata=metadata, kw_only=True)


def components(category: Category, doc: str) -> Any:
    """Declare a spec field holding an array of component tables (``[[runtime.loggers]]``).

    Each table chooses a component of ``category`` by ``name`` and carries its options; the field
    holds a tuple of :class:`ComponentSpec` in the order given (empty when absent).

    Args:
        category: Plugin category, e.g. ``"loggers"``.
        doc: One line saying what the components are for.
    """
    metadata = {"doc": doc, "category": category, "default_name": None, "required": False, "many": True}
    return attrs.field(default=(), metadata=metadata, kw_only=True)


def section(cls: type, doc: str, *, optional: bool = False) -> Any:
    """Declare a spec field holding a nested table structured as ``cls``.

    Args:
        cls: attrs class of the table.
        doc: One line saying what the table configures.
        optional: When True an absent table leaves the field None (a stage that does not run);
            otherwise an absent table takes every default.
    """
    metadata = {"doc": doc, "section": cls, "optional": optional}
    default = None if optional else attrs.Factory(cls)
    return attrs.field(default=default, metadata=metadata, kw_only=True)


def component_fields(cls: type, prefix: str = "") -> dict[str, str | None]:
    """Dotted key of every component field of ``cls`` and of its sections, with its default name."""
    found: dict[str, str | None] = {}
    for field in attrs.fields(cls):
        if "category" in field.metadata:
            if not field.metadata.get("many"):
                found[prefix + field.name] = field.metadata["default_name"]
        elif "section" in field.metadata:
            found.update(component_fields(field.metadata["section"], prefix + field.name + "."))
    return found


@attrs.define
class Context(Problems):
    """State of one structuring pass over a spec.

    Attributes:
        registry: Registry for component fields (None when the class has none).
        locate: Maps a dotted key to the source that set it (file path or ``--set``).
        problems: Every problem found so far.
    """

    registry: Registry | None = None


def structure(cls: type, table: Mapping[str, Any], *, prefix: str, ctx: Context) -> Any:
    """Structure ``table`` as ``cls`` (sections, component tables and options); record problems in
    ``ctx``; None when something failed."""

    def spec_fields(
        field: attrs.Attribute[Any], table: Mapping[str, Any], key: str, _: Any
    ) -> tuple[bool, Any]:
        name = field.name
        if field.metadata.get("many"):
            return True, _structure_components(field, table[name], key, ctx) if name in table else ABSENT
        if "category" in field.metadata:
            return True, _structure_component(field, table.get(name), key, ctx)
        if "section" in field.metadata:
            if name in table or not field.metadata["optional"]:
                return True, _structure_section(field.metadata["section"], table.get(name, {}), key, ctx)
            return True, ABSENT
        return False, ABSENT

    return structure_plain(cls, table, prefix=prefix, problems=ctx, hook=spec_fields)


def _structure_section(cls: type, value: Any, key: str, ctx: Context) -> Any:
    if not isinstance(value, Mapping):
        ctx.add(key, f"expected a table, got {kind_of(value)}")
        return None
    return structure(cls, value, prefix=key + ".", ctx=ctx)


def _structure_component(field: attrs.Attribute[Any], value: Any, key: str, ctx: Context) -> Any:
    category: Category = field.metadata["category"]
    default: str | None = field.metadata["default_name"]
    if value is None:
        if default is None:
            if field.metadata["required"]:
                ctx.add(key, f'missing table [{key}] choosing a {category} component, e.g. name = "..."')
            return None
        value = {"name": default}
    if not isinstance(value, Mapping):
        ctx.add(key, f"expected a table with a name key, got {kind_of(value)}")
        return None
    name = value.get("name", default)
    if not isinstance(name, str):
        ctx.add(key + ".name", f"missing or not a string: name the {category} component to use")
        return None
    if ctx.registry is None:  # pragma: no cover - programming error, not a user error
        raise RuntimeError("structuring a component field needs a registry")
    try:
        entry = ctx.registry.get(category, name)
    except UnknownComponentError as exc:
        ctx.add(key + ".name", str(exc))
        return None
    options_table = {k: v for k, v in value.items() if k != "name"}
    options = structure(entry.options, options_table, prefix=key + ".", ctx=ctx)
    return None if options is None else ComponentSpec(name=name, options=options, category=category)


def _structure_components(field: attrs.Attribute[Any], value: Any, key: str, ctx: Context) -> Any:
    category: Category = field.metadata["category"]
    if not isinstance(value, list | tuple):
        ctx.add(key, f"expected an array of tables ([[{key}]] with a name key each), got {kind_of(value)}")
        return None
    chosen = [_structure_component(field, item, f"{key}.{i}", ctx) for i, item in enumerate(value)]
    names = [c.name for c in chosen if c is not None]
    for name in sorted({n for n in names if names.count(n) > 1}):
        ctx.add(key, f"the {category} component {name!r} is chosen more than once")
    return None if any(c is None for c in chosen) else tuple(chosen)
