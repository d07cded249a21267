"""Linear evaluation: the L-BFGS probe against scikit-learn, and ``contrastive eval`` on a tiny
digits pretraining (seconds on a CPU), with its errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression

from contrastive import linear_eval
from contrastive.cli import cli
from contrastive.cli import evaluate as eval_cli
from contrastive.data.digits import DATA_ENV
from contrastive.linear_eval import fit_linear_probe, linear_probe_accuracy, standardise
from contrastive.runner import run
from contrastive.spec.loader import load
from tests.tiny_specs import DIGITS_SPEC, TINY_DIGITS_OVERRIDES

pytest_plugins = ["tests.stage_fixtures"]  # its fixtures: digits_data, digits_env


def _gaussians(
    seed: int, per_class: int, classes: int = 4, dim: int = 12
) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable Gaussian blobs with unequal scales per dimension (so standardising matters)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 4.0
    labels = torch.arange(classes).repeat_interleave(per_class)
    features = centres[labels] + torch.randn(len(labels), dim, generator=generator)
    return features * torch.linspace(0.1, 10.0, dim), labels


def test_probe_separates_gaussians_and_matches_sklearn() -> None:
    train_x, train_y = _gaussians(0, per_class=100)
    test_x, test_y = _gaussians(1, per_class=100)
    l2 = 1e-3
    probe = fit_linear_probe(train_x, train_y, 4, l2=l2, max_iter=500)
    ours = linear_probe_accuracy(probe, test_x, test_y)
    assert ours["top1"] >= 0.99 and ours["top5"] == 1.0

    mean, scale = standardise(train_x)
    z_train = ((train_x.double() - mean) / scale).numpy()
    z_test = ((test_x.double() - mean) / scale).numpy()
    # Same objective: mean CE + l2/2 |W|^2  ==  (C * sum CE + 1/2 |W|^2) / (C N) with C = 1 / (l2 N).
    reference = LogisticRegression(C=1.0 / (l2 * len(train_y)), max_iter=5000, tol=1e-10)
    reference.fit(z_train, train_y.numpy())
    theirs = reference.predict(z_test)
    predicted = probe.logits(test_x).argmax(dim=1).numpy()
    agreement = float(np.mean(predicted == theirs))
    sklearn_top1 = float(np.mean(theirs == test_y.numpy()))
    assert abs(ours["top1"] - sklearn_top1) <= 0.01
    assert agreement >= 0.95
    # The same optimum, not only the same predictions.
    np.testing.assert_allclose(probe.weight.numpy(), reference.coef_, atol=2e-3, rtol=2e-2)


def test_probe_is_deterministic_and_rejects_unlabelled_rows() -> None:
    x, y = _gaussians(2, per_class=30)
    first, second = fit_linear_probe(x, y, 4), fit_linear_probe(x, y, 4)
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    with pytest.raises(linear_eval.DataError, match="labelled"):
        fit_linear_probe(x, torch.full_like(y, -1), 4)


def test_cli_defaults_match_the_core() -> None:
    assert eval_cli.DEFAULT_L2 == linear_eval.DEFAULT_L2
    assert eval_cli.DEFAULT_MAX_ITER == linear_eval.DEFAULT_MAX_ITER


@pytest.fixture(scope="module")
def pretrained(digits_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 3-step digits pretraining (8 px, ResNet-18 with 4 base filters): its stage directory."""
    run_dir = tmp_path_factory.mktemp("linear-eval") / "run"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATA_ENV, str(digits_data))
        torch.set_num_threads(1)  # tiny work: more threads only wait for each other on a busy CPU
        try:
            run(load(DIGITS_SPEC, TINY_DIGITS_OVERRIDES), run_dir=run_dir, stages=("pretrain",))
            yield run_dir / "pretrain"
        finally:
            torch.set_num_threads(threads)


def _eval(stage: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli,
        ["eval", str(stage), "--train", "digits:train", "--test", "digits:test", "--device", "cpu", *extra],
    )
    return result.exit_code, result.output


def test_eval_of_a_digits_pretraining(pretrained: Path) -> None:
    code, output = _eval(pretrained, "--json")
    assert code == 0, output
    record = json.loads(output)
    written = json.loads((pretrained / "linear_eval.json").read_text())
    assert written == record
    assert record["kind"] == "pretrain" and record["size"] == 8
    assert (record["num_classes"], record["train_samples"], record["test_samples"]) == (10, 1297, 500)
    # Measured 0.50 after 3 steps; chance is 0.10 (0.3 of 500 images is > 14 sigma above it).
    assert record["top1"] > 0.3 and record["top5"] >= record["top1"]

    code, output = _eval(pretrained, "--method", "knn")
    assert code == 0, output
    assert "top-1" in output and json.loads((pretrained / "knn_eval.json").read_text())["top1"] > 0.2


def test_eval_errors_are_one_line(pretrained: Path, tmp_path: Path) -> None:
    cases = [
        (tmp_path, (), 5, "final.pt does not exist"),
        (pretrained, ("--from-layer", "9"), 5, "--from-layer 9"),
    ]
    for stage, extra, expected, text in cases:
        code, output = _eval(stage, *extra)
        assert code == expected, output
        assert text in output and len(output.strip().splitlines()) == 1, output

    result = CliRunner().invoke(
        cli, ["eval", str(pretrained), "--train", "nodigits:train", "--test", "digits:test"]
    )
    assert result.exit_code == 2, result.output
    assert "nodigits" in result.output and len(result.output.strip().splitlines()) == 1, result.output
