"""Tests of the built-in augmentations (simclr, crop_flip, center_crop) and their batched colour ops."""

from __future__ import annotations

import colorsys
import math
import pickle
import statistics
from typing import Any

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from contrastive.errors import DataError, SpecError
from contrastive.interfaces import Augmentation
from contrastive.registry import load_registry
from contrastive_plugins import _color
from contrastive_plugins.augmentations import center_crop_box, random_crop_box

NAMES = ("simclr", "crop_flip", "center_crop")
IMAGENET_MEAN = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
IMAGENET_STD = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)


def build(name: str, **options: Any) -> Any:
    return load_registry().build("augmentations", name, **options)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """uint8 [3, H, W]: per-channel gradients plus noise, so that crops and colours differ."""
    gen = seeded(seed)
    ys = torch.linspace(0, 1, height).view(1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, width)
    phase = torch.rand(3, 1, 1, generator=gen)
    base = 0.5 + 0.4 * torch.sin(6.0 * xs + 4.0 * ys + 6.0 * phase)
    noise = 0.1 * torch.rand(3, height, width, generator=gen)
    return (255 * (base + noise).clamp(0, 1)).to(torch.uint8)


def batch_views(aug: Any, count: int, height: int, width: int) -> torch.Tensor:
    """uint8 [B, V, 3, S, S] from ``count`` different images."""
    return torch.stack([aug.per_sample(smooth_image(height, width, i), seeded(i)) for i in range(count)])


def simclr_draws(n: int, seed: int, **changes: float) -> _color.PhotometricDraws:
    """``_color.sample_draws`` for ``n`` views with SimCLR's defaults on the CPU, seeded; ``changes``
    replace probabilities."""
    probabilities = {"jitter_probability": 0.8, "grayscale_probability": 0.2, "blur_probability": 0.5}
    probabilities.update(changes)
    return _color.sample_draws(
        n,
        strength=1.0,
        sigma_range=(0.1, 2.0),
        device=torch.device("cpu"),
        generator=seeded(seed),
        **probabilities,
    )


# ---------------------------------------------------------------- building and shapes


@pytest.mark.parametrize("name", NAMES)
def test_built_through_the_registry_satisfies_the_interface(name: str) -> None:
    aug = build(name, size=32)
    assert isinstance(aug, Augmentation)
    assert aug.size == 32
    assert aug.num_views == (2 if name == "simclr" else 1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("height", "width"), [(40, 56), (8, 8), (60, 13)])
def test_shapes_dtypes_and_range(name: str, height: int, width: int) -> None:
    aug = build(name, size=32)
    views = batch_views(aug, 3, height, width)
    assert views.shape == (3, aug.num_views, 3, 32, 32)
    assert views.dtype == torch.uint8
    out = aug.on_device(views, seeded(0))
    assert out.shape == views.shape
    assert out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.std() > 0.01  # not a constant image


@pytest.mark.parametrize("name", NAMES)
def test_normalize_applies_mean_and_std_after_scaling(name: str) -> None:
    views = batch_views(build(name, size=24), 2, 30, 30)
    plain = build(name, size=24).on_device(views, seeded(3))
    normalized = build(name, size=24, normalize=True).on_device(views, seeded(3))
    torch.testing.assert_close(normalized, (plain - IMAGENET_MEAN) / IMAGENET_STD)


def test_grayscale_input_channel_is_repeated() -> None:
    gray = smooth_image(20, 20)[:1]
    view = build("center_crop", size=16).per_sample(gray)
    assert view.shape == (1, 3, 16, 16)
    assert torch.equal(view[0, 0], view[0, 1]) and torch.equal(view[0, 1], view[0, 2])


@pytest.mark.parametrize(
    "image",
    [torch.zeros(3, 8, 8), torch.zeros(4, 8, 8, dtype=torch.uint8), torch.zeros(3, 0, 8, dtype=torch.uint8)],
)
def test_bad_images_raise_data_error(image: torch.Tensor) -> None:
    with pytest.raises(DataError):
        build("simclr", size=16).per_sample(image)


