"""Turn plain TOML tables into frozen attrs classes, collecting every problem on the way.

Used for whole specs (sections, stage tables, component tables) and for the options of a single
component built from Python (:func:`contrastive.build`): one validator, one set of messages.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

from contrastive.errors import PluginError, Problem, SpecError, UnknownComponentError
from contrastive.plugins import Registry, close_matches


@attrs.frozen
class ComponentSpec:
    """A chosen component and its validated options.

    Attributes:
        name: Component name within the field's category.
        options: Instance of that component's options class.
    """

    name: str
    options: Any


def component(category: str, default: str | None, doc: str, *, required: bool = True) -> Any:
    """Declare a spec field that chooses a component of ``category``.

    Args:
        category: Plugin category, e.g. ``"losses"``.
        default: Component used when the table is absent (None: the table must be given).
        doc: One line saying what the component is for in this stage.
        required: When False and no default, an absent table leaves the field None.
    """
    metadata = {"doc": doc, "category": category, "default_name": default, "required": required}
    return attrs.field(default=None, metadata=metadata, kw_only=True)


def components(category: str, doc: str) -> Any:
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
class Context:
    """State of one structuring pass.

    Attributes:
        registry: Registry for component fields (None when the class has none).
        locate: Maps a dotted key to the source that set it (file path or ``--set``).
        problems: Every problem found so far.
    """

    registry: Registry | None
    locate: Callable[[str], str]
    problems: list[Problem] = attrs.Factory(list)

    def add(self, key: str, message: str) -> None:
        self.problems.append(Problem(source=self.locate(key), key=key, message=message))


def structure_options(cls: type, values: Mapping[str, Any], *, source: str) -> Any:
    """Validate ``values`` into an instance of the options class ``cls``.

    Raises:
        SpecError: Every problem at once, each located at ``source``.
    """
    ctx = Context(registry=None, locate=lambda _: source)
    result = structure(cls, values, prefix="", ctx=ctx)
    if ctx.problems:
        raise SpecError(ctx.problems)
    return result


def structure(cls: type, table: Mapping[str, Any], *, prefix: str, ctx: Context) -> Any:
    """Structure ``table`` as ``cls``; record problems in ``ctx``; None when something failed."""
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in attrs.fields(cls)}
    before = len(ctx.problems)
    for key in table:
        if key not in fields:
            ctx.add(prefix + key, _unknown_key_message(key, list(fields)))
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        key = prefix + name
        if field.metadata.get("many"):
            if name in table:
                kwargs[name] = _structure_components(field, table[name], key, ctx)
        elif "category" in field.metadata:
            kwargs[name] = _structure_component(field, table.get(name), key, ctx)
        elif "section" in field.metadata:
            if name in table or not field.metadata["optional"]:
                kwargs[name] = _structure_section(field.metadata["section"], table.get(name, {}), key, ctx)
        elif name in table:
            kwargs[name] = _structure_value(hints[name], field, table[name], key, ctx)
        elif field.default is attrs.NOTHING:
            ctx.add(key, f"missing required key ({describe_type(hints[name])}: {field.metadata['doc']})")
    if len(ctx.problems) > before:
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        ctx.add(prefix.rstrip("."), str(exc))
        return None


def _unknown_key_message(key: str, known: list[str]) -> str:
    hint = close_matches(key, known)
    if hint:
        return f'unknown key (did you mean "{hint[0]}"?)'
    return (
        f"unknown key; expected one of: {', '.join(known)}" if known else "unknown key; this table takes none"
    )


def _structure_section(cls: type, value: Any, key: str, ctx: Context) -> Any:
    if not isinstance(value, Mapping):
        ctx.add(key, f"expected a table, got {_kind(value)}")
        return None
    return structure(cls, value, prefix=key + ".", ctx=ctx)


def _structure_component(field: attrs.Attribute[Any], value: Any, key: str, ctx: Context) -> Any:
    category: str = field.metadata["category"]
    default: str | None = field.metadata["default_name"]
    if value is None:
        if default is None:
            if field.metadata["required"]:
                ctx.add(key, f'missing table [{key}] choosing a {category} component, e.g. name = "..."')
            return None
        value = {"name": default}
    if not isinstance(value, Mapping):
        ctx.add(key, f"expected a table with a name key, got {_kind(value)}")
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
    _check_annotations(entry)
    options = structure(entry.options, options_table, prefix=key + ".", ctx=ctx)
    return None if options is None else ComponentSpec(name=name, options=options)


def _check_annotations(entry: Any) -> None:
    """A plugin error (not a spec problem) when the component's options annotations do not resolve."""
    from contrastive.contracts import annotation_problem, describe  # contracts builds on this module

    problem = annotation_problem(entry.options)
    if problem:
        raise PluginError(f"{describe(entry)}: {problem}")


