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

#: Modules whose tests train, launch processes or install packages: the fast lane (``tox -e fast``,
#: ``pytest -m "not slow"``) leaves them to the full suite. Each module they exercise is also
#: reached by a fast test elsewhere.
SLOW_MODULES = frozenset(
    {
        "test_backbones",
        "test_deploy_plugins",
        "test_distributed_equivalence",
        "test_elastic",
        "test_export",
        "test_first_day_runs",
        "test_full_disk",
        "test_http_streaming",
        "test_import_simclrv2",
        "test_label_efficiency",
        "test_label_efficiency_selection",
        "test_memory",
        "test_packaging",
        "test_predict",
        "test_races_and_interrupts",
        "test_resume",
        "test_spec_fuzz",
        "test_stages",
        "test_subsets",
        "test_third_party_capabilities",
        "test_third_party_plugin",
        "test_torchrun",
    }
)

#: Single tests of otherwise fast modules that take seconds (whole networks, hypothesis searches,
#: subprocess runs), by name prefix.
SLOW_TESTS = (
    "test_zero_init_of_last_norm_in_every_block",
    "test_forward_backward_is_finite",
    "test_bn_momentum_and_eps_reach_every_norm",
    "test_builds_from_defaults_as_resnet50",
    "test_state_dict_round_trip_with_torchvision",
    "test_mutated_specs_are_valid_or_clean_errors",
    "test_two_ranks_sum_counts_and_gather_features",
    "test_a_run_stops_when_more_than_max_skipped_fraction_is_lost",
    "test_no_bit_flip_in_a_png_crashes_the_decoder_or_changes_the_image",
    "test_the_cli_process_prints_one_line_for_a_hostile_checkpoint",
    "test_a_run_trains_with_its_threads_and_gives_them_back",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark :data:`SLOW_MODULES` and :data:`SLOW_TESTS` slow (the full suite runs them all)."""
    for item in items:
        module = item.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
        if module in SLOW_MODULES or item.name.startswith(SLOW_TESTS):
            item.add_marker(pytest.mark.slow)


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