def test_on_device_rejects_wrong_view_shape() -> None:
    with pytest.raises(ValueError, match="on_device expects"):
        build("simclr", size=16).on_device(torch.zeros(2, 1, 3, 16, 16, dtype=torch.uint8))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("simclr", {"aspect_ratio_range": [0.5, 1.0, 2.0]}),
        ("simclr", {"aspect_ratio_range": [2.0, 0.5]}),
        ("crop_flip", {"crop_min_area": 0.9, "crop_max_area": 0.5}),
        ("simclr", {"blur_sigma_range": [2.0, 0.1]}),
        ("center_crop", {"mean": [0.5, 0.5]}),
        ("simclr", {"interpolation": "nearest"}),
        ("crop_flip", {"rotation_degrees": -5.0}),
        ("simclr", {"rotation_degrees": 200.0}),
    ],
)
def test_invalid_options_raise_spec_error(name: str, options: dict[str, Any]) -> None:
    with pytest.raises(SpecError):
        build(name, **options)


@pytest.mark.parametrize("name", NAMES)
def test_pickles_for_data_loader_workers(name: str) -> None:
    aug = build(name, size=16)
    clone = pickle.loads(pickle.dumps(aug))
    image = smooth_image(25, 30)
    assert torch.equal(aug.per_sample(image, seeded(1)), clone.per_sample(image, seeded(1)))


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", ["simclr", "crop_flip"])
def test_per_sample_is_deterministic_under_a_seed(name: str) -> None:
    aug = build(name, size=24)
    image = smooth_image(50, 70)
    first = aug.per_sample(image, seeded(7))
    assert torch.equal(first, aug.per_sample(image, seeded(7)))
    assert not torch.equal(first, aug.per_sample(image, seeded(8)))


def test_simclr_on_device_is_deterministic_under_a_seed() -> None:
    aug = build("simclr", size=24)
    views = batch_views(aug, 4, 30, 40)
    first = aug.on_device(views, seeded(5))
    assert torch.equal(first, aug.on_device(views, seeded(5)))
    assert not torch.equal(first, aug.on_device(views, seeded(6)))


def test_simclr_views_of_one_image_differ() -> None:
    views = build("simclr", size=24).per_sample(smooth_image(60, 60), seeded(0))
    assert not torch.equal(views[0], views[1])


def test_global_rng_is_used_without_a_generator() -> None:
    aug = build("simclr", size=16)
    image = smooth_image(30, 30)
    torch.manual_seed(11)
    views = aug.per_sample(image)
    out = aug.on_device(views.unsqueeze(0))
    torch.manual_seed(11)
    assert torch.equal(views, aug.per_sample(image))
    assert torch.equal(out, aug.on_device(views.unsqueeze(0)))


def test_center_crop_ignores_the_generator() -> None:
    aug = build("center_crop", size=24)
    image = smooth_image(40, 50)
    assert torch.equal(aug.per_sample(image, seeded(1)), aug.per_sample(image, seeded(2)))


# ---------------------------------------------------------------- geometry


def test_random_crop_boxes_respect_area_and_aspect_ranges() -> None:
    height, width = 375, 500
    gen = seeded(0)
    boxes = [
        random_crop_box(height, width, area_range=(0.08, 1.0), ratio_range=(3 / 4, 4 / 3), generator=gen)
        for _ in range(400)
    ]
    areas = torch.tensor([b.height * b.width / (height * width) for b in boxes])
    log_ratios = torch.tensor([math.log(b.width / b.height) for b in boxes])
    for box in boxes:
        assert box.top >= 0 and box.top + box.height <= height
        assert box.left >= 0 and box.left + box.width <= width
    # Rounding the sides to whole pixels moves area and aspect slightly outside the nominal range.
    assert areas.min() >= 0.08 * 0.97 and areas.max() <= 1.0
    assert log_ratios.min() >= math.log(3 / 4) - 0.02 and log_ratios.max() <= math.log(4 / 3) + 0.02
    # Uniform area (mean ~0.54; large areas that do not fit are retried) and log-uniform aspect.
    assert 0.4 < areas.mean() < 0.6
    assert abs(log_ratios.mean()) < 0.05
    assert log_ratios.std() > 0.1  # spread over the range, not a constant
    tops = torch.tensor([b.top for b in boxes], dtype=torch.float32)
    assert tops.std() > 10  # positions vary


