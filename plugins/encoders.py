"""Built-in encoders (work in progress)."""

from __future__ import annotations

from contrastive import Component, hookimpl


@hookimpl
def contrastive_register_encoders() -> list[Component]:
    """The built-in encoders."""
    return []
