"""Importers of weights published by other projects, written as this project's ``final.pt`` records.

They live with the built-ins, not in core: an import writes records of the built-in ``resnet``,
``projection_mlp``, ``linear`` and ``global_bn`` components, and so names their options.

- :mod:`contrastive_plugins.importers.simclrv2`: SimCLRv2's official TensorFlow 2 checkpoints
  (``contrastive import simclrv2``).
"""
