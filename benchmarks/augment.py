"""Throughput of SimCLR view generation on one CPU thread: our split pipeline vs torchvision's PIL one.

Both pipelines start from the same in-memory JPEGs (about 500x375, smooth gradients plus noise)
and produce the two 224-px pretraining views of each image as float tensors in [0, 1]:

- ours: ``torchvision.io.decode_jpeg`` -> ``simclr.per_sample`` (crop, resize, flip in uint8) per
  image, then ``simclr.on_device`` (colour jitter, grayscale, blur) on batches, on the CPU;
- baseline: ``PIL.Image.open`` -> per-image torchvision transforms with the same settings
  (RandomResizedCrop bicubic, flip, RandomApply(ColorJitter(0.8, 0.8, 0.8, 0.2), p=0.8),
  RandomGrayscale(0.2), RandomApply(GaussianBlur(23, (0.1, 2.0)), p=0.5), ToTensor) per view.

Prints images per second per core for each and their ratio (ours / baseline), plus where our
time goes. Run: ``python benchmarks/augment.py`` (64 images, quick) or ``--images 256``.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision.io
from PIL import Image
from torchvision import transforms as T

from contrastive.registry import load_registry


def make_jpegs(directory: Path, count: int, height: int, width: int, seed: int = 0) -> list[bytes]:
    """Write ``count`` JPEGs with smooth colour gradients plus noise; return their bytes."""
    gen = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height).view(1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, width)
    blobs = []
    for i in range(count):
        freq = 1.0 + 5.0 * torch.rand(3, 2, 1, 1, generator=gen)
        phase = 6.3 * torch.rand(3, 1, 1, generator=gen)
        base = 0.5 + 0.35 * torch.sin(freq[:, 0] * 3 * xs + freq[:, 1] * 2 * ys + phase)
        noise = 0.08 * torch.randn(3, height, width, generator=gen)
        image = (255 * (base + noise).clamp(0, 1)).to(torch.uint8)
        path = directory / f"{i:04d}.jpg"
        torchvision.io.write_jpeg(image, str(path), quality=90)
        blobs.append(path.read_bytes())
    return blobs


def ours(blobs: list[bytes], batch_size: int, timings: dict[str, float]) -> int:
    """Decode, per_sample each image, on_device per batch; return the number of views made."""
    aug = load_registry().build("augmentations", "simclr")
    gen = torch.Generator().manual_seed(0)
    made = 0
    for start in range(0, len(blobs), batch_size):
        views = []
        for blob in blobs[start : start + batch_size]:
            t0 = time.perf_counter()
            image = torchvision.io.decode_jpeg(torch.frombuffer(bytearray(blob), dtype=torch.uint8))
            t1 = time.perf_counter()
            views.append(aug.per_sample(image, gen))
            t2 = time.perf_counter()
            timings["decode"] += t1 - t0
            timings["per_sample"] += t2 - t1
        t0 = time.perf_counter()
        out = aug.on_device(torch.stack(views), gen)
        timings["on_device"] += time.perf_counter() - t0
        made += out.shape[0] * out.shape[1]
    return made


def baseline_transform() -> Callable[[Image.Image], torch.Tensor]:
    """torchvision's per-image PIL pipeline with SimCLR's settings."""
    transform: Callable[[Image.Image], torch.Tensor] = T.Compose(
        [
            T.RandomResizedCrop(224, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([T.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5),
            T.ToTensor(),
        ]
    )
    return transform


def baseline(blobs: list[bytes]) -> int:
    """Decode with PIL and transform each view separately; return the number of views made."""
    transform = baseline_transform()
    made = 0
    for blob in blobs:
        image = Image.open(io.BytesIO(blob)).convert("RGB")
        pair = [transform(image) for _ in range(2)]
        made += len(pair)
    return made


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    made = fn()
    return time.perf_counter() - start, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="JPEGs to generate and process")
    parser.add_argument("--batch-size", type=int, default=32, help="on_device batch size")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        blobs = make_jpegs(Path(tmp), args.images, 375, 500)
    # Warm up both paths (lazy imports, allocator, kernels) on a few images.
    ours(blobs[:4], args.batch_size, dict.fromkeys(("decode", "per_sample", "on_device"), 0.0))
    baseline(blobs[:4])

    timings = dict.fromkeys(("decode", "per_sample", "on_device"), 0.0)
    ours_s, ours_views = timed(lambda: ours(blobs, args.batch_size, timings))
    base_s, base_views = timed(lambda: baseline(blobs))
    assert ours_views == base_views == 2 * len(blobs)

    ours_rate, base_rate = len(blobs) / ours_s, len(blobs) / base_s
    print(f"images: {len(blobs)} JPEGs 500x375 -> 2 views at 224 px, 1 thread")
    print(f"baseline (PIL + torchvision transforms): {base_rate:8.1f} images/s/core")
    print(f"ours (decode_jpeg + per_sample + on_device): {ours_rate:8.1f} images/s/core")
    for name, seconds in timings.items():
        print(f"  {name:>10}: {1e3 * seconds / len(blobs):6.2f} ms/image")
    print(f"ratio ours/baseline: {ours_rate / base_rate:.2f}x")


if __name__ == "__main__":
    main()
