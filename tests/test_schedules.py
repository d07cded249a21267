"""Built-in learning-rate schedules: warmup_cosine and constant."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contrastive.errors import ContrastiveError, SpecError
from contrastive.registry import Registry, load_registry
from contrastive_plugins.schedules import ScheduleError, WarmupCosineOptions


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def warmup_cosine(registry: Registry, **kwargs: object) -> object:
    inputs = {"base_lr": 0.1, "global_batch_size": 4096, "steps_per_epoch": 10, "epochs": 100}
    inputs.update(kwargs)
    return registry.build("schedules", "warmup_cosine", **inputs)


@pytest.mark.parametrize(
    ("scaling", "peak"),
    [("sqrt", 0.1 * math.sqrt(4096)), ("linear", 0.1 * 4096 / 256), ("none", 0.1)],
)
def test_warmup_cosine_key_points(registry: Registry, scaling: str, peak: float) -> None:
    schedule = warmup_cosine(registry, scaling=scaling, warmup_epochs=10.0)
    warmup, total = 10 * 10, 100 * 10
    assert schedule(0) == 0.0
    assert schedule(warmup // 2) == pytest.approx(peak / 2)
    assert schedule(warmup) == pytest.approx(peak)
    assert schedule(warmup + (total - warmup) // 2) == pytest.approx(peak / 2)
    assert schedule(warmup + (total - warmup) // 4) == pytest.approx(peak * (1 + math.cos(math.pi / 4)) / 2)
    assert 0.0 < schedule(total - 1) < 1e-4 * peak
    assert schedule(total) == pytest.approx(0.0, abs=1e-12)
    assert schedule(total + 50) == 0.0


def test_warmup_is_increasing_and_decay_is_decreasing(registry: Registry) -> None:
    schedule = warmup_cosine(registry, warmup_epochs=5.0)
    values = [schedule(step) for step in range(1001)]
    warmup = values[:51]
    decay = values[50:]
    assert all(a < b for a, b in itertools.pairwise(warmup))
    assert all(a > b for a, b in itertools.pairwise(decay[:-1]))
    assert max(values) == pytest.approx(0.1 * 64)


def test_default_warmup_is_five_percent_of_epochs(registry: Registry) -> None:
    schedule = warmup_cosine(registry, epochs=800, steps_per_epoch=3)
    assert schedule.warmup_steps == round(0.05 * 800 * 3)
    assert schedule.total_steps == 800 * 3


def test_warmup_fraction_and_no_warmup(registry: Registry) -> None:
    assert warmup_cosine(registry, warmup_fraction=0.2).warmup_steps == 200
    no_warmup = warmup_cosine(registry, warmup_fraction=0.0)
    assert no_warmup.warmup_steps == 0
    assert no_warmup(0) == pytest.approx(6.4)


def test_setting_both_warmups_is_an_error(registry: Registry) -> None:
    with pytest.raises(SpecError, match="only one of warmup_epochs"):
        warmup_cosine(registry, warmup_epochs=10.0, warmup_fraction=0.05)
    with pytest.raises(ScheduleError) as info:
        WarmupCosineOptions(warmup_epochs=1.0, warmup_fraction=0.1)
    assert isinstance(info.value, ContrastiveError)


def test_warmup_longer_than_run_is_an_error(registry: Registry) -> None:
    with pytest.raises(ScheduleError, match="exceeds"):
        warmup_cosine(registry, warmup_epochs=101.0)


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"steps_per_epoch": 0}, {"global_batch_size": 0}])
@pytest.mark.parametrize("name", ["warmup_cosine", "constant"])
def test_non_positive_inputs_are_errors(registry: Registry, name: str, bad: dict[str, int]) -> None:
    inputs = {"base_lr": 0.1, "global_batch_size": 256, "steps_per_epoch": 10, "epochs": 10, **bad}
    with pytest.raises(ScheduleError, match=next(iter(bad))):
        registry.build("schedules", name, **inputs)


def test_rebuilt_schedule_resumes_identically(registry: Registry) -> None:
    first = warmup_cosine(registry)
    steps = [0, 7, 49, 50, 51, 500, 999]
    expected = [first(s) for s in steps]
    again = warmup_cosine(registry)
    assert [again(s) for s in reversed(steps)] == list(reversed(expected))


@settings(max_examples=50, deadline=None)
@given(
    step=st.integers(min_value=0, max_value=5000),
    epochs=st.integers(min_value=1, max_value=50),
    steps_per_epoch=st.integers(min_value=1, max_value=100),
    fraction=st.floats(min_value=0.0, max_value=1.0),
)
def test_learning_rate_stays_between_zero_and_peak(
    registry: Registry, step: int, epochs: int, steps_per_epoch: int, fraction: float
) -> None:
    schedule = registry.build(
        "schedules",
        "warmup_cosine",
        warmup_fraction=fraction,
        base_lr=0.3,
        global_batch_size=512,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
    )
    assert 0.0 <= schedule(step) <= schedule.peak_lr + 1e-12


def test_negative_step_is_rejected(registry: Registry) -> None:
    with pytest.raises(ValueError, match="step"):
        warmup_cosine(registry)(-1)


@pytest.mark.parametrize(
    ("scaling", "expected"), [("sqrt", 0.005 * math.sqrt(1024)), ("linear", 0.005 * 4.0), ("none", 0.005)]
)
def test_constant(registry: Registry, scaling: str, expected: float) -> None:
    schedule = registry.build(
        "schedules",
        "constant",
        scaling=scaling,
        base_lr=0.005,
        global_batch_size=1024,
        steps_per_epoch=5,
        epochs=3,
    )
    assert [schedule(s) for s in (0, 7, 10_000)] == [pytest.approx(expected)] * 3


@pytest.mark.parametrize("name", ["warmup_cosine", "constant"])
def test_builds_from_defaults(registry: Registry, name: str) -> None:
    schedule = registry.build(
        "schedules", name, base_lr=0.1, global_batch_size=64, steps_per_epoch=4, epochs=2
    )
    values = [schedule(s) for s in range(8)]
    assert all(isinstance(v, float) and 0.0 <= v <= 0.1 * 8 for v in values)
    assert max(values) > 0.0
