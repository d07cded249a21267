"""Evaluation: top-k accuracy of a classifier, the weighted kNN monitor of an encoder, and the
label-free RankMe effective rank of its features.

Both work on the batches :meth:`contrastive.interfaces.DataSource.eval_batches` yields: one view per
sample (``V = 1``), padding rows marked False in ``mask``. Padding rows, and rows without a label
(``-1``), never count. Under ``torch.distributed`` every rank passes its own share of the split and
gets the result for the whole split.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from contrastive.errors import DataError
from contrastive.interfaces import Batch
from contrastive.progress import Progress, tracked

__all__ = [
    "RANKME_EPSILON",
    "effective_rank",
    "evaluate_classifier",
    "extract_features",
    "knn_accuracy",
    "topk_correct",
]

logger = logging.getLogger(__name__)

#: RankMe's epsilon, added to every normalised singular value (Garrido et al. 2023 give 1e-7 for
#: float32 embeddings).
RANKME_EPSILON = 1e-7

#: A batched transform: ``uint8 [B, V, 3, S, S]`` on the device to ``float32 [B, V, 3, S, S]``.
Transform = Callable[[torch.Tensor], torch.Tensor]


def topk_correct(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, torch.Tensor]:
    """Count masked-in rows whose target is among the ``k`` highest logits.

    Args:
        logits: ``float [B, C]`` class scores.
        targets: ``int64 [B]`` class indices; a negative target never counts as correct.
        mask: ``bool [B]``; rows where it is False never count.
        ks: Values of k, each ``>= 1``; a k above C counts as C.

    Returns:
        ``{k: int64 scalar tensor}`` on ``logits.device``, for every k in ``ks``.

    Raises:
        ValueError: Shapes disagree or some k is below 1.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, C], got shape {tuple(logits.shape)}")
    batch, num_classes = logits.shape
    if targets.shape != (batch,) or mask.shape != (batch,):
        raise ValueError(
            f"targets and mask must be [{batch}], got {tuple(targets.shape)} and {tuple(mask.shape)}"
        )
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {tuple(ks)}")
    if not ks:
        return {}
    kmax = min(max(ks), num_classes)
    top = logits.topk(kmax, dim=1).indices  # [B, kmax]
    hits = top == targets.to(top.device).unsqueeze(1)  # [B, kmax]
    valid = mask.to(device=top.device, dtype=torch.bool)
    return {k: (hits[:, : min(k, num_classes)].any(dim=1) & valid).sum() for k in ks}


def evaluate_classifier(
    model: nn.Module,
    batches: Iterable[Batch],
    device: torch.device | str,
    transform: Transform,
    *,
    progress: Progress | None = None,
    total: int | None = None,
    label: str = "evaluating",
) -> dict[str, float | int]:
    """Top-1 and top-5 accuracy of ``model`` over ``batches``, summed over all ranks.

    The model runs in eval mode under ``torch.no_grad``; its training mode is restored afterwards.

    Args:
        model: Maps ``float32 [B, 3, S, S]`` to logits ``[B, C]``.
        batches: This rank's evaluation batches (``images`` ``uint8 [B, 1, 3, S, S]``).
        device: Device the model lives on.
        transform: Batched preprocessing (the augmentation's ``on_device``), ``uint8 [B, V, 3, S, S]``
            to ``float32 [B, V, 3, S, S]``; view 0 is classified.
        progress: Told of every batch's rows (this rank's) as a task named ``label``.
        total: This rank's rows, for the progress (None: unknown).
        label: The progress task's name.

    Returns:
        ``{"top1": fraction, "top5": fraction, "samples": number of rows counted}`` over all ranks.

    Raises:
        DataError: No labelled, masked-in row on any rank.
    """
    device = torch.device(device)
    totals = torch.zeros(3, dtype=torch.int64, device=device)  # top1, top5, samples
    with _eval_mode(model), torch.no_grad(), tracked(progress, total, label) as advance:
        for batch in batches:
            labels = batch.labels.to(device, non_blocking=True)
            valid = batch.mask.to(device, non_blocking=True) & (labels >= 0)
            logits = model(_first_view(batch, device, transform))
            counts = topk_correct(logits, labels, valid, ks=(1, 5))
            totals += torch.stack([counts[1], counts[5], valid.sum()])
            advance(_rows(batch))
    if _distributed():
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    top1, top5, samples = (int(v) for v in totals.tolist())
    if samples == 0:
        raise DataError("evaluation saw no labelled samples (every row was padding or unlabelled)")
    return {"top1": top1 / samples, "top5": top5 / samples, "samples": samples}


