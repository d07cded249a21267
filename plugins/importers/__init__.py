"""Importers of weights published by other projects, written as this project's ``final.pt`` records.

They live with the built-ins, not in core: an import writes records of the built-in ``resnet``,
``projection_mlp``, ``linear`` and ``global_bn`` components, and so names their options.

- :mod:`contrastive_plugins.importers.simclrv2`: SimCLRv2's official TensorFlow 2 checkpoints
  (``contrastive import simclrv2``).

The commands reach ``contrastive import`` through the ``contrastive_register_import_commands`` hook,
like any plugin's: core does not import this package.
"""

from __future__ import annotations

from typing import Any

from contrastive import hookimpl


@hookimpl
def contrastive_register_import_commands() -> list[Any]:
    """``contrastive import simclrv2``."""
    from contrastive_plugins.importers.commands import simclrv2

    return [simclrv2]
