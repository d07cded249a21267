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

Two deliberate differences: the blur pads by reflection (the reference pads with zeros, which
darkens the borders), and each image draws its own blur sigma (the reference's batched blur draws
one sigma per batch of views, with a per-image on/off choice).

Per round of the jitter, images are grouped by the op they apply (read once from the draws on the
host: one device sync per batch) and each op runs on its group only, so every image costs four ops.
On the CPU, callers should distort a view or two at a time (:func:`distort_in_chunks`) so that the
temporaries stay in cache; masks are float tensors and the blur is a sum of shifted copies there,
both much faster than bool tensors and grouped convolutions on one CPU thread.
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


def _extremes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Planes ``r, g, b`` ``[N, S, S]`` of ``x`` ``[N, 3, S, S]`` and their max and min."""
    r, g, b = x.unbind(dim=-3)
    return r, g, b, torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply each image ``[N, 3, S, S]`` by its ``factor`` ``[N]``."""
    return x * _per_image(factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``(x - mean) * factor + mean`` with each channel's spatial mean, ``factor`` ``[N]`` (tf.image)."""
    weight = _per_image(factor)
    bias = x.mean(dim=(-2, -1), keepdim=True) * (1.0 - weight)
    return torch.addcmul(bias, x, weight)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply HSV saturation by ``factor`` ``[N]`` and clip it to [0, 1], keeping hue and value.

    With value ``V = max(r, g, b)``, chroma ``C = V - min(r, g, b)`` and saturation ``C / V``, the
    HSV round trip reduces to ``c' = V - (V - c) * k`` with ``k = min(factor, V / C)``.
    """
    r, g, b, value, low = _extremes(x)
    k = torch.div(value, (value - low).clamp_min_(1e-12)).clamp_max_(factor.view(-1, 1, 1))
    out = torch.empty_like(x)
    for channel, plane in enumerate((r, g, b)):
        torch.addcmul(value, plane - value, k, out=out[:, channel])
    return out


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate HSV hue by ``shift`` ``[N]`` (fractions of the circle), keeping saturation and value.

    Hue ``h`` is measured in sixths of the circle (red 0, green 2, blue 4). Channel ``c`` of the
    result is ``V - C * clamp(d - 1, 0, 1)`` where ``d`` is the circular distance from the shifted
    hue to that channel's own hue. Masks are float tensors (bool tensors are slow on the CPU).
    """
    r, g, b, value, low = _extremes(x)
    chroma = value - low
    # Hue times chroma, from whichever channel holds the maximum (red, then green, wins ties).
    from_blue = torch.add(r - g, chroma, alpha=4.0)
    from_green = torch.add(b - r, chroma, alpha=2.0)
    hue = torch.lerp(from_blue, from_green, torch.eq(value, g, out=torch.empty_like(value)))
    hue = torch.lerp(hue, g - b, torch.eq(value, r, out=torch.empty_like(value)))
    hue = hue.div_(chroma.clamp_min(1e-12)).add_(6.0 * shift.view(-1, 1, 1))
    hue = hue.sub_(torch.floor(hue * (1.0 / 6.0)).mul_(6.0))  # wrap into [0, 6]
    out = torch.empty_like(x)
    for channel, centre in enumerate((0.0, 2.0, 4.0)):
        distance = (hue - centre).abs_()
        weight = torch.minimum(distance - 1.0, 5.0 - distance).clamp_(0.0, 1.0)
        torch.addcmul(value, chroma, weight, value=-1.0, out=out[:, channel])
    return out


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of ``[N, 3, S, S]`` repeated over three channels."""
    r, g, b = x.unbind(dim=-3)
    luma = (r * LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2])
    return luma.unsqueeze(-3).expand_as(x).contiguous()


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Normalized 1-D Gaussian kernels ``[N, kernel_size]`` for per-image ``sigma`` ``[N]``."""
    radius = kernel_size // 2
    offsets = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    weights = torch.exp(-(offsets**2) / (2.0 * sigma.view(-1, 1) ** 2))
    return weights / weights.sum(dim=1, keepdim=True)


def _blur_by_shifts(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Separable blur as a sum of shifted copies (fast on the CPU for a few images)."""
    n, _, height, width = x.shape
    size = kernels.shape[1]
    radius = size // 2
    weights = kernels.view(n, 1, 1, 1, size)
    padded = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    rows = padded[..., 0:width] * weights[..., 0]
    for tap in range(1, size):
        rows.addcmul_(padded[..., tap : tap + width], weights[..., tap])
    padded = F.pad(rows, (0, 0, radius, radius), mode="reflect")
    out = padded[..., 0:height, :] * weights[..., 0]
    for tap in range(1, size):
        out.addcmul_(padded[..., tap : tap + height, :], weights[..., tap])
    return out


def _blur_by_conv(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Separable blur as two depthwise (grouped) convolutions over the ``N * C`` planes."""
    n, c, height, width = x.shape
    size = kernels.shape[1]
    radius = size // 2
    per_plane = kernels.repeat_interleave(c, dim=0)  # [N*C, K]
    planes = F.pad(x.reshape(1, n * c, height, width), (radius, radius, 0, 0), mode="reflect")
    planes = F.conv2d(planes, per_plane.view(n * c, 1, 1, size), groups=n * c)
    planes = F.pad(planes, (0, 0, radius, radius), mode="reflect")
    planes = F.conv2d(planes, per_plane.view(n * c, 1, size, 1), groups=n * c)
    return planes.view(n, c, height, width)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur each image ``[N, C, H, W]`` with its own ``sigma`` ``[N]`` (separable, reflect padding).

    Uses shifted sums on the CPU (grouped convolutions are slow there for few planes) and grouped
    convolutions elsewhere; both compute the same sums.
    """
    if kernel_size <= 1 or x.shape[0] == 0:
        return x
    kernels = gaussian_kernels(sigma.to(x.dtype), kernel_size)
    if x.device.type == "cpu":
        return _blur_by_shifts(x, kernels)
    return _blur_by_conv(x, kernels)


def _update(
    x: torch.Tensor,
    index: list[int],
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    params: torch.Tensor,
) -> torch.Tensor:
    """Replace images ``index`` of ``x`` by ``clamp(op(image, param), 0, 1)``, in place if partial."""
    if not index:
        return x
    if len(index) == x.shape[0]:
        return op(x, params).clamp_(0.0, 1.0)
    rows = torch.tensor(index, device=x.device)
    x.index_copy_(0, rows, op(x.index_select(0, rows), params.index_select(0, rows)).clamp_(0.0, 1.0))
    return x


#: ``(op index, op, name of its draws field)`` for the four jitter ops.
_JITTER_OPS: tuple[tuple[int, Callable[[torch.Tensor, torch.Tensor], torch.Tensor], str], ...] = (
    (BRIGHTNESS, adjust_brightness, "brightness"),
    (CONTRAST, adjust_contrast, "contrast"),
    (SATURATION, adjust_saturation, "saturation"),
    (HUE, adjust_hue, "hue"),
)


def _jitter_(x: torch.Tensor, draws: PhotometricDraws) -> torch.Tensor:
    """:func:`color_jitter` that may overwrite ``x``."""
    jitter = draws.jitter.tolist()  # one host sync for the whole batch
    order = draws.order.tolist()
    for round_ in range(4):
        for op_index, op, field in _JITTER_OPS:
            index = [
                i
                for i, (on, ops) in enumerate(zip(jitter, order, strict=True))
                if on and ops[round_] == op_index
            ]
            x = _update(x, index, op, getattr(draws, field))
    return x


def _distort_(x: torch.Tensor, draws: PhotometricDraws, kernel_size: int) -> torch.Tensor:
    """:func:`color_distort` that may overwrite ``x``."""
    x = _jitter_(x, draws)
    gray = [i for i, on in enumerate(draws.grayscale.tolist()) if on]
    x = _update(x, gray, lambda images, _: to_grayscale(images), draws.grayscale)
    if kernel_size > 1:
        blur = [i for i, on in enumerate(draws.blur.tolist()) if on]
        x = _update(x, blur, lambda images, sigma: gaussian_blur(images, sigma, kernel_size), draws.sigma)
    return x


def color_jitter(x: torch.Tensor, draws: PhotometricDraws) -> torch.Tensor:
    """Apply brightness, contrast, saturation and hue in each image's own random order.

    Round ``r`` applies, to every image with ``draws.jitter``, the op ``draws.order[:, r]``; each
    image is clamped to [0, 1] after each of its ops, as in the reference.

    Args:
        x: ``float32 [N, 3, S, S]`` in [0, 1] (not modified).
        draws: Draws for the ``N`` images.

    Returns:
        ``float32 [N, 3, S, S]`` in [0, 1].
    """
    return _jitter_(x.clone(), draws)


def color_distort(x: torch.Tensor, draws: PhotometricDraws, kernel_size: int) -> torch.Tensor:
    """The whole SimCLR photometric pipeline: colour jitter, then grayscale, then blur.

    Args:
        x: ``float32 [N, 3, S, S]`` in [0, 1] (not modified).
        draws: Draws for the ``N`` images.
        kernel_size: Blur kernel side (see :func:`blur_kernel_size`).

    Returns:
        ``float32 [N, 3, S, S]`` in [0, 1].
    """
    return _distort_(x.clone(), draws, kernel_size)


def slice_draws(draws: PhotometricDraws, start: int, stop: int) -> PhotometricDraws:
    """The draws of images ``start:stop``."""
    return PhotometricDraws(*(field[start:stop] for field in draws))


def distort_in_chunks(
    views: torch.Tensor, draws: PhotometricDraws, kernel_size: int, chunk_size: int
) -> torch.Tensor:
    """uint8 ``[N, 3, S, S]`` to distorted float32 ``[N, 3, S, S]``, ``chunk_size`` images at a time.

    Small chunks keep the CPU working in cache; on an accelerator one chunk of everything is best.
    """
    n = views.shape[0]
    if n <= chunk_size:
        return _distort_(views.to(torch.float32).div_(255.0), draws, kernel_size)
    out = torch.empty(views.shape, dtype=torch.float32, device=views.device)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        chunk = views[start:stop].to(torch.float32).div_(255.0)
        out[start:stop] = _distort_(chunk, slice_draws(draws, start, stop), kernel_size)
    return out


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of ``[..., 3, H, W]``."""
    shape = (3, 1, 1)
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(shape)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(shape)
    return (x - mean_t) / std_t
