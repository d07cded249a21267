"""Built-in augmentations (work in progress)."""

from __future__ import annotations

from contrastive import Component, hookimpl


@hookimpl
def contrastive_register_augmentations() -> list[Component]:
    """The built-in augmentations."""
    return []
