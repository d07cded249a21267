"""Two procedurally generated development sets, different in nature from the digits and from each
other, written as shard sets by ``contrastive shards build shapes|textures OUT`` (no download).

``shapes`` (10 classes): one filled geometric shape per image (circle, ellipse, triangle, square,
pentagon, hexagon, star, cross, ring, half disc) at a random position, scale and rotation, in a
random colour on a random background colour, with pixel noise. The class is the outline alone:
colour, place, size and angle are nuisances, so colour jitter, crops and rotations all preserve
the label (SimCLR's augmentations fit it), and a mirror image keeps the class.

``textures`` (10 classes): a full-frame coloured grating: 5 orientations (0, 36, 72, 108, 144
degrees, each jittered by up to 5) times 2 spatial frequencies (about 3 and 7 cycles per image),
with a random phase and contrast, a weaker distracting grating of random orientation and frequency,
and pixel noise. There is no object: any crop holds the class, but a horizontal flip maps 36 to
144 degrees and 72 to 108 (it changes the class) and large rotations do too, so augmentations that
are harmless elsewhere destroy the label here.

Both are RGB, ``SIZE`` px square, stored losslessly as PNG (``png``, ``cls``, ``json`` with
``name``, ``class``, ``index``), written shuffled, ``SHARD_MAXCOUNT`` samples per shard, as
``OUT/train`` and ``OUT/test`` with their indexes. Every image is a function of
``(set, seed, split, index)`` alone (numpy's PCG64 seeded with them), so a build is identical on
every machine for the same numpy and Pillow; the default sizes are 200 training and 50 test
images per class.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from contrastive.data.digits import png_bytes
from contrastive.data.seeding import shuffled
from contrastive.data.shards import OutSample, write_shard_set
from contrastive.errors import DataError

#: Image side in pixels.
SIZE = 32
SHARD_MAXCOUNT = 100
SHAPE_CLASSES = (
    "circle",
    "ellipse",
    "triangle",
    "square",
    "pentagon",
    "hexagon",
    "star",
    "cross",
    "ring",
    "half_disc",
)
#: Grating orientations (degrees) and cycles per image of the ``textures`` classes.
ORIENTATIONS = (0.0, 36.0, 72.0, 108.0, 144.0)
FREQUENCIES = (3.0, 7.0)
TEXTURE_CLASSES = tuple(f"{int(o)}deg_{int(f)}cyc" for f in FREQUENCIES for o in ORIENTATIONS)
#: Generators of the sets: class count, and the image of (class, random generator).
SPLITS = {"train": 0, "test": 1}
#: Supersampling of the shapes before they are shrunk to SIZE (smooth edges).
SUPERSAMPLE = 4

Image = npt.NDArray[np.uint8]


def _rng(name: str, seed: int, split: str, index: int) -> np.random.Generator:
    digest = hashlib.sha256(name.encode()).digest()
    return np.random.default_rng([int.from_bytes(digest[:4], "little"), seed, SPLITS[split], index])


def _colours(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A background and a foreground colour at least 120 apart (Euclidean, in RGB)."""
    while True:
        a, b = rng.integers(0, 256, size=(2, 3))
        if float(np.linalg.norm(a.astype(float) - b.astype(float))) >= 120.0:
            return tuple(int(v) for v in a), tuple(int(v) for v in b)  # type: ignore[return-value]


