"""The built-in plugins of contrastive, installed as the import package ``contrastive_plugins``.

Each module is one plugin, registered through the entry-point group ``contrastive`` exactly like a
third-party plugin (see ``[project.entry-points.contrastive]`` in pyproject.toml).
"""
