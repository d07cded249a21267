"""Built-in schedules (work in progress)."""

from __future__ import annotations

from contrastive import Component, hookimpl


@hookimpl
def contrastive_register_schedules() -> list[Component]:
    """The built-in schedules."""
    return []
