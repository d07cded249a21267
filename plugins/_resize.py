"""TensorFlow's bicubic resize, as the official SimCLR code resizes its crops (no antialiasing).

The official code resizes float images in [0, 1]: TF2 (``simclr_tf2/data_util.py``) with
``tf.image.resize(..., method=BICUBIC)`` (``antialias`` False), which runs TensorFlow's
``ResizeBicubic`` kernel with half-pixel centers; TF1 (``simclr_tf1/data_util.py``) with
``tf.image.resize_bicubic`` at its defaults (no half-pixel centers, no corner alignment). The
kernel (``tensorflow/core/kernels/image/resize_bicubic_op.cc``) samples the Keys cubic
convolution from a table of 1,025 entries per unit of distance:

- ``tf2``: source position ``(x + 0.5) * in / out - 0.5``, Keys ``a = -0.5``; taps outside the
  image get weight 0 and the four weights are renormalized to sum 1;
- ``tf1``: source position ``x * in / out``, ``a = -0.75``; taps outside the image repeat the edge
  pixel (weights unchanged).

Rows are interpolated first, then columns; nothing is clipped (the official code clips after its
colour ops). Our views are ``uint8``, so :func:`tf_resize_uint8` rounds and saturates the float
result (at most half a grey level from TensorFlow's float output once clipped to [0, 1]).
"""

from __future__ import annotations

from typing import Literal

import torch

#: The TensorFlow resize variants (``"tf2"``: ``tf.image.resize`` bicubic; ``"tf1"``: ``resize_bicubic``).
TFVariant = Literal["tf2", "tf1"]

#: Entries per unit distance of TensorFlow's cubic coefficient table (``kTableSize``).
TABLE_SIZE = 1024


def _coefficient_table(a: float) -> torch.Tensor:
    """``float32 [TABLE_SIZE + 1, 2]``: the cubic's weight at distance ``x = i / TABLE_SIZE`` and ``1 + x``.

    As the kernel builds it: ``x`` and ``1 + x`` held in float, the polynomials evaluated in double.
    """
    x = (torch.arange(TABLE_SIZE + 1, dtype=torch.float64) / TABLE_SIZE).float().double()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    x = (x + 1.0).float().double()
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.stack([near, far], dim=1).float()


def tf_cubic_matrix(in_size: int, out_size: int, variant: TFVariant) -> torch.Tensor:
    """``float32 [out_size, in_size]``: row ``y`` holds the weights output ``y`` gives each input pixel.

    Args:
        in_size: Input pixels along the axis.
        out_size: Output pixels along the axis.
        variant: ``"tf2"`` or ``"tf1"`` (see the module docstring).
    """
    half_pixel = variant == "tf2"
    table = _coefficient_table(-0.5 if half_pixel else -0.75)
    scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    position = torch.arange(out_size, dtype=torch.float32)
    source = (position + 0.5) * scale - 0.5 if half_pixel else position * scale  # float, as the kernel
    base = torch.floor(source)
    offset = torch.round((source - base) * TABLE_SIZE).long()  # lrintf: nearest, ties to even
    taps = base.long().unsqueeze(1) + torch.arange(-1, 3).unsqueeze(0)  # [out, 4]
    weights = torch.stack(
        [table[offset, 1], table[offset, 0], table[TABLE_SIZE - offset, 0], table[TABLE_SIZE - offset, 1]],
        dim=1,
    )
    if half_pixel:  # taps outside the image weigh nothing; the rest are renormalized to sum 1
        weights = torch.where((taps >= 0) & (taps < in_size), weights, torch.zeros(()))
        total = weights.sum(dim=1, keepdim=True)
        weights = torch.where(total.abs() > 0, weights * (1.0 / total), weights)
    matrix = torch.zeros(out_size, in_size, dtype=torch.float32)
    return matrix.scatter_add_(1, taps.clamp(0, in_size - 1), weights)


def tf_resize(image: torch.Tensor, size: tuple[int, int], variant: TFVariant) -> torch.Tensor:
    """TensorFlow's bicubic resize of ``float32 [C, H, W]`` to ``float32 [C, h, w]`` (not clipped)."""
    rows = tf_cubic_matrix(image.shape[1], size[0], variant)
    columns = tf_cubic_matrix(image.shape[2], size[1], variant)
    across = image.float() @ columns.T  # [C, H, w]: each input row interpolated first
    return rows @ across  # [C, h, w]


def tf_resize_uint8(image: torch.Tensor, size: int, variant: TFVariant) -> torch.Tensor:
    """:func:`tf_resize` of ``uint8 [C, H, W]`` to ``uint8 [C, size, size]``, rounded and saturated."""
    resized = tf_resize(image, (size, size), variant)
    return resized.round().clamp(0, 255).to(torch.uint8)
