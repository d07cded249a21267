"""Our own transcriptions of SimCLR's official TensorFlow code, in PyTorch, for equality tests.

Each function follows the structure of the official function it names (google-research/simclr,
``tf2/``; a copy is in ``../shared/reference/simclr_tf2``), step by step and with the official
variable-name rules, so a test can hold the project's components against it. Written for these
tests from reading the official code; nothing here is imported by the package.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

#: ``LARGE_NUM`` of ``tf2/objective.py``: subtracted from the masked (self) logits.
LARGE_NUM = 1e9

#: ``tf2/model.py`` ``build_optimizer``: what LARS excludes from weight decay and, since
#: ``exclude_from_layer_adaptation`` is left None, from layer adaptation too.
LARS_EXCLUDE = ("batch_normalization", "bias", "head_supervised")

#: ``tf2/lars_optimizer.py`` ``EETA_DEFAULT``.
EETA = 0.001


def _softmax_cross_entropy_with_logits(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``tf.nn.softmax_cross_entropy_with_logits``: per-row ``-sum(labels * log_softmax(logits))``."""
    return -(labels * torch.log_softmax(logits, dim=1)).sum(dim=1)


def contrastive_loss(
    hidden_per_replica: Sequence[torch.Tensor], replica_id: int, temperature: float
) -> torch.Tensor:
    """``add_contrastive_loss`` (``tf2/objective.py``) as computed on one replica.

    Args:
        hidden_per_replica: Every replica's ``hidden``: ``[2b, d]``, the first view's rows then
            the second's (the official model concatenates the views along the batch).
        replica_id: The replica whose loss to compute (``replica_id_in_sync_group``).
        temperature: Softmax temperature.

    Returns:
        The replica's scalar loss: ``reduce_mean(loss_a + loss_b)``.
    """
    normalized = [F.normalize(h, dim=-1) for h in hidden_per_replica]  # hidden_norm=True
    hidden1, hidden2 = torch.chunk(normalized[replica_id], 2, dim=0)
    batch_size = hidden1.shape[0]
    if len(normalized) > 1:  # tpu_cross_replica_concat of each view, replica order
        hidden1_large = torch.cat([torch.chunk(h, 2, dim=0)[0] for h in normalized])
        hidden2_large = torch.cat([torch.chunk(h, 2, dim=0)[1] for h in normalized])
    else:
        hidden1_large, hidden2_large = hidden1, hidden2
    enlarged = hidden1_large.shape[0]
    labels_idx = torch.arange(batch_size) + replica_id * batch_size
    labels = F.one_hot(labels_idx, enlarged * 2).to(hidden1.dtype)
    masks = F.one_hot(labels_idx, enlarged).to(hidden1.dtype)

    logits_aa = hidden1 @ hidden1_large.T / temperature - masks * LARGE_NUM
    logits_bb = hidden2 @ hidden2_large.T / temperature - masks * LARGE_NUM
    logits_ab = hidden1 @ hidden2_large.T / temperature
    logits_ba = hidden2 @ hidden1_large.T / temperature
    loss_a = _softmax_cross_entropy_with_logits(labels, torch.cat([logits_ab, logits_aa], dim=1))
    loss_b = _softmax_cross_entropy_with_logits(labels, torch.cat([logits_ba, logits_bb], dim=1))
    return (loss_a + loss_b).mean()


def _matches_any(name: str, patterns: Sequence[str]) -> bool:
    return any(re.search(pattern, name) is not None for pattern in patterns)


class LarsOptimizer:
    """``LARSOptimizer`` (``tf2/lars_optimizer.py``) with classic momentum, no Nesterov.

    Variables are addressed by official-style names; a variable is excluded from weight decay
    and from layer adaptation when a pattern of ``exclude`` occurs in its name.
    """

    def __init__(
        self,
        *,
        momentum: float,
        weight_decay: float,
        eeta: float = EETA,
        exclude: Sequence[str] = LARS_EXCLUDE,
    ) -> None:
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.eeta = eeta
        self.exclude = tuple(exclude)
        self.slots: dict[str, torch.Tensor] = {}

    def apply(self, name: str, param: torch.Tensor, grad: torch.Tensor, learning_rate: float) -> torch.Tensor:
        """``_resource_apply_dense`` for one variable: the new value (the slot is updated)."""
        v = self.slots.get(name, torch.zeros_like(param))
        if self.weight_decay and not _matches_any(name, self.exclude):  # _use_weight_decay
            grad = grad + self.weight_decay * param
        trust_ratio = torch.tensor(1.0, dtype=param.dtype)
        if not _matches_any(name, self.exclude):  # _do_layer_adaptation
            w_norm = torch.linalg.vector_norm(param)
            g_norm = torch.linalg.vector_norm(grad)
            if w_norm > 0:
                trust_ratio = self.eeta * w_norm / g_norm if g_norm > 0 else trust_ratio
        scaled_lr = learning_rate * trust_ratio
        next_v = self.momentum * v + scaled_lr * grad
        self.slots[name] = next_v
        return param - next_v


