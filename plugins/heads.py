"""Built-in heads (work in progress)."""

from __future__ import annotations

from contrastive import Component, hookimpl


@hookimpl
def contrastive_register_heads() -> list[Component]:
    """The built-in heads."""
    return []
