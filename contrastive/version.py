"""The package version, on the ground floor so that anything may record it."""

__version__ = "0.1.0"
