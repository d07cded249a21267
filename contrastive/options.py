"""Options: how a component (or a spec table) declares its settings, and how plain values are
checked against that declaration.

This is the floor both the registry (:mod:`contrastive.registry`) and the spec package stand on:
:func:`option` writes the metadata (doc, range, choices) that :func:`structure` reads. A
declaration is an attrs class whose fields are made with :func:`option`:

>>> import attrs
>>> @attrs.frozen
... class ScaleOptions:
...     factor: float = option(2.0, "Multiply inputs by this.", min=0.0)
>>> structure_options(ScaleOptions, {"factor": 3}, source="example").factor
3.0
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs

from contrastive.errors import Problem, SpecError

#: What :func:`structure` does with a field it does not handle itself (a spec's component tables
#: and sections): ``hook(field, table, key, problems) -> (handled, value)``; an unhandled field is
#: read as a plain option. ``value`` is :data:`ABSENT` when the field takes its default.
FieldHook = Callable[["attrs.Attribute[Any]", Mapping[str, Any], str, "Problems"], tuple[bool, Any]]

#: A field that :data:`FieldHook` leaves to its default.
ABSENT = attrs.NOTHING


def close_matches(word: str, candidates: Iterable[str]) -> list[str]:
    """Up to three candidates that look like ``word`` (for "did you mean" hints)."""
    return difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)


def option(
    default: Any = attrs.NOTHING,
    doc: str = "",
    *,
    min: float | None = None,  # noqa: A002 - reads naturally at the call site
    max: float | None = None,  # noqa: A002
    min_exclusive: bool = False,
    max_exclusive: bool = False,
    choices: Sequence[Any] | None = None,
) -> Any:
    """Declare one option of a component's options class.

    Args:
        default: The default value; omit it for a required option. Use tuples, not lists.
        doc: One line saying what the option means (shown in docs and ``show-spec``).
        min: Smallest allowed value (numbers only).
        max: Largest allowed value (numbers only).
        min_exclusive: Whether ``min`` itself is excluded.
        max_exclusive: Whether ``max`` itself is excluded.
        choices: The allowed values, when the type alone does not say.

    Returns:
        An ``attrs.field`` carrying the metadata the spec validator and the docs generator read.
    """
    if not doc:
        raise ValueError("every option needs a one-line doc")
    metadata = {
        "doc": doc,
        "min": min,
        "max": max,
        "min_exclusive": min_exclusive,
        "max_exclusive": max_exclusive,
        "choices": tuple(choices) if choices is not None else None,
    }
    return attrs.field(default=default, metadata=metadata, kw_only=True)


@attrs.frozen
class NoOptions:
    """Options class of a component that takes none."""


@attrs.define
class Problems:
    """The problems one structuring pass found, each located where its key was set.

    Attributes:
        locate: Maps a dotted key to the source that set it (file path or ``--set``).
        problems: Every problem found so far.
    """

    locate: Callable[[str], str]
    problems: list[Problem] = attrs.Factory(list)

    def add(self, key: str, message: str) -> None:
        self.problems.append(Problem(source=self.locate(key), key=key, message=message))


def structure_options(cls: type, values: Mapping[str, Any], *, source: str) -> Any:
    """Validate ``values`` into an instance of the options class ``cls``.

    Raises:
        SpecError: Every problem at once, each located at ``source``.
    """
    problems = Problems(locate=lambda _: source)
    result = structure(cls, values, prefix="", problems=problems)
    if problems.problems:
        raise SpecError(problems.problems)
    return result


def structure(
    cls: type,
    table: Mapping[str, Any],
    *,
    prefix: str,
    problems: Problems,
    hook: FieldHook | None = None,
) -> Any:
    """Structure ``table`` as ``cls``; record problems; None when something failed.

    Args:
        cls: attrs class declared with :func:`option` fields.
        table: Plain values by key.
        prefix: Dotted prefix of the keys in messages (``"pretrain.loss."``).
        problems: Where problems go.
        hook: Handles the fields that are not plain options (see :data:`FieldHook`).
    """
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in attrs.fields(cls)}
    before = len(problems.problems)
    for key in table:
        if key not in fields:
            problems.add(prefix + key, _unknown_key_message(key, list(fields)))
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        key = prefix + name
        handled, value = hook(field, table, key, problems) if hook is not None else (False, ABSENT)
        if handled:
            if value is not ABSENT:
                kwargs[name] = value
        elif name in table:
            kwargs[name] = _structure_value(hints[name], field, table[name], key, problems)
        elif field.default is attrs.NOTHING:
            problems.add(key, f"missing required key ({describe_type(hints[name])}: {field.metadata['doc']})")
    if len(problems.problems) > before:
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        problems.add(prefix.rstrip("."), str(exc))
        return None


def _unknown_key_message(key: str, known: list[str]) -> str:
    hint = close_matches(key, known)
    if hint:
        return f'unknown key (did you mean "{hint[0]}"?)'
    return (
        f"unknown key; expected one of: {', '.join(known)}" if known else "unknown key; this table takes none"
    )


def _structure_value(tp: Any, field: attrs.Attribute[Any], value: Any, key: str, problems: Problems) -> Any:
    try:
        converted = convert(tp, value)
    except _Mismatch as exc:
        problems.add(key, str(exc))
        return None
    message = check_range(field, converted)
    if message:
        problems.add(key, message)
    return converted


class _Mismatch(Exception):
    pass


#: TOML integers are 64-bit: a spec value outside this range is an error, not a huge number.
INT64_RANGE = (-(2**63), 2**63 - 1)
#: Integers longer than this (about 38 digits) are described by their size, not printed.
_SHOWN_BITS = 128


def kind_of(value: Any) -> str:
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
            raise _Mismatch(
                f"{kind_of(value)} is outside the 64-bit range of TOML integers ({low} to {high})"
            )
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) in {type(c) for c in choices}:
            return value
        hint = close_matches(value, [str(c) for c in choices]) if isinstance(value, str) else []
        suggestion = f' (did you mean "{hint[0]}"?)' if hint else ""
        raise _Mismatch(f"expected {describe_type(tp)}, got {kind_of(value)}{suggestion}")
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            if arm is type(None):
                continue
            try:
                return convert(arm, value)
            except _Mismatch:
                pass
        raise _Mismatch(f"expected {describe_type(tp)}, got {kind_of(value)}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _Mismatch(f"expected {describe_type(tp)}, got {kind_of(value)}")
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
    raise _Mismatch(f"expected {describe_type(tp)}, got {kind_of(value)}")


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