def test_random_crop_falls_back_to_a_clamped_center_crop() -> None:
    # No square crop of the whole area fits a 30x90 image: fall back to the centered 30x30 square.
    box = random_crop_box(30, 90, area_range=(1.0, 1.0), ratio_range=(1.0, 1.0), generator=seeded(0))
    assert (box.top, box.left, box.height, box.width) == (0, 30, 30, 30)
    # A very tall image falls back to aspect 3/4 (width / height): height round(10 / 0.75) = 13.
    box = random_crop_box(1000, 10, area_range=(0.99, 1.0), ratio_range=(3 / 4, 4 / 3), generator=seeded(0))
    assert (box.height, box.width) == (13, 10)
    assert box.top == (1000 - 13) // 2


@pytest.mark.parametrize(
    ("height", "width", "fraction", "expected"),
    [
        # side round(0.875 * 18) = 16; margins 2 and 9 split as (1, 1) and (5, 4)
        (18, 25, 0.875, (1, 5, 16, 16)),
        (24, 32, 0.875, (2, 6, 21, 21)),
        (10, 10, 0.5, (3, 3, 5, 5)),
    ],
)
def test_center_crop_box(
    height: int, width: int, fraction: float, expected: tuple[int, int, int, int]
) -> None:
    assert tuple(center_crop_box(height, width, fraction)) == expected


def test_center_crop_is_exact_on_a_known_image() -> None:
    image = torch.arange(3 * 18 * 25).remainder(251).to(torch.uint8).view(3, 18, 25)
    view = build("center_crop", size=16).per_sample(image)
    assert torch.equal(view[0], image[:, 1:17, 5:21])
    out = build("center_crop", size=16).on_device(view.unsqueeze(0))
    torch.testing.assert_close(out[0, 0], image[:, 1:17, 5:21].float() / 255)


def test_center_crop_resizes_a_constant_image_to_the_same_constant() -> None:
    image = torch.full((3, 40, 60), 77, dtype=torch.uint8)
    image[1] = 150
    view = build("center_crop", size=24).per_sample(image)
    assert torch.equal(view[0], image[:, :24, :24])


@pytest.mark.parametrize(("probability", "flipped"), [(1.0, True), (0.0, False)])
def test_flip_probability(probability: float, flipped: bool) -> None:
    image = smooth_image(16, 16)
    aug = build("crop_flip", size=16, crop_min_area=1.0, flip_probability=probability)
    view = aug.per_sample(image, seeded(0))[0]
    assert torch.equal(view, image.flip(-1) if flipped else image)


def bar_orientation(view: torch.Tensor) -> float:
    """Orientation in degrees (-90, 90] of the bright mass of ``uint8 [3, S, S]``, from its second moments."""
    weight = view[0].to(torch.float64)
    side = weight.shape[0]
    ys, xs = torch.meshgrid(
        torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64), indexing="ij"
    )
    total = weight.sum()
    dx = xs - (weight * xs).sum() / total
    dy = ys - (weight * ys).sum() / total
    mu20, mu02, mu11 = (weight * dx * dx).sum(), (weight * dy * dy).sum(), (weight * dx * dy).sum()
    return math.degrees(0.5 * math.atan2(2.0 * float(mu11), float(mu20 - mu02)))


@pytest.mark.parametrize("name", ["simclr", "crop_flip"])
def test_rotation_turns_views_within_the_range(name: str) -> None:
    bar = torch.zeros(3, 32, 32, dtype=torch.uint8)
    bar[:, 14:18, 6:26] = 255
    assert bar_orientation(bar) == pytest.approx(0.0, abs=1e-9)
    aug = build(name, size=32, crop_min_area=1.0, flip_probability=0.0, rotation_degrees=30.0)
    angles = [bar_orientation(view) for seed in range(100) for view in aug.per_sample(bar, seeded(seed))]
    assert max(abs(a) for a in angles) <= 31.0
    assert min(angles) < -20.0 and max(angles) > 20.0
    assert abs(statistics.fmean(angles)) < 5.0
    still = build(name, size=32, crop_min_area=1.0, flip_probability=0.0)
    assert all(torch.equal(view, bar) for view in still.per_sample(bar, seeded(0)))


