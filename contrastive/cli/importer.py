"""``contrastive import``: the importers that plugins offer (``contrastive_register_import_commands``).

Core knows no importer: the group lists and runs whatever commands the installed plugins register,
so ``contrastive import --help`` shows each with the plugin that offers it.
"""

from __future__ import annotations

from typing import Any

import click


class _ImportGroup(click.Group):
    """A click group whose subcommands come from the plugin registry, loaded when first asked."""

    def _offered(self) -> dict[str, Any]:
        from contrastive.registry import load_registry

        return {name: command for name, (command, _) in load_registry().import_commands.items()}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._offered())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command: click.Command | None = self._offered().get(cmd_name)
        return command


@click.group("import", cls=_ImportGroup)
def import_group() -> None:
    """Import published weights as a final.pt that fine-tune, distill and export accept (the
    importers are plugins: `contrastive import --help` lists the installed ones)."""
