"""contrastive: SimCLRv2 from one declarative spec, every component a plugin.

Public API (kept small):

- :data:`hookimpl`: marker for a plugin's hook functions.
- :class:`Component`, :func:`option`: what a plugin returns and how it declares options.
- :func:`build`: build any registered component, validated as in a spec.
- :func:`load_spec`: read, validate and resolve a TOML spec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from contrastive.component import Component, NoOptions, option
from contrastive.errors import ContrastiveError
from contrastive.hookspecs import hookimpl
from contrastive.version import __version__

if TYPE_CHECKING:
    from pathlib import Path

    from contrastive.spec.loader import LoadedSpec


__all__ = [
    "Component",
    "ContrastiveError",
    "NoOptions",
    "__version__",
    "build",
    "hookimpl",
    "load_spec",
    "option",
]


def build(category: str, name: str, /, **kwargs: Any) -> Any:
    """Build a registered component the way a spec would.

    Keywords that name one of the component's options configure it (validated like a spec
    table); the others are build-time inputs passed to the builder (see the category's hookspec).

    Example:
        >>> loss = build("losses", "nt_xent", temperature=0.2)  # doctest: +SKIP

    Raises:
        UnknownComponentError: No installed plugin offers ``category``/``name``.
        SpecError: An option value is of the wrong type or out of range.
    """
    from contrastive.registry import load_registry

    return load_registry().build(category, name, **kwargs)


def load_spec(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> LoadedSpec:
    """Read, validate and resolve a spec file with ``--set``-style overrides (``"a.b=value"``).

    Raises:
        SpecError: Every problem in the file, its ``extends`` chain and the overrides, at once.
    """
    from contrastive.spec.loader import load

    return load(path, overrides=overrides)
