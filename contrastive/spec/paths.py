"""Relative paths in a spec: resolved against the folder of the file that set them.

One rule for every path of a spec, the one ``extends`` follows: a relative path is relative to
the spec file that wrote it (a base spec's paths to the base spec's folder), so a spec runs the
same from any directory. A ``--set`` value is relative to the current directory, as any
command-line path is, and so is a value read through ``${VAR}`` (its default included), as the
environment it reads. Which options are paths is said by their declaration
(``option(..., path=True)``, :func:`contrastive.component.option`), never by their names.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from contrastive.spec.structure import ComponentSpec

#: The source of a ``--set`` override (as :mod:`contrastive.spec.loader` records it).
OVERRIDE_SOURCE = "--set"


def is_local_relative(value: str) -> bool:
    """Whether ``value`` is a relative local path (not empty, a URL, ``pipe:`` or ``~``)."""
    if not value or "://" in value or value.startswith(("pipe:", "~")):
        return False
    return not os.path.isabs(value)


def base_folder(source: str, cwd: Path) -> Path:
    """The folder a relative path set by ``source`` (a spec file or ``--set``) is relative to."""
    return cwd if source == OVERRIDE_SOURCE else (cwd / source).parent


def resolve_paths(obj: Any, origin: Callable[[str], str | None], cwd: Path, prefix: str = "") -> Any:
    """``obj`` (a spec, a section, or a component's options) with every relative path option
    made absolute against the folder of the source that set it.

    Args:
        obj: An attrs instance as :func:`contrastive.spec.structure.structure` made it.
        origin: The source that set a dotted key (a file path or ``--set``), None for a default.
        cwd: The current directory (``--set`` values and relative spec paths start there).
        prefix: Dotted key of ``obj`` with a trailing dot.
    """
    changes: dict[str, Any] = {}
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        key = prefix + field.name
        if value is None:
            continue
        if "section" in field.metadata:
            new = resolve_paths(value, origin, cwd, key + ".")
        elif field.metadata.get("many"):
            new = tuple(_component(c, origin, cwd, f"{key}.{i}.") for i, c in enumerate(value))
        elif "category" in field.metadata:
            new = _component(value, origin, cwd, key + ".")
        elif field.metadata.get("path") and origin(key) is not None:
            new = _resolve(value, field.metadata["path"], base_folder(str(origin(key)), cwd))
        else:
            continue
        if new != value:
            changes[field.name] = new
    return attrs.evolve(obj, **changes) if changes else obj


def _component(chosen: ComponentSpec, origin: Callable[[str], str | None], cwd: Path, prefix: str) -> Any:
    return attrs.evolve(chosen, options=resolve_paths(chosen.options, origin, cwd, prefix))


def _resolve(value: Any, marker: bool | tuple[str, ...], base: Path) -> Any:
    keep = marker if isinstance(marker, tuple) else ()
    if isinstance(value, tuple):
        return tuple(_resolve(v, marker, base) for v in value)
    if not isinstance(value, str) or value in keep or not is_local_relative(value):
        return value
    return os.path.normpath(os.path.join(os.path.abspath(base), value))
