"""Built-in losses in one process: values against the formulas written out by hand, metrics, dtypes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastive.errors import SpecError
from contrastive.registry import load_registry


def _build(name: str, **options: object) -> torch.nn.Module:
    module: torch.nn.Module = load_registry().build("losses", name, **options)
    return module


def _nt_xent_numpy(z1: np.ndarray, z2: np.ndarray, tau: float) -> tuple[float, float]:
    """NT-Xent and its accuracy by explicit loops: row i's positive is the other view of sample i.

    The loss is SimCLR's: the per-row cross-entropies of both views summed and divided by the
    number of samples ``n`` (the sum of the two directions' means).
    """
    z = np.concatenate([z1, z2]).astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = z1.shape[0]
    losses, hits = [], 0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        scores = {k: float(z[i] @ z[k]) / tau for k in range(2 * n) if k != i}
        denominator = sum(math.exp(s) for s in scores.values())
        losses.append(-math.log(math.exp(scores[positive]) / denominator))
        hits += max(scores, key=lambda k: scores[k]) == positive
    return sum(losses) / n, hits / (2 * n)


# ----------------------------------------------------------------------------- every loss


@pytest.mark.parametrize(
    ("name", "args", "metric"),
    [
        ("nt_xent", lambda: (torch.randn(4, 8), torch.randn(4, 8)), "contrastive_accuracy"),
        ("cross_entropy", lambda: (torch.randn(4, 5), torch.tensor([0, 4, -1, 2])), "accuracy"),
        (
            "distillation",
            lambda: (torch.randn(4, 5), torch.randn(4, 5), torch.tensor([1, -1, -1, 3])),
            "agreement",
        ),
    ],
)
def test_every_loss_builds_from_defaults_and_backpropagates(name: str, args: object, metric: str) -> None:
    torch.manual_seed(0)
    inputs = [t.requires_grad_(True) if t.is_floating_point() else t for t in args()]  # type: ignore[operator]
    out = _build(name)(*inputs)
    assert out.loss.shape == () and out.loss.dtype == torch.float32
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert inputs[0].grad is not None and torch.isfinite(inputs[0].grad).all()
    assert set(out.metrics) == {metric}
    value = out.metrics[metric]
    assert value.shape == () and not value.requires_grad and 0.0 <= value.item() <= 1.0


# ----------------------------------------------------------------------------- nt_xent


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_nt_xent_matches_the_formula_by_hand(tau: float) -> None:
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    out = _build("nt_xent", temperature=tau)(z1, z2)
    expected_loss, expected_accuracy = _nt_xent_numpy(z1.numpy(), z2.numpy(), tau)
    assert out.loss.item() == pytest.approx(expected_loss, rel=1e-5)
    assert out.metrics["contrastive_accuracy"].item() == pytest.approx(expected_accuracy)


def test_nt_xent_is_invariant_to_projection_norms() -> None:
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    scale = torch.rand(4, 1, generator=g) * 10 + 0.1
    loss = _build("nt_xent")
    assert loss(z1 * scale, z2).loss.item() == pytest.approx(loss(z1, z2).loss.item(), rel=1e-5)


def test_nt_xent_masks_self_similarity() -> None:
    # Identical views: each row's positive ties with its own column (both 1 / tau). Unmasked, the
    # self column would take the top logit and half the loss mass; masked, the positive wins.
    z = torch.randn(5, 8, generator=torch.Generator().manual_seed(5))
    out = _build("nt_xent", temperature=0.1)(z, z.clone())
    assert out.metrics["contrastive_accuracy"].item() == 1.0
    expected_loss, _ = _nt_xent_numpy(z.numpy(), z.numpy(), 0.1)
    assert out.loss.item() == pytest.approx(expected_loss, rel=1e-5)


def test_nt_xent_accuracy_counts_rows_whose_top_logit_is_the_positive() -> None:
    z1 = torch.randn(4, 16, generator=torch.Generator().manual_seed(6))
    loss = _build("nt_xent")
    assert loss(z1, z1 + 0.01).metrics["contrastive_accuracy"].item() == 1.0
    # A derangement of the view-2 rows: every row's closest other column is someone else's view.
    assert loss(z1, z1[[1, 2, 3, 0]]).metrics["contrastive_accuracy"].item() == 0.0


def test_nt_xent_computes_in_float32_under_bfloat16_autocast() -> None:
    torch.manual_seed(7)
    layer = torch.nn.Linear(8, 16)
    x1, x2 = torch.randn(6, 8), torch.randn(6, 8)
    loss = _build("nt_xent", temperature=0.1)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        z1, z2 = layer(x1), layer(x2)
        assert z1.dtype == torch.bfloat16
        out = loss(z1, z2)
    assert out.loss.dtype == torch.float32
    reference = loss(z1.float(), z2.float()).loss  # same bf16 projections, float32 outside autocast
    assert out.loss.item() == pytest.approx(reference.item(), abs=1e-6)
    out.loss.backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


def test_nt_xent_gradient_matches_the_plain_formula() -> None:
    g = torch.Generator().manual_seed(8)
    z1 = torch.randn(4, 5, generator=g, requires_grad=True)
    z2 = torch.randn(4, 5, generator=g, requires_grad=True)
    _build("nt_xent", temperature=0.2)(z1, z2).loss.backward()
    a, b = z1.detach().clone().requires_grad_(True), z2.detach().clone().requires_grad_(True)
    h = F.normalize(torch.cat([a, b]), dim=1)
    sim = (h @ h.T / 0.2).masked_fill(torch.eye(8, dtype=torch.bool), float("-inf"))
    (2 * F.cross_entropy(sim, torch.tensor([4, 5, 6, 7, 0, 1, 2, 3]))).backward()  # both directions
    torch.testing.assert_close(z1.grad, a.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z2.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_nt_xent_rejects_bad_inputs_and_options() -> None:
    with pytest.raises(ValueError, match="one shape"):
        _build("nt_xent")(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(SpecError, match="temperature"):
        _build("nt_xent", temperature=0.0)


# ----------------------------------------------------------------------------- cross_entropy


def test_cross_entropy_ignores_unlabelled_rows() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0], [0.5, -0.5, 3.0]])
    targets = torch.tensor([0, 2, -1, 2])
    out = _build("cross_entropy")(logits, targets)
    by_hand = [
        -math.log(math.exp(r[t]) / sum(math.exp(v) for v in r))
        for r, t in zip(logits.tolist(), targets.tolist(), strict=True)
        if t != -1
    ]
    assert out.loss.item() == pytest.approx(sum(by_hand) / 3, rel=1e-6)
    assert out.metrics["accuracy"].item() == pytest.approx(2 / 3)  # rows 0 and 3 right, row 1 wrong


def test_cross_entropy_label_smoothing_by_hand() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 3.0, 1.0]])
    targets = torch.tensor([1, 3])
    eps = 0.2
    out = _build("cross_entropy", label_smoothing=eps)(logits, targets)
    log_p = torch.log_softmax(logits.double(), dim=1)
    rows = [-(1 - eps) * log_p[i, t] - eps * log_p[i].mean() for i, t in enumerate(targets.tolist())]
    assert out.loss.item() == pytest.approx(float(sum(rows)) / 2, rel=1e-6)


def test_cross_entropy_without_labels_is_zero_with_a_gradient() -> None:
    logits = torch.randn(3, 4, requires_grad=True)
    out = _build("cross_entropy")(logits, torch.full((3,), -1))
    assert out.loss.item() == 0.0 and out.metrics["accuracy"].item() == 0.0
    out.loss.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_cross_entropy_rejects_smoothing_out_of_range() -> None:
    with pytest.raises(SpecError, match="label_smoothing"):
        _build("cross_entropy", label_smoothing=1.5)


# ----------------------------------------------------------------------------- distillation


def _soft_ce_by_hand(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> float:
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        t_exp = [math.exp(v / tau) for v in t_row]
        s_norm = math.log(sum(math.exp(v / tau) for v in s_row))
        total += -sum(te / sum(t_exp) * (sv / tau - s_norm) for te, sv in zip(t_exp, s_row, strict=True))
    return total / len(student)


@pytest.mark.parametrize("tau", [1.0, 2.0, 0.5])
def test_distillation_matches_soft_cross_entropy_by_hand(tau: float) -> None:
    student = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.4, 0.1], [3.0, -2.0, 0.5]])
    teacher = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 4.0], [1.0, 0.0, 1.5]])
    out = _build("distillation", temperature=tau)(student, teacher)
    assert out.loss.item() == pytest.approx(_soft_ce_by_hand(student, teacher, tau), rel=1e-6)
    assert out.metrics["agreement"].item() == pytest.approx(1 / 3)  # only row 0 argmaxes agree


def test_distillation_scales_by_temperature_squared_when_asked() -> None:
    g = torch.Generator().manual_seed(9)
    student, teacher = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    plain = _build("distillation", temperature=3.0)(student, teacher).loss
    scaled = _build("distillation", temperature=3.0, scale_by_temperature_squared=True)(student, teacher).loss
    assert scaled.item() == pytest.approx(9.0 * plain.item(), rel=1e-6)


def test_distillation_labelled_term_uses_only_labelled_rows() -> None:
    g = torch.Generator().manual_seed(10)
    student, teacher = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    targets = torch.tensor([-1, 2, -1, 0])
    soft = _soft_ce_by_hand(student, teacher, 2.0)
    hard = F.cross_entropy(student[[1, 3]], targets[[1, 3]]).item()
    loss = _build("distillation", temperature=2.0, labelled_weight=0.5)
    assert loss(student, teacher, targets).loss.item() == pytest.approx(soft + 0.5 * hard, rel=1e-6)
    assert loss(student, teacher).loss.item() == pytest.approx(soft, rel=1e-6)
    assert loss(student, teacher, torch.full((4,), -1)).loss.item() == pytest.approx(soft, rel=1e-6)
    # Weight 0 (the default) ignores labels altogether.
    assert _build("distillation", temperature=2.0)(student, teacher, targets).loss.item() == pytest.approx(
        soft, rel=1e-6
    )


def test_distillation_sends_no_gradient_to_the_teacher_and_is_float32_under_autocast() -> None:
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = _build("distillation")(student.bfloat16(), teacher.bfloat16())
    assert out.loss.dtype == torch.float32
    out.loss.backward()
    assert student.grad is not None and teacher.grad is None


def test_distillation_gradient_vanishes_when_student_matches_teacher() -> None:
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(11))
    student = logits.clone().requires_grad_(True)
    _build("distillation", temperature=2.0)(student, logits).loss.backward()
    assert student.grad is not None
    torch.testing.assert_close(student.grad, torch.zeros_like(logits), atol=1e-7, rtol=0)