def extract_features(
    encoder: nn.Module,
    batches: Iterable[Batch],
    device: torch.device | str,
    transform: Transform,
    *,
    progress: Progress | None = None,
    total: int | None = None,
    label: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode every valid row of the split, gathered from all ranks.

    Args:
        encoder: Maps ``float32 [B, 3, S, S]`` to features ``[B, D]``; run in eval mode under
            ``torch.no_grad``, its training mode restored afterwards.
        batches: This rank's evaluation batches (``images`` ``uint8 [B, 1, 3, S, S]``).
        device: Device the encoder lives on.
        transform: Batched preprocessing as in :func:`evaluate_classifier`; view 0 is encoded.
        progress: Told of every batch's rows (this rank's) as a task named ``label``.
        total: This rank's rows, for the progress (None: unknown).
        label: The progress task's name.

    Returns:
        ``features`` ``float32 [N, D]`` and ``labels`` ``int64 [N]`` on ``device``, N the number of
        masked-in rows over all ranks (rank-major order). Unlabelled rows are kept (label ``-1``).

    Raises:
        DataError: No batch at all.
    """
    device = torch.device(device)
    features: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    with _eval_mode(encoder), torch.no_grad(), tracked(progress, total, label) as advance:
        for batch in batches:
            features.append(encoder(_first_view(batch, device, transform)).float())
            labels.append(batch.labels.to(device, dtype=torch.int64, non_blocking=True))
            masks.append(batch.mask.to(device, dtype=torch.bool, non_blocking=True))
            advance(_rows(batch))
    if not features:
        raise DataError("no evaluation batches to extract features from")
    local = (torch.cat(features), torch.cat(labels), torch.cat(masks))
    all_features, all_labels, all_masks = _gather_rows(*local) if _distributed() else local
    return all_features[all_masks], all_labels[all_masks]


def effective_rank(features: torch.Tensor, epsilon: float = RANKME_EPSILON) -> float:
    """RankMe (Garrido et al. 2023): the effective rank of a batch of embeddings, label-free.

    With ``sigma_k`` the singular values of ``features`` and ``p_k = sigma_k / sum_j sigma_j +
    epsilon``, RankMe is ``exp(-sum_k p_k log p_k)``: about r for a matrix of rank r whose
    nonzero singular values are equal, at most ``min(N, D)``, 1 for a collapsed representation.
    The embeddings are not centred (as in the paper).

    Args:
        features: ``float [N, D]`` embeddings of a fixed batch (N well above D gives a stable value).
        epsilon: Added to every normalised singular value.

    Raises:
        ValueError: Not a 2-d tensor, or no rows.
    """
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"RankMe needs [N, D] embeddings with N > 0, got shape {tuple(features.shape)}")
    sigma = torch.linalg.svdvals(features.detach().double())
    total = sigma.sum()
    if float(total) == 0.0:
        return 1.0  # every embedding is zero: nothing spans any direction
    p = sigma / total + epsilon
    return float(torch.exp(-(p * p.log()).sum()))


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> float:
    """Weighted kNN classification accuracy on cosine similarity (the InstDisc/SimCLR monitor).

    Each test row votes with its ``k`` most similar training rows, each weighted by
    ``exp(similarity / temperature)``; the class with the largest total wins.

    Args:
        train_features: ``[N, D]`` bank of training features (need not be normalized).
        train_labels: ``int64 [N]`` in ``[0, num_classes)``.
        test_features: ``[M, D]`` features to classify.
        test_labels: ``int64 [M]`` in ``[0, num_classes)``.
        num_classes: Number of classes C.
        k: Neighbours per test row (capped at N), ``>= 1``.
        temperature: Softness of the vote weights, ``> 0``.
        chunk_size: Test rows per similarity block (bounds memory to ``chunk_size * N``).

    Returns:
        Fraction of test rows classified correctly, in ``[0, 1]``.

    Raises:
        ValueError: Bad shapes or hyper-parameters.
        DataError: Empty feature sets, or labels outside ``[0, num_classes)`` (e.g. unlabelled data).
    """
    _check_knn_inputs(train_features, train_labels, test_features, test_labels, num_classes, k, temperature)
    bank = nn.functional.normalize(train_features.float(), dim=1)
    bank_labels = train_labels.to(bank.device, dtype=torch.int64)
    neighbours = min(k, bank.shape[0])
    correct = 0
    for start in range(0, test_features.shape[0], max(chunk_size, 1)):
        queries = nn.functional.normalize(test_features[start : start + chunk_size].float(), dim=1)
        similarity, index = (queries.to(bank.device) @ bank.T).topk(neighbours, dim=1)  # [m, k]
        votes = torch.zeros(queries.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, bank_labels[index], (similarity / temperature).exp())
        targets = test_labels[start : start + chunk_size].to(bank.device)
        correct += int((votes.argmax(dim=1) == targets).sum())
    return correct / test_features.shape[0]


def _check_knn_inputs(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int,
    temperature: float,
) -> None:
    """Validate :func:`knn_accuracy`'s arguments."""
    if k < 1 or temperature <= 0 or num_classes < 1:
        raise ValueError(
            f"need k >= 1, temperature > 0, num_classes >= 1; got {k}, {temperature}, {num_classes}"
        )
    if train_features.dim() != 2 or test_features.dim() != 2:
        raise ValueError("features must be [N, D]")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"feature dims differ: {train_features.shape[1]} vs {test_features.shape[1]}")
    if train_labels.shape != train_features.shape[:1] or test_labels.shape != test_features.shape[:1]:
        raise ValueError("labels must be [N] matching their features")
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise DataError("kNN monitor needs at least one training and one test sample")
    for name, labels in (("training", train_labels), ("test", test_labels)):
        if bool(((labels < 0) | (labels >= num_classes)).any()):
            raise DataError(
                f"kNN monitor: {name} labels must lie in [0, {num_classes}) (is the split labelled?)"
            )