def l2_loss(v: torch.Tensor) -> torch.Tensor:
    """``tf.nn.l2_loss``: ``sum(v ** 2) / 2``."""
    return (v**2).sum() / 2


def weight_decay_loss(variables: dict[str, torch.Tensor], weight_decay: float) -> torch.Tensor:
    """``add_weight_decay(model, adjust_per_optimizer=True)`` (``tf2/model.py``) under LARS.

    LARS decays the other variables itself; the supervised head's kernels are decayed here,
    through the loss.
    """
    terms = [l2_loss(v) for name, v in variables.items() if "head_supervised" in name and "bias" not in name]
    if not terms:
        return torch.zeros(())
    return weight_decay * torch.stack(terms).sum()


def finetune_steps(
    variables: dict[str, torch.Tensor],
    supervised_loss: Callable[[dict[str, torch.Tensor], int], torch.Tensor],
    learning_rates: Sequence[float],
    *,
    momentum: float,
    weight_decay: float,
) -> dict[str, torch.Tensor]:
    """The fine-tuning ``single_step`` of ``tf2/run.py`` repeated, on one replica.

    Each step: ``loss = sup_loss + add_weight_decay(...)``, gradients of every trainable variable,
    then ``LARSOptimizer.apply_gradients``.

    Args:
        variables: Official-style name -> initial value.
        supervised_loss: ``(variables, step) -> scalar``: the supervised loss of that step's batch
            computed with the given variable values (they require grad).
        learning_rates: The learning rate of each step.
        momentum: LARS momentum.
        weight_decay: The ``weight_decay`` flag.

    Returns:
        The variables after the steps.
    """
    optimizer = LarsOptimizer(momentum=momentum, weight_decay=weight_decay)
    current = {name: value.detach().clone() for name, value in variables.items()}
    for step, learning_rate in enumerate(learning_rates):
        leaves = {name: value.clone().requires_grad_(True) for name, value in current.items()}
        loss = supervised_loss(leaves, step) + weight_decay_loss(leaves, weight_decay)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        current = {
            name: optimizer.apply(name, leaves[name].detach(), grad, learning_rate)
            for name, grad in zip(leaves, grads, strict=True)
        }
    return current


# ----------------------------------------------------------------------------- bicubic resize


def resize_bicubic(image: Sequence[Sequence[Sequence[float]]], out_h: int, out_w: int, *, tf2: bool) -> list:
    """TensorFlow's ``ResizeBicubic`` of ``[H][W][C]`` floats, one output pixel at a time.

    What ``tf2/data_util.py`` (``tf.image.resize(..., BICUBIC)``: ``half_pixel_centers=True``) and
    ``tf1/data_util.py`` (``tf.image.resize_bicubic``: legacy) run, transcribed from the kernel
    (``tensorflow/core/kernels/image/resize_bicubic_op.cc``): a table of Keys-cubic weights at
    1/1024 steps (``a = -0.5`` with half-pixel centers, else ``-0.75``), the sample position
    ``(x + 0.5) * scale - 0.5`` (legacy ``x * scale``), ``scale = in / out`` in float, four taps
    around ``floor(position)``; with half-pixel centers a tap outside the image weighs 0 and the
    weights are divided by their sum, else it reads the edge pixel. Rows first, then columns.
    Plain Python floats (double) apart from the kernel's float scale, position and table.
    """
    import numpy as np

    f32 = np.float32
    a = -0.5 if tf2 else -0.75
    table = []
    for i in range(1025):
        x = float(f32(i * 1.0 / 1024))
        c0 = float(f32(((a + 2) * x - (a + 3)) * x * x + 1))
        x = float(f32(x + 1.0))
        c1 = float(f32(((a * x - 5 * a) * x + 8 * a) * x - 4 * a))
        table.append((c0, c1))

    def taps(out_loc: int, in_size: int, out_size: int) -> list[tuple[int, float]]:
        scale = f32(in_size) / f32(out_size)
        position = (f32(out_loc) + f32(0.5)) * scale - f32(0.5) if tf2 else f32(out_loc) * scale
        base = int(np.floor(position))
        offset = int(np.rint(f32(position - f32(base)) * f32(1024)))
        weights = [table[offset][1], table[offset][0], table[1024 - offset][0], table[1024 - offset][1]]
        indices = [base - 1, base, base + 1, base + 2]
        bounded = [min(in_size - 1, max(0, i)) for i in indices]
        if tf2:
            weights = [w if b == i else 0.0 for w, b, i in zip(weights, bounded, indices, strict=True)]
            total = sum(weights)
            weights = [w * float(f32(1.0) / f32(total)) for w in weights]
        return list(zip(bounded, weights, strict=True))

    in_h, in_w, channels = len(image), len(image[0]), len(image[0][0])
    out = []
    for y in range(out_h):
        row_taps = taps(y, in_h, out_h)
        line = []
        for x in range(out_w):
            col_taps = taps(x, in_w, out_w)
            pixel = []
            for c in range(channels):
                across = [sum(w * image[r][i][c] for i, w in col_taps) for r, _ in row_taps]
                pixel.append(sum(w * v for (_, w), v in zip(row_taps, across, strict=True)))
            line.append(pixel)
        out.append(line)
    return out
