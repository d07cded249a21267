"""Shared fixtures: fake entry points and a registry of fake components."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch

from contrastive.registry import Registry, load_registry
from tests import fake_plugins

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread per process: the suite runs many small processes (data workers, gloo
    ranks, subprocess runs) on a 2-core machine, where OpenMP spinning makes tiny steps 100x slower."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


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
