"""Importers of weights published by other projects, written as this project's ``final.pt`` records.

- :mod:`contrastive.importers.simclrv2`: SimCLRv2's official TensorFlow 2 checkpoints
  (``contrastive import simclrv2``).
"""