def test_tiny_images_upscale() -> None:
    digit = torch.zeros(3, 8, 8, dtype=torch.uint8)
    digit[:, 2:6, 3:5] = 255
    for name in NAMES:
        aug = build(name, size=32)
        views = aug.per_sample(digit, seeded(0))
        assert views.shape == (aug.num_views, 3, 32, 32)
        assert views.max() > 200 and views.min() < 50
        out = aug.on_device(views.unsqueeze(0), seeded(0))
        assert out.min() >= 0.0 and out.max() <= 1.0


# ---------------------------------------------------------------- blur kernel size


@pytest.mark.parametrize(
    ("size", "kernel"), [(224, 23), (96, 9), (64, 7), (40, 5), (32, 3), (20, 3), (19, 1)]
)
def test_blur_kernel_size_rule(size: int, kernel: int) -> None:
    assert _color.blur_kernel_size(size) == kernel
    assert kernel % 2 == 1


def test_blur_spreads_an_impulse_over_exactly_the_kernel() -> None:
    size = 64
    aug = build(
        "simclr", size=size, color_jitter_probability=0.0, grayscale_probability=0.0, blur_probability=1.0
    )
    views = torch.zeros(1, 2, 3, size, size, dtype=torch.uint8)
    views[..., 32, 32] = 255
    out = aug.on_device(views, seeded(0))
    rows = (out[0, 0, 0] > 0).any(dim=1).nonzero().squeeze(1)
    cols = (out[0, 0, 0] > 0).any(dim=0).nonzero().squeeze(1)
    kernel = _color.blur_kernel_size(size)
    assert rows.tolist() == list(range(32 - kernel // 2, 32 + kernel // 2 + 1))
    assert cols.tolist() == rows.tolist()
    torch.testing.assert_close(out.sum(dim=(-2, -1)), torch.ones(1, 2, 3))  # mass preserved


# ---------------------------------------------------------------- batched ops vs a per-image reference


def reference_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    """tf.image.adjust_contrast: per-channel spatial mean (torchvision uses one luma mean instead)."""
    mean = image.mean(dim=(-2, -1), keepdim=True)
    return (image - mean) * factor + mean


def reference_saturation(image: torch.Tensor, factor: float) -> torch.Tensor:
    """tf.image.adjust_saturation, pixel by pixel through HSV (torchvision blends with luma instead)."""
    out = torch.empty_like(image)
    for i in range(image.shape[1]):
        for j in range(image.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*image[:, i, j].double().tolist())
            out[:, i, j] = torch.tensor(colorsys.hsv_to_rgb(h, min(1.0, max(0.0, s * factor)), v))
    return out


def reference_distort(
    image: torch.Tensor, draws: _color.PhotometricDraws, i: int, kernel: int
) -> torch.Tensor:
    """One image at a time, with the same draws as the batched path."""
    x = image
    if draws.jitter[i]:
        for op in draws.order[i].tolist():
            if op == _color.BRIGHTNESS:
                x = TF.adjust_brightness(x, draws.brightness[i].item())
            elif op == _color.CONTRAST:
                x = reference_contrast(x, draws.contrast[i].item())
            elif op == _color.SATURATION:
                x = reference_saturation(x, draws.saturation[i].item())
            else:
                x = TF.adjust_hue(x, draws.hue[i].item())
            x = x.clamp(0.0, 1.0)
    if draws.grayscale[i]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if draws.blur[i] and kernel > 1:
        sigma = draws.sigma[i].item()
        x = TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma]).clamp(0.0, 1.0)
    return x


