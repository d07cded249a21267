"""Batched photometric ops for SimCLR views, driven by explicit per-image random draws.

Every op takes a float batch ``x`` of shape ``[N, 3, S, S]`` with values in [0, 1] and per-image
parameters of shape ``[N]``, so that a whole device batch is distorted in a few tensor passes while
each image still gets its own random draws. The math follows the SimCLR reference
(``google-research/simclr``, ``tf2/data_util.py``, i.e. ``tf.image`` semantics):

- brightness multiplies the image by its factor (SimCLRv2's multiplicative variant);
- contrast scales each channel's deviation from that channel's spatial mean;
- saturation scales HSV saturation, clipped to [0, 1] (a blend towards the per-pixel maximum);
- hue rotates HSV hue by a fraction of the colour circle;
- grayscale uses the luma weights (0.2989, 0.587, 0.114) and keeps three channels;
- Gaussian blur is separable, with kernel size from :func:`blur_kernel_size`.

One deliberate difference: the blur pads by reflection (the reference pads with zeros, which
darkens the borders).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

#: Luma weights of ``rgb_to_grayscale`` (the same in tf.image and torchvision).
LUMA = (0.2989, 0.587, 0.114)

#: Jitter ops in the order of their index in :attr:`PhotometricDraws.order`.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


class PhotometricDraws(NamedTuple):
    """The random choices for distorting ``N`` images (all tensors on the images' device).

    Attributes:
        jitter: ``bool [N]``: whether colour jitter is applied.
        order: ``int64 [N, 4]``: a permutation of the op indices; round ``r`` applies op
            ``order[:, r]`` (:data:`BRIGHTNESS`, :data:`CONTRAST`, :data:`SATURATION`, :data:`HUE`).
        brightness: ``float32 [N]``: brightness multiplier.
        contrast: ``float32 [N]``: contrast factor.
        saturation: ``float32 [N]``: saturation factor.
        hue: ``float32 [N]``: hue shift in fractions of the colour circle.
        grayscale: ``bool [N]``: whether the image is turned to grayscale (after jitter).
        blur: ``bool [N]``: whether the image is blurred (last).
        sigma: ``float32 [N]``: blur standard deviation in pixels.
    """

    jitter: torch.Tensor
    order: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    grayscale: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor


def blur_kernel_size(size: int) -> int:
    """Blur kernel side for ``size``-pixel views: 10% of the side, made odd as the reference does.

    The reference asks for ``size // 10`` and builds a kernel of radius ``(size // 10) // 2``, i.e.
    side ``2 * ((size // 10) // 2) + 1``: 23 for 224 px, 9 for 96 px, 3 for 32 px and 1 (no blur)
    below 20 px.
    """
    return 2 * ((size // 10) // 2) + 1


def _uniform(
    n: int, low: float, high: float, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=device, generator=generator)


def _bernoulli(n: int, p: float, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) < p


def sample_draws(
    n: int,
    *,
    strength: float,
    jitter_probability: float,
    grayscale_probability: float,
    blur_probability: float,
    sigma_range: tuple[float, float],
    device: torch.device,
    generator: torch.Generator | None = None,
) -> PhotometricDraws:
    """Draw every random choice for ``n`` images, always in the same order (reproducible).

    Brightness, contrast and saturation factors are uniform in ``[max(0, 1 - 0.8 s), 1 + 0.8 s]``
    and the hue shift in ``[-0.2 s, 0.2 s]`` (capped at half the circle) for strength ``s``.

    Args:
        n: Number of images.
        strength: Colour jitter strength ``s``.
        jitter_probability: Probability of applying colour jitter.
        grayscale_probability: Probability of grayscale, drawn independently of the jitter.
        blur_probability: Probability of blurring.
        sigma_range: Blur sigma is uniform in this range (pixels).
        device: Device of the draws (the images' device).
        generator: Source of randomness on ``device``; None uses the global RNG.

    Returns:
        The draws, every tensor with leading dimension ``n``.
    """
    factor_low, factor_high = max(0.0, 1.0 - 0.8 * strength), 1.0 + 0.8 * strength
    hue_delta = min(0.5, 0.2 * strength)
    return PhotometricDraws(
        jitter=_bernoulli(n, jitter_probability, device, generator),
        order=torch.rand(n, 4, device=device, generator=generator).argsort(dim=1),
        brightness=_uniform(n, factor_low, factor_high, device, generator),
        contrast=_uniform(n, factor_low, factor_high, device, generator),
        saturation=_uniform(n, factor_low, factor_high, device, generator),
        hue=_uniform(n, -hue_delta, hue_delta, device, generator),
        grayscale=_bernoulli(n, grayscale_probability, device, generator),
        blur=_bernoulli(n, blur_probability, device, generator),
        sigma=_uniform(n, sigma_range[0], sigma_range[1], device, generator),
    )


def _per_image(values: torch.Tensor) -> torch.Tensor:
    """``[N]`` to ``[N, 1, 1, 1]`` for broadcasting over ``[N, 3, S, S]``."""
    return values.view(-1, 1, 1, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply each image ``[N, 3, S, S]`` by its ``factor`` ``[N]``."""
    return x * _per_image(factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale each channel's deviation from its spatial mean by ``factor`` ``[N]`` (tf.image)."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return torch.lerp(mean, x, _per_image(factor))


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply HSV saturation by ``factor`` ``[N]`` and clip it to [0, 1], keeping hue and value.

    With value ``V = max(r, g, b)``, chroma ``C = V - min(r, g, b)`` and saturation ``C / V``, the
    HSV round trip reduces to ``c' = V - (V - c) * k`` with ``k = min(factor, V / C)``.
    """
    value = x.amax(dim=-3, keepdim=True)
    chroma = value - x.amin(dim=-3, keepdim=True)
    k = torch.minimum(_per_image(factor), value / chroma.clamp_min(1e-12))
    return value - (value - x) * k


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate HSV hue by ``shift`` ``[N]`` (fractions of the circle), keeping saturation and value."""
    r, g, b = x.unbind(dim=-3)
    value = torch.maximum(torch.maximum(r, g), b)
    chroma = value - torch.minimum(torch.minimum(r, g), b)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    # Hue in sixths of the circle, from whichever channel holds the maximum (red wins ties).
    hue = torch.where(
        value == r,
        (g - b) / safe,
        torch.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    hue = torch.remainder(hue + 6.0 * shift.view(-1, 1, 1), 6.0)
    # HSV to RGB: channel n is V - C * clamp(min(k, 4 - k), 0, 1) with k = (n + hue) mod 6.
    offsets = torch.tensor((5.0, 3.0, 1.0), device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(hue.unsqueeze(-3) + offsets, 6.0)
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return value.unsqueeze(-3) - chroma.unsqueeze(-3) * weight


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of ``[N, 3, S, S]`` repeated over three channels."""
    weights = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=-3, keepdim=True).expand_as(x)


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Normalized 1-D Gaussian kernels ``[N, kernel_size]`` for per-image ``sigma`` ``[N]``."""
    radius = kernel_size // 2
    offsets = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    weights = torch.exp(-(offsets**2) / (2.0 * sigma.view(-1, 1) ** 2))
    return weights / weights.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur each image ``[N, C, H, W]`` with its own ``sigma`` ``[N]`` (separable, reflect padding).

    Runs as two depthwise (grouped) convolutions over the ``N * C`` planes.
    """
    if kernel_size <= 1 or x.shape[0] == 0:
        return x
    n, c, h, w = x.shape
    radius = kernel_size // 2
    kernels = gaussian_kernels(sigma, kernel_size).repeat_interleave(c, dim=0)  # [N*C, K]
    planes = x.reshape(1, n * c, h, w)
    planes = F.pad(planes, (radius, radius, 0, 0), mode="reflect")
    planes = F.conv2d(planes, kernels.view(n * c, 1, 1, kernel_size), groups=n * c)
    planes = F.pad(planes, (0, 0, radius, radius), mode="reflect")
    planes = F.conv2d(planes, kernels.view(n * c, 1, kernel_size, 1), groups=n * c)
    return planes.view(n, c, h, w)


#: ``(op index, op, name of its draws field)`` for the four jitter ops.
_JITTER_OPS: tuple[tuple[int, Callable[[torch.Tensor, torch.Tensor], torch.Tensor], str], ...] = (
    (BRIGHTNESS, adjust_brightness, "brightness"),
    (CONTRAST, adjust_contrast, "contrast"),
    (SATURATION, adjust_saturation, "saturation"),
    (HUE, adjust_hue, "hue"),
)


def _apply_where(
    x: torch.Tensor,
    mask: torch.Tensor,
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    params: torch.Tensor,
) -> torch.Tensor:
    """Replace the images selected by ``mask`` ``[N]`` with ``clamp(op(image, param), 0, 1)``."""
    index = mask.nonzero().squeeze(1)
    if index.numel() == 0:
        return x
    selected = op(x.index_select(0, index), params.index_select(0, index)).clamp_(0.0, 1.0)
    return x.index_copy(0, index, selected)


def color_jitter(x: torch.Tensor, draws: PhotometricDraws) -> torch.Tensor:
    """Apply brightness, contrast, saturation and hue in each image's own random order.

    Round ``r`` applies, to every image with ``draws.jitter``, the op ``draws.order[:, r]``; each
    image is clamped to [0, 1] after each of its ops, as in the reference.

    Args:
        x: ``float32 [N, 3, S, S]`` in [0, 1].
        draws: Draws for the ``N`` images.

    Returns:
        ``float32 [N, 3, S, S]`` in [0, 1].
    """
    for round_ in range(4):
        for op_index, op, field in _JITTER_OPS:
            mask = draws.jitter & (draws.order[:, round_] == op_index)
            x = _apply_where(x, mask, op, getattr(draws, field))
    return x


def color_distort(x: torch.Tensor, draws: PhotometricDraws, kernel_size: int) -> torch.Tensor:
    """The whole SimCLR photometric pipeline: colour jitter, then grayscale, then blur.

    Args:
        x: ``float32 [N, 3, S, S]`` in [0, 1].
        draws: Draws for the ``N`` images.
        kernel_size: Blur kernel side (see :func:`blur_kernel_size`).

    Returns:
        ``float32 [N, 3, S, S]`` in [0, 1].
    """
    x = color_jitter(x, draws)
    x = torch.where(_per_image(draws.grayscale), to_grayscale(x), x)
    index = draws.blur.nonzero().squeeze(1)
    if index.numel() > 0 and kernel_size > 1:
        blurred = gaussian_blur(x.index_select(0, index), draws.sigma.index_select(0, index), kernel_size)
        x = x.index_copy(0, index, blurred.clamp_(0.0, 1.0))
    return x


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of ``[..., 3, H, W]``."""
    shape = (3, 1, 1)
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(shape)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(shape)
    return (x - mean_t) / std_t


__all__ = [
    "BRIGHTNESS",
    "CONTRAST",
    "HUE",
    "LUMA",
    "SATURATION",
    "PhotometricDraws",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "blur_kernel_size",
    "color_distort",
    "color_jitter",
    "gaussian_blur",
    "gaussian_kernels",
    "normalize",
    "sample_draws",
    "to_grayscale",
]
