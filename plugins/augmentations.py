"""Built-in augmentations: SimCLR pretraining views, fine-tuning crops and evaluation center crops.

Each augmentation is split in two (:class:`contrastive.interfaces.Augmentation`):

- ``per_sample`` runs in data-loader workers on one ``uint8 [3, H, W]`` image and does the
  geometric part (crop, resize, flip), returning ``uint8 [V, 3, S, S]``;
- ``on_device`` runs on a whole ``uint8 [B, V, 3, S, S]`` batch on the training device and does
  the photometric part (colour jitter, grayscale, blur; see :mod:`contrastive_plugins._color`),
  returning ``float32`` in [0, 1], optionally normalized by a per-channel mean and std.

Defaults are SimCLRv2's (``google-research/simclr``, ``tf2/data_util.py``). Random resized crops
have two samplers (option ``crop_sampler``). The default, ``"official"`` (:func:`official_crop_box`),
is the reference's: TensorFlow's ``sample_distorted_bounding_box`` with the whole image as the
object, which draws an aspect ratio (width / height) uniformly, then a height uniformly among the
whole pixel counts the area range allows for that ratio, rejects crops covering under 10% of the
image, tries up to 100 times and falls back to the whole image. The aspect range is the
reference's (3/4, 4/3): it scales that range by the output's aspect ratio, 1 for square views,
not by the image's. ``"torchvision"`` (:func:`random_crop_box`) draws an area fraction uniformly
and an aspect ratio log-uniformly, tries up to 10 times, then falls back to a center crop with the
aspect ratio clamped into range; it favours larger crops (mean area about 0.43 of a 375x500 image,
against 0.39) and keeps crops down to ``crop_min_area``. Resizing is antialiased. An optional
small random rotation (``rotation_degrees``; off by default, not part of SimCLR) follows the crop:
it suits handwriting such as the digits demo, whose slant varies within a class, not natural
images, where the SimCLR paper found rotation harmful.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, Self

import attrs
import torch
import torch.nn.functional as F

from contrastive import Component, hookimpl, option
from contrastive.errors import DataError
from contrastive.interfaces import Augmentation
from contrastive_plugins._color import blur_kernel_size, distort_in_chunks, normalize, sample_draws

Interpolation = Literal["bicubic", "bilinear"]

#: Views distorted together by ``simclr.on_device`` on the CPU (one at a time stays in cache; measured
#: faster than 2 or 4 with benchmarks/augment.py). Other devices distort the whole batch at once.
CPU_CHUNK_SIZE = 1

#: Tries of the ``"torchvision"`` crop sampler before it falls back to a center crop.
CROP_ATTEMPTS = 10

#: The random crop samplers (option ``crop_sampler``): :func:`official_crop_box`, :func:`random_crop_box`.
CropSampler = Literal["official", "torchvision"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_pair(name: str, pair: tuple[float, ...]) -> None:
    if len(pair) != 2 or pair[0] > pair[1]:
        raise ValueError(f"{name} must be two numbers [low, high] with low <= high, got {list(pair)}")


def _check_normalization(mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need one value per RGB channel, got {list(mean)} and {list(std)}")


@attrs.frozen
class NormalizeOptions:
    """Options every augmentation shares: optional mean/std normalization after the [0, 1] scaling."""

    normalize: bool = option(False, "Normalize views with mean and std after the [0, 1] scaling.")
    mean: tuple[float, ...] = option(_IMAGENET_MEAN, "Per-channel mean subtracted when normalizing.")
    std: tuple[float, ...] = option(
        _IMAGENET_STD, "Per-channel std divided by when normalizing.", min=0.0, min_exclusive=True
    )

    def __attrs_post_init__(self) -> None:
        _check_normalization(self.mean, self.std)


@attrs.frozen
class CropFlipOptions(NormalizeOptions):
    """Options of the ``crop_flip`` augmentation (one view for fine-tuning and distillation)."""

    size: int = option(224, "Side of the square view in pixels.", min=1)
    crop_sampler: Literal["official", "torchvision"] = option(
        "official",
        "Random crop sampler: 'official' is SimCLR's (TensorFlow's sample_distorted_bounding_box: "
        "aspect uniform, height uniform in whole pixels, crop_attempts tries, else the whole image); "
        "'torchvision' draws area uniformly and aspect log-uniformly, 10 tries, else a center crop.",
    )
    crop_min_area: float = option(
        0.08,
        "Smallest crop area as a fraction of the image (official: also at least crop_min_object_covered).",
        min=0.0,
        max=1.0,
    )
    crop_max_area: float = option(1.0, "Largest crop area as a fraction of the image.", min=0.0, max=1.0)
    aspect_ratio_range: tuple[float, ...] = option(
        (3 / 4, 4 / 3),
        "Range [low, high] of crop aspect ratios (width / height); the reference's range for its "
        "square views, not scaled by the image's own aspect ratio.",
        min=0.0,
        min_exclusive=True,
    )
    crop_min_object_covered: float = option(
        0.1,
        "Official sampler only: crops covering less than this fraction of the image are rejected "
        "(TensorFlow's min_object_covered, the whole image being the object).",
        min=0.0,
        max=1.0,
    )
    crop_attempts: int = option(
        100,
        "Official sampler only: tries before falling back to the whole image (torchvision: always 10).",
        min=1,
    )
    interpolation: Literal["bicubic", "bilinear"] = option("bicubic", "Resampling used to resize crops.")
    flip_probability: float = option(0.5, "Probability of a horizontal flip.", min=0.0, max=1.0)
    rotation_degrees: float = option(
        0.0,
        "Largest rotation: each view turns by an angle drawn uniformly from [-r, r] degrees, "
        "uncovered corners black (0: none, as in SimCLR).",
        min=0.0,
        max=180.0,
    )

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        _check_pair("crop_min_area..crop_max_area", (self.crop_min_area, self.crop_max_area))
        _check_pair("aspect_ratio_range", self.aspect_ratio_range)
        if self.crop_min_area <= 0.0:
            raise ValueError("crop_min_area must be > 0")

    def at_size(self, size: int) -> Self:
        """These options making views of ``size`` pixels a side (the ``at_size`` capability)."""
        return attrs.evolve(self, size=size)


@attrs.frozen
class SimCLROptions(CropFlipOptions):
    """Options of the ``simclr`` augmentation (two views for contrastive pretraining): the crop and
    flip of ``crop_flip`` plus colour distortion and blur."""

    color_jitter_probability: float = option(0.8, "Probability of colour jitter.", min=0.0, max=1.0)
    color_strength: float = option(
        1.0, "Colour jitter strength s: brightness/contrast/saturation 0.8s, hue 0.2s.", min=0.0
    )
    grayscale_probability: float = option(
        0.2, "Probability of grayscale, drawn independently of the jitter.", min=0.0, max=1.0
    )
    blur_probability: float = option(0.5, "Probability of Gaussian blur, for each view.", min=0.0, max=1.0)
    blur_sigma_range: tuple[float, ...] = option(
        (0.1, 2.0),
        "Range [low, high] of the blur sigma in pixels (drawn uniformly).",
        min=0.0,
        min_exclusive=True,
    )

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        _check_pair("blur_sigma_range", self.blur_sigma_range)


@attrs.frozen
class CenterCropOptions(NormalizeOptions):
    """Options of the ``center_crop`` augmentation (one deterministic view for evaluation)."""

    size: int = option(224, "Side of the square view in pixels.", min=1)
    crop_fraction: float = option(
        0.875,
        "Side of the center crop as a fraction of the shorter image side.",
        min=0.0,
        max=1.0,
        min_exclusive=True,
    )
    interpolation: Literal["bicubic", "bilinear"] = option("bicubic", "Resampling used to resize the crop.")

    def at_size(self, size: int) -> Self:
        """These options making views of ``size`` pixels a side (the ``at_size`` capability)."""
        return attrs.evolve(self, size=size)

    def preprocessing(self) -> dict[str, object]:
        """What the view does, for an exported model's metadata (``AugmentationCapabilities``)."""
        return {
            "crop": "centered square of side round(crop_fraction * shorter side), offsets rounded up",
            "crop_fraction": self.crop_fraction,
            "resize": f"{self.interpolation}, antialiased, to size x size, rounded to uint8",
            "size": self.size,
            "scale": "uint8 / 255 to float32 in [0, 1]",
            "mean": list(self.mean) if self.normalize else None,
            "std": list(self.std) if self.normalize else None,
        }


