"""RankMe (effective rank of a batch of embeddings) against an independent numpy computation, and
the pretraining's RankMe monitor."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastive.evaluate import RANKME_EPSILON, effective_rank
from contrastive.runner import run
from contrastive.spec.loader import load
from tests.tiny_specs import DIGITS_SPEC, TINY_DIGITS_OVERRIDES, read_jsonl

pytest_plugins = ["tests.stage_fixtures"]  # its fixtures: digits_data, digits_env


def _numpy_rankme(z: np.ndarray, epsilon: float = RANKME_EPSILON) -> float:
    """Singular values from the eigenvalues of Z^T Z (not an SVD), then exp(entropy)."""
    eigen = np.clip(np.linalg.eigvalsh(z.T @ z), 0.0, None)
    sigma = np.sqrt(eigen)[::-1][: min(z.shape)]
    p = sigma / sigma.sum() + epsilon
    return float(np.exp(-(p * np.log(p)).sum()))


def _with_singular_values(values: list[float], rows: int, cols: int, seed: int) -> np.ndarray:
    """A ``[rows, cols]`` matrix whose singular values are ``values`` (then zeros)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(rows, rows)))
    v, _ = np.linalg.qr(rng.normal(size=(cols, cols)))
    s = np.zeros((rows, cols))
    for i, value in enumerate(values):
        s[i, i] = value
    return u @ s @ v.T


@pytest.mark.parametrize("rank", [1, 3, 8])
def test_a_matrix_of_rank_r_with_equal_singular_values_has_rankme_r(rank: int) -> None:
    z = _with_singular_values([2.0] * rank, rows=64, cols=16, seed=rank)
    found = effective_rank(torch.from_numpy(z).float())
    assert found == pytest.approx(rank, rel=1e-3)
    assert found == pytest.approx(_numpy_rankme(z), rel=1e-4)


def test_unequal_singular_values_match_the_independent_computation_and_scale_does_not_matter() -> None:
    z = _with_singular_values([5.0, 3.0, 1.0, 0.5, 0.1], rows=40, cols=10, seed=0)
    found = effective_rank(torch.from_numpy(z))
    assert found == pytest.approx(_numpy_rankme(z), rel=1e-5)
    assert 1.0 < found < 5.0
    assert effective_rank(torch.from_numpy(1000.0 * z)) == pytest.approx(found, rel=1e-6)


def test_epsilon_follows_the_definition() -> None:
    z = _with_singular_values([1.0, 1.0], rows=8, cols=4, seed=1)
    # p = (1/2 + e, 1/2 + e, e, e): the two zero singular values still count through epsilon.
    e = 1e-3
    p = np.array([0.5 + e, 0.5 + e, e, e])
    expected = math.exp(-(p * np.log(p)).sum())
    assert effective_rank(torch.from_numpy(z), epsilon=e) == pytest.approx(expected, rel=1e-6)


def test_collapsed_and_empty_embeddings() -> None:
    assert effective_rank(torch.zeros(10, 4)) == 1.0
    assert effective_rank(torch.ones(10, 4)) == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        effective_rank(torch.zeros(0, 4))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        effective_rank(torch.zeros(4))


def test_pretraining_logs_rankme_at_every_monitor_step(digits_env: Path, tmp_path: Path) -> None:
    overrides = [
        *TINY_DIGITS_OVERRIDES,
        "pretrain.batch_size=256",  # 5 steps an epoch over the 1,297 training images
        "pretrain.max_steps=10",
        "pretrain.monitor_every=1",
        "pretrain.rank_samples=40",
        "pretrain.monitor_test.labels_per_class=2",
    ]
    outcome = run(load(DIGITS_SPEC, overrides), run_dir=tmp_path / "run", stages=("pretrain",))
    metrics = read_jsonl(tmp_path / "run" / "pretrain" / "metrics.jsonl")
    ranked = [(m["step"], m["rankme"]) for m in metrics if "rankme" in m]
    assert [step for step, _ in ranked] == [5, 10]
    width = 32  # ResNet-18 with 4 base filters: 8 x 4 features, fewer than the 40 images
    assert all(1.0 <= rank <= width + 1e-3 for _, rank in ranked)
    assert outcome.results["pretrain"]["rankme"] == ranked[-1][1]
    assert all("knn_top1" in m for m in metrics if "rankme" in m)  # logged with the kNN monitor


def test_rank_samples_zero_turns_the_monitor_off(digits_env: Path, tmp_path: Path) -> None:
    overrides = [*TINY_DIGITS_OVERRIDES, "pretrain.monitor_every=1"]  # rank_samples: 0 by default
    outcome = run(load(DIGITS_SPEC, overrides), run_dir=tmp_path / "run", stages=("pretrain",))
    metrics = read_jsonl(tmp_path / "run" / "pretrain" / "metrics.jsonl")
    assert not any("rankme" in m for m in metrics)
    assert "rankme" not in outcome.results["pretrain"]