def _structure_components(field: attrs.Attribute[Any], value: Any, key: str, ctx: Context) -> Any:
    category: str = field.metadata["category"]
    if not isinstance(value, list | tuple):
        ctx.add(key, f"expected an array of tables ([[{key}]] with a name key each), got {_kind(value)}")
        return None
    chosen = [_structure_component(field, item, f"{key}.{i}", ctx) for i, item in enumerate(value)]
    names = [c.name for c in chosen if c is not None]
    for name in sorted({n for n in names if names.count(n) > 1}):
        ctx.add(key, f"the {category} component {name!r} is chosen more than once")
    return None if any(c is None for c in chosen) else tuple(chosen)


def _structure_value(tp: Any, field: attrs.Attribute[Any], value: Any, key: str, ctx: Context) -> Any:
    try:
        converted = convert(tp, value)
    except _Mismatch as exc:
        ctx.add(key, str(exc))
        return None
    message = check_range(field, converted)
    if message:
        ctx.add(key, message)
    return converted


class _Mismatch(Exception):
    pass


#: TOML integers are 64-bit: a spec value outside this range is an error, not a huge number.
INT64_RANGE = (-(2**63), 2**63 - 1)
#: Integers longer than this (about 38 digits) are described by their size, not printed.
_SHOWN_BITS = 128


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int) and value.bit_length() > _SHOWN_BITS:
        return f"integer of {value.bit_length()} bits"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    names = {int: "integer", float: "float", str: "string"}
    return f"{names.get(type(value), type(value).__name__)} {value!r}"


def describe_type(tp: Any) -> str:
    """Human name of an option type: ``integer``, ``list of float``, ``"a" | "b"``, ..."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"list of {describe_type(typing.get_args(tp)[0])}"
    names = {bool: "boolean", int: "integer", float: "float", str: "string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def convert(tp: Any, value: Any) -> Any:
    """Check ``value`` against ``tp`` and return it in that type (ints widen to float).

    An integer outside TOML's 64-bit range is refused whatever ``tp`` is.

    Raises:
        _Mismatch: With a message naming the expected type and the value got.
    """
    origin = typing.get_origin(tp)
    if isinstance(value, int) and not isinstance(value, bool):
        low, high = INT64_RANGE
        if not low <= value <= high:
            raise _Mismatch(f"{_kind(value)} is outside the 64-bit range of TOML integers ({low} to {high})")
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) in {type(c) for c in choices}:
            return value
        hint = close_matches(value, [str(c) for c in choices]) if isinstance(value, str) else []
        suggestion = f' (did you mean "{hint[0]}"?)' if hint else ""
        raise _Mismatch(f"expected {describe_type(tp)}, got {_kind(value)}{suggestion}")
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            if arm is type(None):
                continue
            try:
                return convert(arm, value)
            except _Mismatch:
                pass
        raise _Mismatch(f"expected {describe_type(tp)}, got {_kind(value)}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _Mismatch(f"expected {describe_type(tp)}, got {_kind(value)}")
        item = typing.get_args(tp)[0]
        return tuple(convert(item, v) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - an options class with a type we do not know how to read
        raise TypeError(f"unsupported option type {tp!r}")
    raise _Mismatch(f"expected {describe_type(tp)}, got {_kind(value)}")


def check_range(field: attrs.Attribute[Any], value: Any) -> str:
    """The problem with ``value`` under the field's min/max/choices, or ``""``."""
    meta = field.metadata
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            return f"must be a finite number, got {v}"
        if meta.get("choices") is not None and v not in meta["choices"]:
            return f"must be one of {', '.join(repr(c) for c in meta['choices'])}, got {v!r}"
        low, high = meta.get("min"), meta.get("max")
        if isinstance(v, int | float) and not isinstance(v, bool):
            if low is not None and (v < low or (meta.get("min_exclusive") and v == low)):
                relation = ">" if meta.get("min_exclusive") else ">="
                return f"must be {relation} {low}, got {v}"
            if high is not None and (v > high or (meta.get("max_exclusive") and v == high)):
                relation = "<" if meta.get("max_exclusive") else "<="
                return f"must be {relation} {high}, got {v}"
    return ""
