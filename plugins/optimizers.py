"""Built-in optimizers (work in progress)."""

from __future__ import annotations

from contrastive import Component, hookimpl


@hookimpl
def contrastive_register_optimizers() -> list[Component]:
    """The built-in optimizers."""
    return []
