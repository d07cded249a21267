"""Built-in losses (work in progress)."""

from __future__ import annotations

from contrastive import Component, hookimpl


@hookimpl
def contrastive_register_losses() -> list[Component]:
    """The built-in losses."""
    return []