def test_sample_draws_ranges() -> None:
    draws = simclr_draws(2000, 0)
    for factors in (draws.brightness, draws.contrast, draws.saturation):
        assert factors.min() >= 0.2 and factors.max() <= 1.8
    assert draws.hue.abs().max() <= 0.2
    assert draws.sigma.min() >= 0.1 and draws.sigma.max() <= 2.0
    assert torch.equal(draws.order.sort(dim=1).values, torch.arange(4).expand(2000, 4))
    assert abs(draws.jitter.float().mean() - 0.8) < 0.04
    assert abs(draws.grayscale.float().mean() - 0.2) < 0.04
    assert abs(draws.blur.float().mean() - 0.5) < 0.04
    # Grayscale is drawn independently of the jitter.
    assert abs(draws.grayscale[draws.jitter].float().mean() - 0.2) < 0.05
    # Every op comes first for about a quarter of the images.
    assert torch.bincount(draws.order[:, 0], minlength=4).min() > 400


def test_batched_color_distortion_matches_the_per_image_reference() -> None:
    n, size, kernel = 32, 12, 5
    images = torch.stack([smooth_image(size, size, seed).float() / 255 for seed in range(n)])
    images[0] = images[0, :1]  # a gray image: hue and saturation are no-ops
    draws = simclr_draws(n, 1)
    assert draws.jitter.any() and (~draws.jitter).any() and draws.blur.any() and draws.grayscale.any()
    batched = _color.color_distort(images, draws, kernel)
    reference = torch.stack([reference_distort(images[i], draws, i, kernel) for i in range(n)])
    # float32 HSV round trips differ from float64 colorsys by ~1e-6; everything else is closer.
    torch.testing.assert_close(batched, reference, atol=1e-5, rtol=0)


def test_order_of_ops_matters_and_is_followed() -> None:
    images = torch.stack([smooth_image(10, 10, seed).float() / 255 for seed in range(2)])
    draws = simclr_draws(2, 0, jitter_probability=1.0, grayscale_probability=0.0, blur_probability=0.0)
    draws = draws._replace(brightness=torch.tensor([1.7, 1.7]), contrast=torch.tensor([0.3, 0.3]))
    in_order = draws._replace(order=torch.tensor([[0, 1, 2, 3], [1, 0, 2, 3]]))
    out = _color.color_jitter(images, in_order)
    for i in range(2):
        torch.testing.assert_close(out[i], reference_distort(images[i], in_order, i, 1), atol=1e-5, rtol=0)
    swapped = draws._replace(order=torch.tensor([[1, 0, 2, 3], [0, 1, 2, 3]]))
    assert not torch.allclose(out, _color.color_jitter(images, swapped), atol=1e-3)


def test_simclr_on_device_uses_draws_from_its_generator() -> None:
    aug = build("simclr", size=20)
    views = batch_views(aug, 3, 30, 30)
    out = aug.on_device(views, seeded(9))
    flat = views.reshape(-1, 3, 20, 20).float() / 255
    draws = simclr_draws(flat.shape[0], 9)
    kernel = _color.blur_kernel_size(20)
    reference = torch.stack([reference_distort(flat[i], draws, i, kernel) for i in range(flat.shape[0])])
    torch.testing.assert_close(out.reshape(-1, 3, 20, 20), reference, atol=1e-5, rtol=0)


def test_color_strength_zero_leaves_colors_alone() -> None:
    aug = build("simclr", size=16, color_strength=0.0, grayscale_probability=0.0, blur_probability=0.0)
    views = batch_views(aug, 2, 20, 20)
    torch.testing.assert_close(aug.on_device(views, seeded(0)), views.float() / 255, atol=1e-6, rtol=0)


def test_blur_by_convolution_matches_blur_by_shifts() -> None:
    # The CPU uses shifted sums, other devices grouped convolutions: both must give the same blur.
    images = torch.rand(5, 3, 14, 17, generator=seeded(0))
    kernels = _color.gaussian_kernels(torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0]), 7)
    torch.testing.assert_close(
        _color._blur_by_conv(images, kernels), _color._blur_by_shifts(images, kernels), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("chunk_size", [1, 3, 8])
def test_distorting_in_chunks_matches_one_batch(chunk_size: int) -> None:
    views = torch.stack([smooth_image(16, 16, seed) for seed in range(8)])
    draws = simclr_draws(8, 4)
    whole = _color.color_distort(views.float() / 255, draws, 3)
    chunked = _color.distort_in_chunks(views, draws, 3, chunk_size)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
