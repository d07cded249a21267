"""The record a plugin returns for each component, and the helper that declares its options.

A plugin offers components; a spec chooses them. Each component is a :class:`Component`:

>>> import attrs
>>> @attrs.frozen
... class ScaleOptions:
...     factor: float = option(2.0, "Multiply inputs by this.", min=0.0)
>>> Component(name="scale", build=lambda opts: opts.factor, options=ScaleOptions,
...           summary="Multiplies by a constant.").name
'scale'

The builder is called as ``build(options, **inputs)``: ``options`` is an instance of the options
class, validated from the spec table (or from keywords of :func:`contrastive.build`), and
``inputs`` are the build-time values the stage supplies (the category's hookspec documents them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import attrs

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def option(
    default: Any = attrs.NOTHING,
    doc: str = "",
    *,
    min: float | None = None,  # noqa: A002 - reads naturally at the call site
    max: float | None = None,  # noqa: A002
    min_exclusive: bool = False,
    max_exclusive: bool = False,
    choices: Sequence[Any] | None = None,
    path: bool | Sequence[str] = False,
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
        path: True when the value (a string, or each string of a tuple) is a local file or folder:
            a relative one is then resolved against the folder of the spec file that set it (a
            ``--set`` value: the current directory), as ``extends`` is. Empty strings, URLs
            (``scheme://``, ``pipe:``) and ``~`` paths are kept as written. A sequence of words
            instead of True also keeps those words (``("scratch",)``: a keyword, not a file).

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
        "path": (path if isinstance(path, bool) else tuple(path)) or False,
    }
    return attrs.field(default=default, metadata=metadata, kw_only=True)


@attrs.frozen
class NoOptions:
    """Options class of a component that takes none."""


def _check_name(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not _NAME.match(value):
        raise ValueError(f"component name {value!r} must be lower_snake_case")


def _check_summary(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not value or "\n" in value:
        raise ValueError("component summary must be one non-empty line")


def _check_options(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not attrs.has(value):
        raise TypeError(f"component options must be an attrs class, got {value!r}")
    for field in attrs.fields(value):
        if not field.metadata.get("doc"):
            raise ValueError(f"option {value.__name__}.{field.name} has no doc")


@attrs.frozen
class Component:
    """A component a plugin offers.

    Attributes:
        name: lower_snake name, unique within its category.
        build: Called as ``build(options, **inputs)``; returns the built object.
        options: attrs class describing the component's spec table (defaults, types, docs).
        summary: One line saying what the component is.
    """

    name: str = attrs.field(validator=_check_name)
    build: Callable[..., Any]
    options: type = attrs.field(default=NoOptions, validator=_check_options)
    summary: str = attrs.field(validator=_check_summary, kw_only=True)