def _regular(sides: int, radius: float, angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    return [
        (
            cx + radius * math.cos(angle + 2 * math.pi * k / sides),
            cy + radius * math.sin(angle + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


def _rotated(
    points: list[tuple[float, float]], angle: float, cx: float, cy: float
) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def shape_image(label: int, rng: np.random.Generator) -> Image:
    """One ``shapes`` image of class ``label``: ``uint8 [SIZE, SIZE, 3]``."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    big = SIZE * SUPERSAMPLE
    background, foreground = _colours(rng)
    radius = float(rng.uniform(0.22, 0.4)) * big
    cx, cy = (float(v) for v in rng.uniform(radius, big - radius, size=2))
    angle = float(rng.uniform(0.0, 2 * math.pi))
    canvas = PILImage.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(canvas)
    name = SHAPE_CLASSES[label]
    if name == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=foreground)
    elif name == "ellipse":
        outline = [
            (radius * math.cos(t), 0.45 * radius * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48)
        ]
        draw.polygon(_rotated(outline, angle, cx, cy), fill=foreground)
    elif name in ("triangle", "square", "pentagon", "hexagon"):
        sides = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[name]
        draw.polygon(_regular(sides, radius, angle, cx, cy), fill=foreground)
    elif name == "star":
        points = [
            (cx + r * math.cos(angle + math.pi * k / 5), cy + r * math.sin(angle + math.pi * k / 5))
            for k, r in enumerate([radius, 0.42 * radius] * 5)
        ]
        draw.polygon(points, fill=foreground)
    elif name == "cross":
        w = 0.33 * radius
        arm = [(-radius, -w), (radius, -w), (radius, w), (-radius, w)]
        draw.polygon(_rotated(arm, angle, cx, cy), fill=foreground)
        draw.polygon(_rotated(arm, angle + math.pi / 2, cx, cy), fill=foreground)
    elif name == "ring":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=foreground)
        inner = 0.55 * radius
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=background)
    else:  # half disc
        outline = [(radius * math.cos(t), radius * math.sin(t)) for t in np.linspace(0, math.pi, 32)]
        draw.polygon(_rotated(outline, angle, cx, cy), fill=foreground)
    small = np.asarray(canvas.resize((SIZE, SIZE), PILImage.Resampling.BOX), dtype=np.float64)
    noisy = small + rng.normal(0.0, 8.0, size=small.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _grating(
    orientation: float, cycles: float, phase: float, shape: tuple[int, int]
) -> npt.NDArray[np.float64]:
    """A sinusoid in [-1, 1] of ``cycles`` per image along ``orientation`` degrees."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64) / shape[0]
    theta = math.radians(orientation)
    wave: npt.NDArray[np.float64] = np.sin(
        2 * math.pi * cycles * (xs * math.cos(theta) + ys * math.sin(theta)) + phase
    )
    return wave


def texture_image(label: int, rng: np.random.Generator) -> Image:
    """One ``textures`` image of class ``label``: ``uint8 [SIZE, SIZE, 3]``."""
    orientation = ORIENTATIONS[label % len(ORIENTATIONS)] + float(rng.uniform(-5.0, 5.0))
    cycles = FREQUENCIES[label // len(ORIENTATIONS)] * float(rng.uniform(0.9, 1.1))
    main = _grating(orientation, cycles, float(rng.uniform(0, 2 * math.pi)), (SIZE, SIZE))
    distractor = _grating(
        float(rng.uniform(0, 180)),
        float(rng.uniform(2.0, 8.0)),
        float(rng.uniform(0, 2 * math.pi)),
        (SIZE, SIZE),
    )
    signal = float(rng.uniform(0.5, 1.0)) * main + float(rng.uniform(0.25, 0.5)) * distractor
    weight = (np.clip(signal, -1.5, 1.5) / 3.0 + 0.5)[..., None]  # [S, S, 1] in [0, 1]
    dark, light = (np.asarray(c, dtype=np.float64) for c in _colours(rng))
    pixels = dark * (1 - weight) + light * weight + rng.normal(0.0, 20.0, size=(SIZE, SIZE, 3))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


#: The sets: class names and the image of (class, generator).
SETS: dict[str, tuple[tuple[str, ...], Callable[[int, np.random.Generator], Image]]] = {
    "shapes": (SHAPE_CLASSES, shape_image),
    "textures": (TEXTURE_CLASSES, texture_image),
}


def generate(name: str, split: str, index: int, seed: int = 0) -> tuple[Image, int]:
    """Image ``index`` of a split and its class (classes take turns: ``index % classes``).

    Raises:
        DataError: An unknown set or split.
    """
    if name not in SETS or split not in SPLITS:
        raise DataError(
            f"unknown synthetic set {name!r} or split {split!r}: sets {sorted(SETS)}, splits train/test"
        )
    classes, draw = SETS[name]
    label = index % len(classes)
    return draw(label, _rng(name, seed, split, index)), label


def write_synthetic(
    name: str, out: Path, *, train_per_class: int = 200, test_per_class: int = 50, seed: int = 0
) -> None:
    """Write ``out/train`` and ``out/test`` of the set ``name`` (see the module docstring).

    Raises:
        DataError: An unknown set, or fewer than 1 image per class.
    """
    if name not in SETS:
        raise DataError(f"unknown synthetic set {name!r}: one of {', '.join(sorted(SETS))}")
    if train_per_class < 1 or test_per_class < 1:
        raise DataError("a synthetic set needs at least 1 training and 1 test image per class")
    classes, _ = SETS[name]
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        samples = []
        for index in shuffled(range(per_class * len(classes)), f"{name}-order", seed, split):
            image, label = generate(name, split, index, seed)
            data = png_bytes(image)
            samples.append(
                OutSample(
                    image=data,
                    image_size=len(data),
                    source_id=f"{name}:{seed}:{split}:{index}:{hashlib.sha1(data).hexdigest()}",
                    label=label,
                    meta={"name": f"{name}_{split}_{index:05d}.png", "class": classes[label], "index": index},
                    image_ext="png",
                )
            )
        build = {"kind": name, "split": split, "seed": seed, "per_class": per_class, "size": SIZE}
        write_shard_set(
            out / split, samples, classes=classes, build=build, maxcount=SHARD_MAXCOUNT, maxsize=1 << 30
        )
