"""Shared fixtures: fake entry points and a registry of fake components."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from contrastive.plugins import Registry, load_registry
from tests import fake_plugins

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@attrs.frozen
class FakeDist:
    name: str
    version: str


@attrs.frozen
class FakeEntryPoint:
    """Quacks like importlib.metadata.EntryPoint."""

    name: str
    value: str
    target: Callable[[], Any]
    dist: FakeDist | None = FakeDist("fake-dist", "1.2.3")

    def load(self) -> Any:
        return self.target()


def entry_point(name: str, obj: Any, dist: str = "fake-dist", version: str = "1.2.3") -> FakeEntryPoint:
    return FakeEntryPoint(name, f"tests.fake_plugins:{name}", lambda: obj, FakeDist(dist, version))


@pytest.fixture
def fake_registry() -> Registry:
    return load_registry([entry_point("core", fake_plugins.Core())], disabled=())
