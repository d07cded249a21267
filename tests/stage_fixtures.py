"""Fixtures of the stage, resume and torchrun tests (modules load them with ``pytest_plugins``).

The digits shards are built once per test session under pytest's base temporary folder; tests
point ``$CONTRASTIVE_DATA`` there (in-process through ``monkeypatch``, in subprocesses through
:func:`tests.tiny_specs.subprocess_env`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from contrastive.data.digits import DATA_ENV, ensure_digits


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``$CONTRASTIVE_DATA`` folder whose digits shards are built (once per session)."""
    base = tmp_path_factory.getbasetemp() / "stage-tests-data"
    ensure_digits(base / "digits")
    return base


@pytest.fixture
def digits_env(digits_data: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point ``$CONTRASTIVE_DATA`` at the session's digits data, train on one CPU thread, and keep
    torch's global determinism flag as it was (the runner sets it for ``deterministic`` specs).

    One thread: tiny convolutions gain nothing from more, and on a busy machine OpenMP threads
    that wait for each other make a step of milliseconds take seconds.
    """
    monkeypatch.setenv(DATA_ENV, str(digits_data))
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.set_num_threads(1)
    yield digits_data
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
