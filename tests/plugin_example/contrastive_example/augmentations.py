"""The example augmentations (example plugin).

* ``pad_crop``: written from scratch, CIFAR-style: pad, random crop, horizontal flip in the data
  workers; brightness jitter, batched, on the training device.
* ``crop_flip_invert``: the built-in ``crop_flip`` with one more option, made by extending its
  options class.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

from contrastive import Component, hookimpl, option
from contrastive.interfaces import Augmentation
from contrastive_plugins.augmentations import CropFlipOptions, build_crop_flip


@attrs.frozen
class PadCropOptions:
    """Options of ``pad_crop``."""

    size: int = option(32, "Side of the square views in pixels.", min=1)
    padding: int = option(4, "Zero padding on each side before the random crop.", min=0)
    views: int = option(2, "Views of each image (2 for pretraining, 1 otherwise).", min=1)
    brightness: float = option(0.4, "Largest brightness change, as a fraction (0: none).", min=0.0, max=1.0)


class PadCrop:
    """Pad, crop and flip in the workers (``per_sample``); brightness on the device (``on_device``)."""

    def __init__(self, options: PadCropOptions) -> None:
        self.options = options
        self.num_views = options.views  # core reads num_views and size
        self.size = options.size

    def per_sample(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``uint8 [3, H, W]`` to ``uint8 [V, 3, S, S]``; ``generator`` is the worker's seeded RNG."""
        side = self.size
        resized = F.interpolate(image[None].float(), size=(side, side), mode="bilinear", antialias=True)
        padded = F.pad(resized[0].round().clamp(0, 255).to(torch.uint8), [self.options.padding] * 4)
        views = []
        for _ in range(self.num_views):
            top, left = torch.randint(0, 2 * self.options.padding + 1, (2,), generator=generator).tolist()
            view = padded[:, top : top + side, left : left + side]
            if torch.rand((), generator=generator) < 0.5:
                view = view.flip(-1)
            views.append(view)
        return torch.stack(views)

    def on_device(self, views: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``uint8 [B, V, 3, S, S]`` to ``float32`` of the same shape in [0, 1]."""
        images = views.float() / 255
        amount = self.options.brightness
        if amount > 0:
            shape = (*views.shape[:2], 1, 1, 1)
            factor = 1 + amount * (2 * torch.rand(shape, generator=generator, device=views.device) - 1)
            images = (images * factor).clamp(0, 1)
        return images


def build_pad_crop(options: PadCropOptions) -> Augmentation:
    """Builder of ``pad_crop``."""
    return PadCrop(options)


@attrs.frozen
class CropFlipInvertOptions(CropFlipOptions):
    """Options of ``crop_flip_invert``: every option of the built-in ``crop_flip``, and one more."""

    invert_probability: float = option(0.0, "Probability of inverting a view's colours.", min=0.0, max=1.0)


class CropFlipInvert:
    """The built-in ``crop_flip`` views, then colour inversion with ``invert_probability``."""

    def __init__(self, options: CropFlipInvertOptions) -> None:
        self.inner = build_crop_flip(options)  # the built-in, with the options it knows
        self.num_views, self.size = self.inner.num_views, self.inner.size
        self.probability = options.invert_probability

    def per_sample(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """As ``crop_flip``: ``uint8 [3, H, W]`` to ``uint8 [1, 3, S, S]``."""
        return self.inner.per_sample(image, generator)

    def on_device(self, views: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """As ``crop_flip``, then ``1 - x`` for a random share of the views."""
        images = self.inner.on_device(views, generator)
        shape = (*views.shape[:2], 1, 1, 1)
        flip = torch.rand(shape, generator=generator, device=views.device) < self.probability
        return torch.where(flip, 1 - images, images)


@hookimpl
def contrastive_register_augmentations() -> list[Component]:
    """The augmentations this plugin offers."""
    return [
        Component(
            "pad_crop", build_pad_crop, PadCropOptions, summary="Pad, crop, flip; brightness (example)."
        ),
        Component(
            "crop_flip_invert",
            CropFlipInvert,
            CropFlipInvertOptions,
            summary="crop_flip with colour inversion (example plugin).",
        ),
    ]
