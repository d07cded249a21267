"""Built-in normalizations (work in progress)."""

from __future__ import annotations

from contrastive import Component, hookimpl


@hookimpl
def contrastive_register_normalizations() -> list[Component]:
    """The built-in normalizations."""
    return []