class CropBox(NamedTuple):
    """A crop of an image, in pixels."""

    top: int
    left: int
    height: int
    width: int


def center_crop_box(height: int, width: int, fraction: float) -> CropBox:
    """The centered square of side ``round(fraction * min(height, width))`` (at least 1 px).

    Offsets round up when the margin is odd, as the reference's ``center_crop`` does.
    """
    side = max(1, min(height, width, round(fraction * min(height, width))))
    return CropBox(top=(height - side + 1) // 2, left=(width - side + 1) // 2, height=side, width=side)


def _fallback_box(height: int, width: int, ratio_range: tuple[float, ...]) -> CropBox:
    """The largest centered crop whose aspect ratio is clamped into ``ratio_range``."""
    low, high = ratio_range
    aspect = width / height
    crop_h, crop_w = height, width
    if aspect < low:
        crop_h = max(1, min(height, round(width / low)))
    elif aspect > high:
        crop_w = max(1, min(width, round(height * high)))
    return CropBox(top=(height - crop_h) // 2, left=(width - crop_w) // 2, height=crop_h, width=crop_w)


def random_crop_box(
    height: int,
    width: int,
    *,
    area_range: tuple[float, float],
    ratio_range: tuple[float, ...],
    generator: torch.Generator | None = None,
) -> CropBox:
    """Sample a random resized crop of an image of ``height x width`` pixels.

    Draws an area fraction uniformly from ``area_range`` and an aspect ratio (width / height)
    log-uniformly from ``ratio_range``; keeps the first of :data:`CROP_ATTEMPTS` tries that fits in
    the image, else falls back to :func:`_fallback_box`. Every try consumes four uniform draws.

    Args:
        height: Image height.
        width: Image width.
        area_range: ``(low, high)`` crop area as a fraction of ``height * width``.
        ratio_range: ``(low, high)`` aspect ratio.
        generator: Source of randomness; None uses the global RNG.

    Returns:
        The crop box.
    """
    log_low, log_high = math.log(ratio_range[0]), math.log(ratio_range[1])
    for _ in range(CROP_ATTEMPTS):
        u_area, u_ratio, u_top, u_left = torch.rand(4, generator=generator).tolist()
        area = height * width * (area_range[0] + (area_range[1] - area_range[0]) * u_area)
        ratio = math.exp(log_low + (log_high - log_low) * u_ratio)
        crop_w = round(math.sqrt(area * ratio))
        crop_h = round(math.sqrt(area / ratio))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = min(int(u_top * (height - crop_h + 1)), height - crop_h)
            left = min(int(u_left * (width - crop_w + 1)), width - crop_w)
            return CropBox(top=top, left=left, height=crop_h, width=crop_w)
    return _fallback_box(height, width, ratio_range)


def official_crop_box(
    height: int,
    width: int,
    *,
    area_range: tuple[float, float],
    ratio_range: tuple[float, ...],
    min_covered: float = 0.1,
    attempts: int = 100,
    generator: torch.Generator | None = None,
) -> CropBox:
    """Sample a random crop of a ``height x width`` image as SimCLR's reference does.

    The reference crops with TensorFlow's ``sample_distorted_bounding_box`` (the whole image as the
    only bounding box); this follows that op's algorithm, in double precision and drawing from
    ``generator``. Each try draws an aspect ratio ``r`` (width / height) uniformly from
    ``ratio_range``, then a height uniformly among the whole numbers from ``round(sqrt(min_area / r))``
    to ``round(sqrt(max_area / r))`` (lowered so that ``round(height * r)`` fits the width, and to the
    image height), takes ``width = round(height * r)``, moves the height one pixel up (or down) when
    rounding left the area below (above) the area range, and rejects the crop if it still falls
    outside the area range or the image, or covers less than ``min_covered`` of the image. The
    offsets are then uniform over ``[0, H - height)`` and ``[0, W - width)`` (0 when the crop spans
    the side): like TensorFlow, a crop shorter than the image never touches its bottom (right) edge.
    After ``attempts`` failed tries the crop is the whole image. Rounding is half to even, as C's
    ``lrintf``. Every try consumes four uniform draws.

    Args:
        height: Image height.
        width: Image width.
        area_range: ``(low, high)`` crop area as a fraction of ``height * width``.
        ratio_range: ``(low, high)`` aspect ratio.
        min_covered: Smallest fraction of the image the crop must cover.
        attempts: Tries before falling back to the whole image.
        generator: Source of randomness; None uses the global RNG.

    Returns:
        The crop box.
    """
    image_area = height * width
    min_area = area_range[0] * image_area
    max_area = area_range[1] * image_area
    low_ratio, high_ratio = ratio_range[0], ratio_range[1]
    for _ in range(attempts):
        u_ratio, u_height, u_top, u_left = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        ratio = low_ratio + (high_ratio - low_ratio) * u_ratio
        crop_h = _official_crop_height(height, width, min_area, max_area, ratio, u_height)
        crop_w = round(crop_h * ratio)
        area = crop_h * crop_w
        if area < min_area:
            crop_h += 1
            crop_w = round(crop_h * ratio)
            area = crop_h * crop_w
        if area > max_area:
            crop_h -= 1
            crop_w = round(crop_h * ratio)
            area = crop_h * crop_w
        if not (min_area <= area <= max_area and 0 < crop_h <= height and 0 < crop_w <= width):
            continue
        if area / image_area < min_covered:
            continue
        top = min(int(u_top * (height - crop_h)), height - crop_h - 1) if crop_h < height else 0
        left = min(int(u_left * (width - crop_w)), width - crop_w - 1) if crop_w < width else 0
        return CropBox(top=top, left=left, height=crop_h, width=crop_w)
    return CropBox(top=0, left=0, height=height, width=width)


def _official_crop_height(
    height: int, width: int, min_area: float, max_area: float, ratio: float, u_height: float
) -> int:
    """The height of one try of :func:`official_crop_box`, before the rounding fix-ups."""
    low = round(math.sqrt(min_area / ratio))
    high = round(math.sqrt(max_area / ratio))
    if round(high * ratio) > width:
        # The tallest crop whose rounded width fits: floor((width + 0.5) / ratio), a hair below.
        high = int((width + 0.5 - 1e-7) / ratio)
        if round(high * ratio) > width:
            high -= 1
    high = min(high, height)
    low = min(low, high)
    return low + min(int(u_height * (high - low + 1)), high - low)


def crop_and_resize(
    image: torch.Tensor, box: CropBox, size: int, interpolation: Interpolation
) -> torch.Tensor:
    """Cut ``box`` out of ``image`` ``uint8 [3, H, W]`` and resize it to ``uint8 [3, size, size]``.

    Resizing is antialiased (it matters when shrinking); uint8 in, uint8 out (rounded, saturated).
    """
    crop = image[:, box.top : box.top + box.height, box.left : box.left + box.width]
    if box.height == size and box.width == size:
        return crop.contiguous()
    resized = F.interpolate(
        crop.unsqueeze(0), size=(size, size), mode=interpolation, antialias=True, align_corners=False
    )
    return resized.squeeze(0)


def check_image(image: torch.Tensor) -> torch.Tensor:
    """Validate a decoded image: ``uint8 [3, H, W]`` (``[1, H, W]`` is repeated to three channels).

    Raises:
        DataError: Wrong dtype, rank, channel count or an empty image.
    """
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3):
        raise DataError(f"augmentations expect uint8 [3, H, W] images, got {image.dtype} {list(image.shape)}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise DataError(f"empty image of shape {list(image.shape)}")
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def _check_views(views: torch.Tensor, num_views: int, size: int) -> None:
    expected = (num_views, 3, size, size)
    if views.dtype != torch.uint8 or views.dim() != 5 or tuple(views.shape[1:]) != expected:
        raise ValueError(
            f"on_device expects uint8 [B, {', '.join(map(str, expected))}], got "
            f"{views.dtype} {list(views.shape)}"
        )


def _rotate(view: torch.Tensor, max_degrees: float, generator: torch.Generator | None) -> torch.Tensor:
    """Turn ``uint8 [3, S, S]`` about its centre by an angle drawn uniformly from ``[-max, max]`` degrees.

    Bilinear, same size, corners the turned image leaves uncovered black. Draws nothing when
    ``max_degrees`` is 0, so the views of a spec without rotation keep their random stream.
    """
    if max_degrees == 0.0:
        return view
    import torchvision.transforms.v2.functional as TF  # here, not at the top: importing it takes seconds

    angle = (2.0 * torch.rand(1, generator=generator).item() - 1.0) * max_degrees
    turned: torch.Tensor = TF.rotate(view, angle, interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
    return turned


def _flip_maybe(view: torch.Tensor, probability: float, generator: torch.Generator | None) -> torch.Tensor:
    if torch.rand(1, generator=generator).item() < probability:
        return view.flip(-1)
    return view


def _to_float(
    views: torch.Tensor, enabled: bool, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """uint8 to float32 in [0, 1], then ``(x - mean) / std`` when ``enabled``."""
    x = views.to(torch.float32).div_(255.0)
    return normalize(x, mean, std) if enabled else x


class RandomCropFlip:
    """Random resized crop, optional rotation and horizontal flip: the geometric part shared by
    ``simclr`` and ``crop_flip``."""

    def __init__(self, options: SimCLROptions | CropFlipOptions) -> None:
        self.size = options.size
        self.sampler: CropSampler = options.crop_sampler
        self.area_range = (options.crop_min_area, options.crop_max_area)
        self.ratio_range = options.aspect_ratio_range
        self.min_covered = options.crop_min_object_covered
        self.attempts = options.crop_attempts
        self.interpolation: Interpolation = options.interpolation
        self.flip_probability = options.flip_probability
        self.rotation_degrees = options.rotation_degrees

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One view ``uint8 [3, S, S]`` of a checked ``uint8 [3, H, W]`` image."""
        view = crop_and_resize(
            image, self.box(image.shape[1], image.shape[2], generator), self.size, self.interpolation
        )
        view = _rotate(view, self.rotation_degrees, generator)
        return _flip_maybe(view, self.flip_probability, generator)

    def box(self, height: int, width: int, generator: torch.Generator | None) -> CropBox:
        """A random crop of a ``height x width`` image, drawn by the configured sampler."""
        if self.sampler == "official":
            return official_crop_box(
                height,
                width,
                area_range=self.area_range,
                ratio_range=self.ratio_range,
                min_covered=self.min_covered,
                attempts=self.attempts,
                generator=generator,
            )
        return random_crop_box(
            height, width, area_range=self.area_range, ratio_range=self.ratio_range, generator=generator
        )


class SimCLRAugmentation:
    """SimCLR's two views: random crop + flip per sample, colour distortion and blur on device.

    As in the reference, colour jitter (p=0.8, the four ops in a random order per view, clamped
    after each) is followed by grayscale (p=0.2, independent of the jitter), and both views are
    blurred independently with p=0.5 (the reference's ``batch_random_blur`` for ImageNet
    pretraining); crops follow the reference's ``tf.image.sample_distorted_bounding_box`` unless
    ``crop_sampler`` is ``"torchvision"`` (see this module's docstring). Differences from the
    reference: resizing is antialiased and rounded to uint8 before the colour ops, the blur pads
    by reflection and draws its sigma per view.

    Attributes:
        num_views: 2.
        size: View side in pixels.
        kernel_size: Blur kernel side, :func:`contrastive_plugins._color.blur_kernel_size`.
    """

    def __init__(self, options: SimCLROptions) -> None:
        self.options = options
        self.num_views = 2
        self.size = options.size
        self.kernel_size = blur_kernel_size(options.size)
        self._crop = RandomCropFlip(options)

    def per_sample(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Two independent crops of ``uint8 [3, H, W]``: ``uint8 [2, 3, S, S]``."""
        image = check_image(image)
        return torch.stack([self._crop(image, generator) for _ in range(self.num_views)])

    def on_device(self, views: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Colour jitter, grayscale and blur of ``uint8 [B, 2, 3, S, S]``: ``float32`` same shape."""
        _check_views(views, self.num_views, self.size)
        opts = self.options
        flat = views.reshape(-1, 3, self.size, self.size)
        draws = sample_draws(
            flat.shape[0],
            strength=opts.color_strength,
            jitter_probability=opts.color_jitter_probability,
            grayscale_probability=opts.grayscale_probability,
            blur_probability=opts.blur_probability,
            sigma_range=(opts.blur_sigma_range[0], opts.blur_sigma_range[1]),
            device=views.device,
            generator=generator,
        )
        chunk_size = CPU_CHUNK_SIZE if views.device.type == "cpu" else flat.shape[0]
        out: torch.Tensor = distort_in_chunks(flat, draws, self.kernel_size, chunk_size).view(views.shape)
        return normalize(out, opts.mean, opts.std) if opts.normalize else out


class CropFlipAugmentation:
    """One random crop + flip view; on device only scales to [0, 1] (and normalizes if asked)."""

    def __init__(self, options: CropFlipOptions) -> None:
        self.options = options
        self.num_views = 1
        self.size = options.size
        self._crop = RandomCropFlip(options)

    def per_sample(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One crop of ``uint8 [3, H, W]``: ``uint8 [1, 3, S, S]``."""
        return self._crop(check_image(image), generator).unsqueeze(0)

    def on_device(self, views: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``uint8 [B, 1, 3, S, S]`` to ``float32`` (no randomness; ``generator`` is unused)."""
        _check_views(views, self.num_views, self.size)
        return _to_float(views, self.options.normalize, self.options.mean, self.options.std)


class CenterCropAugmentation:
    """The evaluation view: center crop of ``crop_fraction`` of the shorter side, resized; no randomness."""

    def __init__(self, options: CenterCropOptions) -> None:
        self.options = options
        self.num_views = 1
        self.size = options.size

    def per_sample(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The center crop of ``uint8 [3, H, W]``: ``uint8 [1, 3, S, S]`` (``generator`` is unused)."""
        image = check_image(image)
        box = center_crop_box(image.shape[1], image.shape[2], self.options.crop_fraction)
        return crop_and_resize(image, box, self.size, self.options.interpolation).unsqueeze(0)

    def on_device(self, views: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``uint8 [B, 1, 3, S, S]`` to ``float32`` (no randomness; ``generator`` is unused)."""
        _check_views(views, self.num_views, self.size)
        return _to_float(views, self.options.normalize, self.options.mean, self.options.std)


def build_simclr(options: SimCLROptions) -> Augmentation:
    """Builder of ``simclr``."""
    return SimCLRAugmentation(options)


def build_crop_flip(options: CropFlipOptions) -> Augmentation:
    """Builder of ``crop_flip``."""
    return CropFlipAugmentation(options)


def build_center_crop(options: CenterCropOptions) -> Augmentation:
    """Builder of ``center_crop``."""
    return CenterCropAugmentation(options)


@hookimpl
def contrastive_register_augmentations() -> list[Component]:
    """The built-in augmentations: ``simclr``, ``crop_flip`` and ``center_crop``."""
    return [
        Component(
            name="simclr",
            build=build_simclr,
            options=SimCLROptions,
            summary="SimCLR pretraining: two views with crop, flip, colour jitter, grayscale and blur.",
        ),
        Component(
            name="crop_flip",
            build=build_crop_flip,
            options=CropFlipOptions,
            summary="One random resized crop with horizontal flip, for fine-tuning and distillation.",
        ),
        Component(
            name="center_crop",
            build=build_center_crop,
            options=CenterCropOptions,
            summary="One deterministic center crop (0.875 of the shorter side) for evaluation.",
        ),
    ]
