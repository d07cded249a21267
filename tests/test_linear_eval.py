"""Linear evaluation: the L-BFGS probe against scikit-learn, and ``contrastive eval`` on a tiny
digits pretraining (seconds on a CPU), with its errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression

from contrastive import Component, hookimpl, linear_eval, option
from contrastive.cli import cli
from contrastive.cli import evaluate as eval_cli
from contrastive.data.digits import DATA_ENV
from contrastive.errors import PluginError, RunError
from contrastive.linear_eval import fit_linear_probe, linear_probe_accuracy, standardise
from contrastive.registry import Registry, discover_entry_points, load_registry
from contrastive.runner import run
from contrastive.spec.loader import load
from tests.conftest import entry_point
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


class _TwoShardReaders:
    """A plugin whose dataset also reads shard paths, beside the built-in webdataset."""

    @hookimpl
    def contrastive_register_datasets(self) -> list[Component]:
        return [Component(name="myshards", build=lambda options: None, options=_PathOptions, summary="Mine.")]


@attrs.frozen
class _PathOptions:
    urls: str = option("", "Where.")

    @classmethod
    def for_path(cls, path: str) -> _PathOptions:
        return cls(urls=path)


class _FixedSizeView:
    """A third-party evaluation augmentation whose view size cannot change (no at_size)."""

    @hookimpl
    def contrastive_register_augmentations(self) -> list[Component]:
        return [Component(name="fixed_view", build=lambda options: None, summary="Fixed.")]


def _registry_with(*plugins: tuple[str, object]) -> Registry:
    """The installed plugins and these."""
    points = [entry_point(name, obj) for name, obj in plugins]
    return load_registry([*discover_entry_points(), *points], disabled=())


def test_a_shard_path_is_read_by_the_one_dataset_that_reads_paths(digits_data: Path, tmp_path: Path) -> None:
    shards = str(next(digits_data.glob("digits/*/train")))
    chosen = linear_eval.parse_dataset(shards, load_registry(disabled=()), "--train")
    assert (chosen.name, chosen.category) == ("webdataset", "datasets")
    assert chosen.build(load_registry(disabled=())).num_samples == 1297
    with pytest.raises(RunError, match=r"found myshards \(mine\), webdataset \(builtin_datasets\)"):
        linear_eval.parse_dataset(shards, _registry_with(("mine", _TwoShardReaders())), "--train")


def test_a_split_is_named_through_the_dataset(tmp_path: Path) -> None:
    registry = _registry_with(("mine", _TwoShardReaders()))
    assert linear_eval.parse_dataset("digits:test", registry, "--test").options.split == "test"
    with pytest.raises(RunError, match="the myshards dataset names no splits"):
        linear_eval.parse_dataset("myshards:train", registry, "--test")


def test_the_view_comes_from_the_stage_record_and_is_resized_through_the_plugin(tmp_path: Path) -> None:
    stage = tmp_path / "finetune"
    stage.mkdir()
    resolved = tmp_path / "spec.resolved.toml"
    resolved.write_text('[finetune.eval_augmentation]\nname = "crop_flip"\nsize = 12\n')
    registry = _registry_with(("fixed", _FixedSizeView()))
    view = linear_eval.stage_augmentation(stage, None, registry)
    assert (type(view).__name__, view.size) == (
        type(registry.build("augmentations", "crop_flip")).__name__,
        12,
    )
    assert linear_eval.stage_augmentation(stage, 20, registry).size == 20
    resolved.write_text('[finetune.eval_augmentation]\nname = "fixed_view"\n')
    with pytest.raises(PluginError, match="offers no at_size"):
        linear_eval.stage_augmentation(stage, 20, registry)
