"""Tests for contrastive.evaluate: top-k counts, classifier evaluation, kNN monitor, feature extraction."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from contrastive.errors import DataError
from contrastive.evaluate import evaluate_classifier, extract_features, knn_accuracy, topk_correct
from contrastive.interfaces import Batch
from tests._multiprocess import run_distributed

SIZE = 2  # image side S
CLASSES = 7


def _to_float(images: torch.Tensor) -> torch.Tensor:
    """Stand-in for an augmentation's on_device: uint8 [B, V, 3, S, S] to float in [0, 1]."""
    return images.float() / 255.0


def _batch(generator: torch.Generator, rows: int, padding: int = 0) -> Batch:
    """``rows`` real rows followed by ``padding`` masked-out rows (with plausible labels)."""
    total = rows + padding
    images = torch.randint(0, 256, (total, 1, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, CLASSES, (total,), generator=generator)
    mask = torch.arange(total) < rows
    return Batch(images=images, labels=labels, mask=mask)


def _linear_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, CLASSES))


def _reference_accuracy(model: nn.Module, batches: list[Batch]) -> tuple[float, float, int]:
    """Top-1/top-5 by ranking each valid row's logits one at a time (independent of topk_correct)."""
    hits1 = hits5 = count = 0
    with torch.no_grad():
        for batch in batches:
            logits = model(_to_float(batch.images)[:, 0])
            for row, label, valid in zip(logits, batch.labels.tolist(), batch.mask.tolist(), strict=True):
                if not valid:
                    continue
                rank = int((row > row[label]).sum())  # classes scoring strictly higher
                hits1 += rank < 1
                hits5 += rank < 5
                count += 1
    return hits1 / count, hits5 / count, count


# --- topk_correct -------------------------------------------------------------------------------


def test_topk_counts_only_masked_in_rows() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.9, 0.0, 0.1]])
    targets = torch.tensor([1, 1, 2, 0])  # rows 0, 2, 3 are top-1 correct; row 1 is top-2
    mask = torch.tensor([True, True, True, False])  # row 3 is padding
    counts = topk_correct(logits, targets, mask, ks=(1, 2))
    assert counts[1].item() == 2
    assert counts[2].item() == 3


def test_topk_padding_rows_never_count() -> None:
    logits = torch.eye(4)
    targets = torch.arange(4)  # every row correct
    counts = topk_correct(logits, targets, torch.zeros(4, dtype=torch.bool))
    assert counts[1].item() == 0 and counts[5].item() == 0


def test_topk_caps_k_at_number_of_classes() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=generator)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    mask = torch.tensor([True, True, False, True, True, True])
    counts = topk_correct(logits, targets, mask, ks=(1, 3, 5))
    assert counts[3].item() == counts[5].item() == int(mask.sum())
    assert counts[1].item() == int(((logits.argmax(1) == targets) & mask).sum())


def test_topk_negative_target_never_counts() -> None:
    counts = topk_correct(torch.randn(2, 3), torch.tensor([-1, -1]), torch.ones(2, dtype=torch.bool), ks=(5,))
    assert counts[5].item() == 0


def test_topk_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        topk_correct(torch.randn(4), torch.zeros(4, dtype=torch.int64), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError):
        topk_correct(torch.randn(4, 3), torch.zeros(3, dtype=torch.int64), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError):
        topk_correct(
            torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), torch.ones(4, dtype=torch.bool), ks=(0,)
        )


# --- evaluate_classifier ------------------------------------------------------------------------


def test_evaluate_classifier_matches_reference_and_ignores_padding() -> None:
    generator = torch.Generator().manual_seed(1)
    batches = [_batch(generator, 5), _batch(generator, 3, padding=4), _batch(generator, 1, padding=2)]
    model = _linear_model(seed=3)
    result = evaluate_classifier(model, batches, "cpu", _to_float)
    top1, top5, count = _reference_accuracy(model, batches)
    assert result["samples"] == count == 9
    assert math.isclose(result["top1"], top1) and math.isclose(result["top5"], top5)
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0


