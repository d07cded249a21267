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
from collections.abc import Callable
from typing import Any

import attrs

from contrastive.options import NoOptions, option

__all__ = ["Component", "NoOptions", "option"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


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
