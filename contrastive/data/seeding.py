"""Deterministic seeds and permutations from tuples of parts (seed, epoch, rank, ...)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def mix(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (stable across processes and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def rng(*parts: object) -> random.Random:
    """A ``random.Random`` seeded from ``parts``."""
    return random.Random(mix(*parts))


def shuffled(items: Sequence[T], *parts: object) -> list[T]:
    """A copy of ``items`` in an order determined by ``parts``."""
    out = list(items)
    rng(*parts).shuffle(out)
    return out