def test_evaluate_classifier_padding_that_would_be_correct_is_not_counted() -> None:
    # A model that always predicts class 0; the padding rows are labelled 0, the real row is not.
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0]))
    images = torch.zeros(3, 1, 3, SIZE, SIZE, dtype=torch.uint8)
    batch = Batch(images, torch.tensor([1, 0, 0]), torch.tensor([True, False, False]))
    result = evaluate_classifier(model, [batch], "cpu", _to_float)
    assert result == {"top1": 0.0, "top5": 1.0, "samples": 1}


def test_evaluate_classifier_skips_unlabelled_rows() -> None:
    generator = torch.Generator().manual_seed(4)
    batch = _batch(generator, 6)
    unlabelled = Batch(batch.images, torch.where(torch.arange(6) < 2, -1, batch.labels), batch.mask)
    result = evaluate_classifier(_linear_model(seed=0), [unlabelled], "cpu", _to_float)
    assert result["samples"] == 4


class _Recorder(nn.Module):
    """Linear classifier that records the mode, grad state and input it saw, with a BN kept in eval."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen_norm = nn.BatchNorm2d(3)
        self.linear = nn.Linear(3 * SIZE * SIZE, CLASSES)
        self.seen: list[tuple[bool, bool, torch.dtype, tuple[int, ...]]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, torch.is_grad_enabled(), x.dtype, tuple(x.shape)))
        return self.linear(self.frozen_norm(x).flatten(1))


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_classifier_uses_eval_mode_no_grad_and_restores_modes(training: bool) -> None:
    model = _Recorder()
    model.train(training)
    model.frozen_norm.eval()  # e.g. a frozen part during fine-tuning
    batches = [_batch(torch.Generator().manual_seed(5), 4)]
    evaluate_classifier(model, batches, torch.device("cpu"), _to_float)
    assert model.seen == [(False, False, torch.float32, (4, 3, SIZE, SIZE))]
    assert model.training is training
    assert model.linear.training is training
    assert model.frozen_norm.training is False


def test_evaluate_classifier_restores_mode_after_error() -> None:
    model = _Recorder()
    model.train()

    def broken(images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("transform failed")

    with pytest.raises(RuntimeError, match="transform failed"):
        evaluate_classifier(model, [_batch(torch.Generator().manual_seed(0), 2)], "cpu", broken)
    assert model.training


def test_evaluate_classifier_without_valid_rows_raises() -> None:
    batch = _batch(torch.Generator().manual_seed(6), 0, padding=3)
    with pytest.raises(DataError):
        evaluate_classifier(_linear_model(seed=0), [batch], "cpu", _to_float)


# --- knn_accuracy -------------------------------------------------------------------------------


def _clusters(
    generator: torch.Generator, per_class: int, classes: int, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight clusters around random directions; labels are the cluster index."""
    centres = torch.randn(classes, dim, generator=generator) * 3.0
    labels = torch.arange(classes).repeat_interleave(per_class)
    features = centres[labels] + 0.05 * torch.randn(len(labels), dim, generator=generator)
    return features, labels


def test_knn_separable_clusters_are_classified_perfectly() -> None:
    generator = torch.Generator().manual_seed(0)
    train, train_labels = _clusters(generator, 40, 5, 16)
    test = train[::3] + 0.01 * torch.randn(train[::3].shape, generator=generator)
    accuracy = knn_accuracy(train, train_labels, test, train_labels[::3], num_classes=5, k=20, chunk_size=7)
    assert accuracy == 1.0


def test_knn_shuffled_labels_are_near_chance() -> None:
    generator = torch.Generator().manual_seed(1)
    classes = 5
    train, labels = _clusters(generator, 200, classes, 16)
    test, test_labels = train + 0.05 * torch.randn(train.shape, generator=generator), labels
    shuffled = labels[torch.randperm(len(labels), generator=generator)]
    accuracy = knn_accuracy(train, shuffled, test, test_labels, num_classes=classes)
    assert abs(accuracy - 1 / classes) < 0.1


def test_knn_votes_are_weighted_by_temperature() -> None:
    # Two orthogonal neighbours of class 0 against one identical neighbour of class 1.
    train = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    train_labels = torch.tensor([0, 0, 1])
    test = torch.tensor([[0.0, 0.0, 2.0]])
    test_labels = torch.tensor([1])
    sharp = knn_accuracy(train, train_labels, test, test_labels, num_classes=2, k=3, temperature=0.1)
    flat = knn_accuracy(train, train_labels, test, test_labels, num_classes=2, k=3, temperature=100.0)
    assert (sharp, flat) == (1.0, 0.0)


