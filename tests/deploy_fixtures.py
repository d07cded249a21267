"""Fixtures of the export and predict tests (loaded with ``pytest_plugins``): one tiny digits run
(pretrain and fine-tune at 8 px, seconds on a CPU) shared by the session, and the digits test
shards it is checked on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contrastive.data.digits import DATA_ENV, ensure_digits
from contrastive.runner import run
from contrastive.spec.loader import load
from tests.tiny_specs import DIGITS_SPEC, TINY_DIGITS_OVERRIDES


@pytest.fixture(scope="session")
def tiny_run(digits_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory whose ``pretrain`` and ``finetune`` stages are finished (tiny digits spec)."""
    run_dir = tmp_path_factory.mktemp("deploy") / "run"
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATA_ENV, str(digits_data))
        torch.set_num_threads(1)
        try:
            run(load(DIGITS_SPEC, TINY_DIGITS_OVERRIDES), run_dir=run_dir, stages=("pretrain", "finetune"))
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)
    return run_dir


@pytest.fixture(scope="session")
def digits_test(digits_data: Path) -> Path:
    """The digits test split as an indexed shard set (500 images)."""
    return ensure_digits(digits_data / "digits") / "test"
