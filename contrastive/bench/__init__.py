"""Protocols that measure the framework end to end through its own specs and stages."""
