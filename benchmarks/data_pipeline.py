"""Images per second from shards (decode, crop/flip, two views) against ImageFolder + PIL transforms.

Run: ``python benchmarks/data_pipeline.py`` (quick: 256 images); ``--images 2000`` for steadier
numbers. Everything is measured in this run on the same synthetic ImageNet-size JPEGs (500 px on
the long side, quality 90, about 100 KB like ImageNet's), so the ratios are comparable:

1. ``decoders``: one process, decode + SimCLR per-sample part (two 224 px random resized crops
   with flips), ``torchvision.io`` against PIL with JPEG draft mode (and PIL without draft).
2. ``loaders``: a full epoch through ``DataLoader`` with 1 and 2 workers.

   - ours: the ``webdataset`` source over shards: decode + ``simclr``'s ``per_sample`` (bicubic,
     antialiased resizing) in the workers, whole uint8 batches collated there. The colour part of
     ``simclr`` runs batched on the training device (``on_device``) and is not part of the loader.
   - baseline ``pil-same``: ``torchvision.datasets.ImageFolder`` + ``DataLoader`` with per-image
     PIL transforms doing the same work (bicubic RandomResizedCrop 224, flip, two views, uint8).
   - baseline ``pil-simclr``: the usual per-image PIL SimCLR pipeline, which also does the colour
     distortion and blur on the CPU (ColorJitter 0.8/0.8/0.8/0.2 with p=0.8, grayscale p=0.2,
     GaussianBlur p=0.5, float tensors).

   Throughput counts the images after the first batch (worker start-up excluded) and is divided
   by the number of workers for the per-core figure.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

SIZE = 224
BATCH = 32


def synthetic_jpegs(root: Path, count: int, classes: int = 10, seed: int = 0) -> list[Path]:
    """ImageNet-like JPEGs (smooth structure plus texture, 500x375 / 375x500 / 500x333) in a class tree."""
    rng = np.random.default_rng(seed)
    shapes = [(375, 500), (500, 375), (333, 500)]
    paths = []
    for i in range(count):
        h, w = shapes[i % len(shapes)]
        coarse = rng.random((h // 25 + 1, w // 25 + 1, 3)) * 255
        base = np.kron(coarse, np.ones((25, 25, 1)))[:h, :w]
        image = np.clip(base + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(np.uint8)
        path = root / f"class{i % classes:02d}" / f"img_{i:06d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def simclr_augmentation() -> Any:
    """The registered ``simclr`` augmentation, or a minimal stand-in doing the same geometric work."""
    try:
        from contrastive.registry import load_registry

        return load_registry().build("augmentations", "simclr", size=SIZE)
    except Exception as exc:  # not registered yet: a stand-in with the same per-sample work
        logging.warning("simclr augmentation unavailable (%s); using a stand-in", exc)
        from torchvision.transforms.v2 import RandomResizedCrop
        from torchvision.transforms.v2 import functional as F

        class StandIn:
            num_views, size = 2, SIZE

            def per_sample(
                self, image: torch.Tensor, generator: torch.Generator | None = None
            ) -> torch.Tensor:
                views = []
                for _ in range(2):
                    top, left, h, w = RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3))
                    view = F.resized_crop(image, top, left, h, w, [SIZE, SIZE], antialias=True)
                    views.append(view.flip(-1) if torch.rand(1, generator=generator) < 0.5 else view)
                return torch.stack(views)

            def on_device(
                self, views: torch.Tensor, generator: torch.Generator | None = None
            ) -> torch.Tensor:
                return views.float() / 255

        return StandIn()


def rate(batches: Iterable[Any], size_of: Callable[[Any], int]) -> float:
    """Images per second after the first batch."""
    iterator: Iterator[Any] = iter(batches)
    next(iterator)
    start, images = time.perf_counter(), 0
    for batch in iterator:
        images += size_of(batch)
    return images / (time.perf_counter() - start)


def bench_decoders(paths: list[Path], augmentation: Any) -> dict[str, float]:
    """Single-process images/s of decode + per-sample views for each decoder."""
    from contrastive.data.decode import decode

    blobs = [p.read_bytes() for p in paths]
    generator = torch.Generator().manual_seed(0)
    torch.set_num_threads(1)
    results = {}
    for name, decoder, draft in (
        ("torchvision", "torchvision", 0),
        ("pil-draft", "pil", SIZE),
        ("pil", "pil", 0),
    ):
        for data in blobs[:8]:  # warm up
            augmentation.per_sample(decode(data, decoder, draft), generator)  # type: ignore[arg-type]
        start = time.perf_counter()
        for data in blobs:
            augmentation.per_sample(decode(data, decoder, draft), generator)  # type: ignore[arg-type]
        results[name] = len(blobs) / (time.perf_counter() - start)
    return results


def ours(shards: Path, augmentation: Any, workers: int, decoder: str) -> float:
    from contrastive.data.sources import webdataset_source

    source = webdataset_source(str(shards), decoder=decoder)  # type: ignore[arg-type]
    batches = source.train_batches(
        augmentation=augmentation,
        global_batch_size=BATCH,
        rank=0,
        world_size=1,
        epoch=0,
        seed=0,
        num_workers=workers,
    )
    return rate(batches, lambda b: int(b.images.shape[0]))


def baseline(tree: Path, workers: int, full: bool) -> float:
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    bicubic = T.InterpolationMode.BICUBIC  # as simclr's default (and the reference)
    geometric = [T.RandomResizedCrop(SIZE, interpolation=bicubic), T.RandomHorizontalFlip()]
    if full:
        colour = [
            T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([T.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5),
            T.ToTensor(),
        ]
        view = T.Compose(geometric + colour)
    else:
        view = T.Compose([*geometric, T.PILToTensor()])

    def two_views(image: Image.Image) -> torch.Tensor:
        return torch.stack([view(image), view(image)])

    dataset = datasets.ImageFolder(str(tree), transform=two_views)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=True)
    return rate(loader, lambda b: int(b[0].shape[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="Synthetic JPEGs (default 256: quick).")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Data-loader workers to try.")
    parser.add_argument("--skip-full", action="store_true", help="Skip the pil-simclr baseline.")
    parser.add_argument("--repeat", type=int, default=2, help="Interleaved repeats; the best of each counts.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from contrastive.data.imagefolder import build_imagefolder

    augmentation = simclr_augmentation()
    with tempfile.TemporaryDirectory() as tmp:
        tree, shards = Path(tmp) / "tree", Path(tmp) / "shards"
        paths = synthetic_jpegs(tree, args.images)
        mean_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1000
        build_imagefolder(tree, shards, maxcount=max(1, args.images // 8))
        print(f"{args.images} JPEGs, mean {mean_kb:.0f} KB, views {SIZE} px, batch {BATCH}")

        decoders = bench_decoders(paths[: min(len(paths), 200)], augmentation)
        print("\ndecode + two views, one process (images/s):")
        for name, value in decoders.items():
            print(f"  {name:12s} {value:8.1f}   x{value / decoders['pil-draft']:.2f} vs pil-draft")
        decoder = "torchvision" if decoders["torchvision"] >= decoders["pil-draft"] else "pil"
        print(f"  faster: {decoder}")

        print(f"\nDataLoader epoch (images/s, best of {args.repeat}; ours uses decoder={decoder}):")
        for workers in args.workers:
            runs: dict[str, Callable[[], float]] = {
                "ours": partial(ours, shards, augmentation, workers, decoder),
                "pil-same": partial(baseline, tree, workers, full=False),
            }
            if not args.skip_full:
                runs["pil-simclr"] = partial(baseline, tree, workers, full=True)
            best = dict.fromkeys(runs, 0.0)
            for _ in range(args.repeat):  # interleaved, so that load changes hit every pipeline
                for name, run in runs.items():
                    best[name] = max(best[name], run())
            line = f"  workers={workers}: ours {best['ours']:7.1f} ({best['ours'] / workers:6.1f}/core)"
            for name in runs:
                if name != "ours":
                    line += f" | {name} {best[name]:7.1f} ratio x{best['ours'] / best[name]:.2f}"
            print(line)


if __name__ == "__main__":
    main()