def _rows(batch: Batch) -> int:
    """Rows of ``batch`` that count (padding left out when the mask is on the host: no sync)."""
    mask = batch.mask
    return int(mask.sum()) if mask.device.type == "cpu" else int(mask.shape[0])


def _first_view(batch: Batch, device: torch.device, transform: Transform) -> torch.Tensor:
    """View 0 of ``batch.images`` after ``transform``, as ``float32 [B, 3, S, S]`` on ``device``."""
    views = transform(batch.images.to(device, non_blocking=True))
    return views[:, 0]


def _distributed() -> bool:
    """Whether a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def _gather_rows(
    features: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All-gather per-rank rows of possibly different counts (padded to the largest, then trimmed).

    Args:
        features: ``float32 [n, D]`` this rank's rows.
        labels: ``int64 [n]``.
        mask: ``bool [n]``.

    Returns:
        The concatenation over ranks in rank order: ``[sum n, D]``, ``[sum n]``, ``[sum n]``.
    """
    world = dist.get_world_size()
    count = torch.tensor([features.shape[0]], dtype=torch.int64, device=features.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    largest = max(sizes)
    gathered: list[list[torch.Tensor]] = []
    for tensor in (features, labels, mask.to(torch.uint8)):  # gloo cannot gather bool
        padded = torch.zeros((largest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        gathered.append([part[:size] for part, size in zip(parts, sizes, strict=True)])
    return torch.cat(gathered[0]), torch.cat(gathered[1]), torch.cat(gathered[2]).bool()


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode; on exit restore every submodule's own training flag."""
    modes = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for sub, training in modes:
            sub.training = training
