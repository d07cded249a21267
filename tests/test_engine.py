"""The training loop's health checks: skipped-sample share and non-finite losses, read back lazily."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contrastive.distributed import DistInfo
from contrastive.engine import Health, Session
from contrastive.errors import DataError, RunError
from contrastive.spec.schema import RuntimeSpec
from contrastive.stages.context import loop_settings


def health(tmp_path: Path, limit: float = 0.01) -> Health:
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_distributed=False)
    session = Session(
        dist=info, runtime=loop_settings(RuntimeSpec(max_skipped_fraction=limit)), seed=0, directory=tmp_path
    )
    return Health("pretrain", session, steps_per_epoch=5, checkpoints=tmp_path / "checkpoints")


def test_skipped_share_over_the_limit_stops_the_run(tmp_path: Path) -> None:
    check = health(tmp_path, limit=0.05)
    for step in range(1, 4):
        check.record(torch.tensor(1.0), skipped=2, step=step)  # 6 skipped of 30 + 6
    assert check.verify(30, final=False) == 1.0  # below 1,000 samples: not judged yet
    with pytest.raises(DataError, match="6 of 36 samples"):
        check.verify(30, final=True)


def test_skipped_share_under_the_limit_passes(tmp_path: Path) -> None:
    check = health(tmp_path, limit=0.05)
    check.record(torch.tensor(2.5), skipped=1, step=1)
    assert check.verify(100, final=True) == 2.5


def test_first_non_finite_step_is_named_even_when_read_later(tmp_path: Path) -> None:
    check = health(tmp_path)
    losses = [1.0, float("nan"), 3.0, float("inf")]
    for step, value in enumerate(losses, start=1):
        check.record(torch.tensor(value), skipped=0, step=step)
    with pytest.raises(RunError, match=r"not finite at step 2 \(epoch 0\)"):
        check.verify(128, final=False)
