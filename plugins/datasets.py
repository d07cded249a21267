"""Built-in datasets (work in progress)."""

from __future__ import annotations

from contrastive import Component, hookimpl


@hookimpl
def contrastive_register_datasets() -> list[Component]:
    """The built-in datasets."""
    return []
