"""The thread budget (``runtime.threads``) and the one rule that splits a global batch among ranks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contrastive import distributed
from contrastive.distributed import local_batch_size, thread_budget
from contrastive.errors import IndivisibleBatchError
from contrastive.runner import run
from contrastive.spec.loader import load
from tests.tiny_specs import tiny_pretrain_spec, write_spec

pytest_plugins = ["tests.stage_fixtures"]  # digits_env


@pytest.mark.parametrize(
    ("cores", "local_ranks", "workers", "expected"),
    [
        (2, 1, 0, 2),  # a laptop, no data workers: both cores
        (2, 1, 1, 1),  # the digits demo: one core for the worker, one for the maths
        (16, 2, 2, 6),  # two ranks on 16 cores with 2 workers each: 8 - 2
        (4, 4, 3, 1),  # never below one thread
        (1, 1, 0, 1),
    ],
)
def test_budget_divides_the_usable_cores(
    monkeypatch: pytest.MonkeyPatch, cores: int, local_ranks: int, workers: int, expected: int
) -> None:
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_ranks))
    assert distributed.usable_cores() == cores
    assert thread_budget(0, workers) == expected


def test_budget_follows_the_affinity_not_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.setattr(distributed.os, "cpu_count", lambda: 64)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert thread_budget(0, 0) == 1


def test_an_explicit_thread_count_is_used_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert thread_budget(5, 3) == 5


def _spy_on_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = torch.set_num_threads

    def record(n: int) -> None:
        calls.append(n)
        real(n)

    monkeypatch.setattr(torch, "set_num_threads", record)
    return calls


@pytest.mark.parametrize(("requested", "expected"), [(1, 1), (3, 3)])
def test_a_run_trains_with_its_threads_and_gives_them_back(
    digits_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, requested: int, expected: int
) -> None:
    before = torch.get_num_threads()
    seen_in_step: list[int] = []
    real_backward = torch.Tensor.backward

    def backward(self: torch.Tensor, *args: object, **kwargs: object) -> None:
        seen_in_step.append(torch.get_num_threads())
        real_backward(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.Tensor, "backward", backward)
    calls = _spy_on_threads(monkeypatch)
    spec = write_spec(tmp_path / "tiny.toml", tiny_pretrain_spec(batch_size=32, max_steps=1))
    run(load(spec, [f"runtime.threads={requested}"]), run_dir=tmp_path / "run")
    assert seen_in_step and set(seen_in_step) == {expected}
    assert calls[0] == expected
    assert torch.get_num_threads() == before


def test_the_default_budgets_threads(
    digits_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    calls = _spy_on_threads(monkeypatch)
    spec = write_spec(tmp_path / "tiny.toml", tiny_pretrain_spec(batch_size=32, max_steps=1, num_workers=1))
    run(load(spec), run_dir=tmp_path / "run")
    assert calls[0] == 3  # 4 usable cores, one data worker


def test_the_digits_demo_pins_the_thread_count_its_tables_were_measured_at() -> None:
    loaded = load(Path(__file__).resolve().parents[1] / "specs" / "digits_1pct.toml")
    assert (loaded.spec.runtime.threads, loaded.spec.runtime.channels_last) == (1, True)
    ten = load(Path(__file__).resolve().parents[1] / "specs" / "digits_10pct.toml").spec.runtime
    assert (ten.threads, ten.channels_last) == (1, True)


@pytest.mark.parametrize(("batch", "world", "local"), [(256, 1, 256), (256, 2, 128), (96, 3, 32)])
def test_local_batch_size_splits_evenly(batch: int, world: int, local: int) -> None:
    assert local_batch_size(batch, world) == local


@pytest.mark.parametrize(("batch", "world"), [(33, 2), (10, 3), (8, 0)])
def test_an_indivisible_batch_has_one_message_everywhere(batch: int, world: int) -> None:
    with pytest.raises(IndivisibleBatchError, match=f"{batch} is not divisible by the {world} ranks"):
        local_batch_size(batch, world)