def test_knn_chunking_and_k_above_bank_size_do_not_change_result() -> None:
    generator = torch.Generator().manual_seed(2)
    train, test = torch.randn(30, 8, generator=generator), torch.randn(50, 8, generator=generator)
    train_labels = torch.randint(0, 3, (30,), generator=generator)
    test_labels = torch.randint(0, 3, (50,), generator=generator)
    whole = knn_accuracy(train, train_labels, test, test_labels, num_classes=3, k=100, chunk_size=1000)
    chunked = knn_accuracy(train, train_labels, test, test_labels, num_classes=3, k=100, chunk_size=3)
    capped = knn_accuracy(train, train_labels, test, test_labels, num_classes=3, k=30)
    assert whole == chunked == capped


def test_knn_rejects_unlabelled_or_empty_inputs() -> None:
    features = torch.randn(4, 2)
    with pytest.raises(DataError, match="labels"):
        knn_accuracy(
            features, torch.tensor([0, 1, -1, 0]), features, torch.zeros(4, dtype=torch.long), num_classes=2
        )
    with pytest.raises(DataError):
        knn_accuracy(
            features,
            torch.zeros(4, dtype=torch.long),
            features[:0],
            torch.zeros(0, dtype=torch.long),
            num_classes=2,
        )
    with pytest.raises(ValueError):
        knn_accuracy(
            features,
            torch.zeros(4, dtype=torch.long),
            features,
            torch.zeros(4, dtype=torch.long),
            num_classes=2,
            k=0,
        )


# --- extract_features ---------------------------------------------------------------------------


def test_extract_features_keeps_only_masked_in_rows() -> None:
    generator = torch.Generator().manual_seed(7)
    batches = [_batch(generator, 3, padding=2), _batch(generator, 4), _batch(generator, 0, padding=1)]
    encoder = nn.Flatten()
    features, labels = extract_features(encoder, batches, "cpu", _to_float)
    expected = torch.cat([_to_float(b.images)[b.mask, 0].flatten(1) for b in batches])
    assert torch.equal(features, expected)
    assert torch.equal(labels, torch.cat([b.labels[b.mask] for b in batches]))
    assert features.dtype == torch.float32 and labels.dtype == torch.int64


def test_extract_features_without_batches_raises() -> None:
    with pytest.raises(DataError):
        extract_features(nn.Flatten(), [], "cpu", _to_float)


# --- two processes (gloo) -----------------------------------------------------------------------


def _distributed_worker(rank: int, world_size: int, shards: list[list[Batch]]) -> dict[str, Any]:
    """Evaluate this rank's shard; return what every function returned."""
    model = _linear_model(seed=3)
    return {
        "eval": evaluate_classifier(model, shards[rank], "cpu", _to_float),
        "features": extract_features(nn.Flatten(), shards[rank], "cpu", _to_float),
    }


@pytest.mark.slow
def test_two_ranks_sum_counts_and_gather_features() -> None:
    generator = torch.Generator().manual_seed(8)
    # Different row counts per rank (the last batch of rank 1 is smaller and partly padding).
    shards = [
        [_batch(generator, 4), _batch(generator, 2, padding=2)],
        [_batch(generator, 4), _batch(generator, 1, padding=1)],
    ]
    results = run_distributed(_distributed_worker, shards)
    every_batch = shards[0] + shards[1]
    top1, top5, count = _reference_accuracy(_linear_model(seed=3), every_batch)
    features = torch.cat([_to_float(b.images)[b.mask, 0].flatten(1) for b in every_batch])
    labels = torch.cat([b.labels[b.mask] for b in every_batch])
    assert len(results) == 2
    for result in results:
        assert result["eval"]["samples"] == count == 11
        assert math.isclose(result["eval"]["top1"], top1) and math.isclose(result["eval"]["top5"], top5)
        assert torch.equal(result["features"][0], features)
        assert torch.equal(result["features"][1], labels)
