"""A small TOML writer for resolved specs (tomllib only reads).

Handles what specs contain: tables, strings, booleans, integers, finite floats and arrays of
those. Output read back with tomllib gives the same data.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dumps(data: Mapping[str, Any], header: str = "") -> str:
    """Serialise nested mappings as TOML.

    Args:
        data: Nested dicts of TOML values.
        header: Comment lines written first (each prefixed with ``# ``).

    Returns:
        TOML text: a table's plain keys first, then its sub-tables as ``[a.b]`` sections.
    """
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    _write_table(data, [], lines)
    return "\n".join(lines).strip("\n") + "\n"


def _write_table(data: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    plain = {k: v for k, v in data.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    if path and (plain or not tables):
        lines.append("")
        lines.append(f"[{'.'.join(_key(p) for p in path)}]")
    for key, value in plain.items():
        lines.append(f"{_key(key)} = {dumps_value(value)}")
    for key, value in tables.items():
        _write_table(value, [*path, key], lines)


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def dumps_value(value: Any) -> str:
    """One TOML value (tables inline), e.g. the right-hand side of a ``--set``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(dumps_value(v) for v in value) + "]"
    if isinstance(value, Mapping):  # inline table, e.g. inside an array
        return "{" + ", ".join(f"{_key(k)} = {dumps_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
