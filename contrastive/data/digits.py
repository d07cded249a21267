"""The embedded demo data set: scikit-learn's handwritten digits as shards.

``sklearn.datasets.load_digits`` ships with scikit-learn (no network): 1,797 real 8x8 images with
16 gray levels (0..16), 10 classes. Each image is scaled to 0..255 (``round(v * 255 / 16)``) and
stored losslessly as an 8x8 grayscale PNG (key ``png``), with ``cls`` and ``json`` (``name``
``digit_0000.png`` .. ``digit_1796.png`` by position in ``load_digits``, ``class``, ``index``).

The split is fixed: 500 test images drawn class-stratified with seed 0. Class ``c`` with ``n_c``
images gives ``floor(500 * n_c / 1797)`` test images, plus one for the classes with the largest
remainders (ties: lower class first) until 500; within a class the images are shuffled with
``("digits-split", 0, c)`` and the first ones go to test. The other 1,297 form the training split.
Both are written shuffled, 25 samples per shard: ``ROOT/digits-v1/train`` (52 shards) and
``ROOT/digits-v1/test`` (20 shards), each with its own index.

:func:`ensure_digits` builds the set on first use. Several processes (ranks) may call it at once:
each builds into a private temporary folder and renames it into place; the first rename wins and
the others discard their copy (the content is identical), so no reader ever sees a partial set.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from contrastive import atomic
from contrastive.data.index import index_path
from contrastive.data.seeding import shuffled
from contrastive.data.shards import OutSample, write_shard_set

log = logging.getLogger(__name__)

NAME = "digits-v1"
TEST_SIZE = 500
SPLIT_SEED = 0
SHARD_MAXCOUNT = 25
CLASSES = tuple(str(c) for c in range(10))
#: Environment variable naming the data cache root (``$CONTRASTIVE_DATA/digits``).
DATA_ENV = "CONTRASTIVE_DATA"


def default_root() -> Path:
    """``$CONTRASTIVE_DATA/digits`` when set, else ``~/.cache/contrastive/digits``."""
    base = os.environ.get(DATA_ENV)
    return Path(base) / "digits" if base else Path.home() / ".cache" / "contrastive" / "digits"


def digits_arrays() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """The digits as ``uint8 [1797, 8, 8]`` scaled to 0..255, and labels ``int64 [1797]``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.rint(np.asarray(data.images, dtype=np.float64) * 255.0 / 16.0).astype(np.uint8)
    return images, np.asarray(data.target, dtype=np.int64)


def holdout_quota(class_sizes: Sequence[int], test_size: int) -> list[int]:
    """Test images per class: proportional floors plus largest remainders (ties: lower class)."""
    total = sum(class_sizes)
    exact = [test_size * n / total for n in class_sizes]
    quota = [int(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda c: (-(exact[c] - quota[c]), c))
    for c in order[: test_size - sum(quota)]:
        quota[c] += 1
    return quota


def split_indices(
    labels: Sequence[int], test_size: int = TEST_SIZE, seed: int = SPLIT_SEED
) -> tuple[list[int], list[int]]:
    """The fixed stratified split: sorted train and test positions."""
    classes = sorted(set(int(label) for label in labels))
    members = {c: [i for i, label in enumerate(labels) if int(label) == c] for c in classes}
    quota = holdout_quota([len(members[c]) for c in classes], test_size)
    test: list[int] = []
    for c, q in zip(classes, quota, strict=True):
        test.extend(shuffled(members[c], "digits-split", seed, c)[:q])
    chosen = set(test)
    return [i for i in range(len(labels)) if i not in chosen], sorted(test)


def png_bytes(image: npt.NDArray[np.uint8]) -> bytes:
    """Lossless PNG of a ``uint8 [H, W]`` grayscale image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_digits(out: Path) -> None:
    """Write ``out/train`` and ``out/test`` (see the module docstring)."""
    images, labels = digits_arrays()
    train, test = split_indices(labels.tolist())
    for split, positions in (("train", train), ("test", test)):
        samples = []
        for i in shuffled(positions, "digits-order", split):
            data = png_bytes(images[i])
            samples.append(
                OutSample(
                    image=data,
                    image_size=len(data),
                    source_id=f"sklearn-digits:{i}:{hashlib.sha1(data).hexdigest()}",
                    label=int(labels[i]),
                    meta={"name": f"digit_{i:04d}.png", "class": CLASSES[int(labels[i])], "index": int(i)},
                    image_ext="png",
                )
            )
        build = {"kind": "digits", "split": split, "test_size": TEST_SIZE, "split_seed": SPLIT_SEED}
        write_shard_set(
            out / split, samples, classes=CLASSES, build=build, maxcount=SHARD_MAXCOUNT, maxsize=1 << 30
        )


def ensure_digits(root: str | Path | None = None) -> Path:
    """The digits shard sets under ``root`` (default :func:`default_root`), built if missing.

    Returns:
        The folder holding ``train`` and ``test``.
    """
    final = Path(root if root is not None else default_root()) / NAME
    if not (index_path(final / "train").exists() and index_path(final / "test").exists()):
        log.info("building the digits shards in %s", final)
        atomic.build_folder_once(final, write_digits)
    return final


def ensure_digits_subset(root: str | Path | None, split: str, labels_per_class: int, seed: int) -> Path:
    """A cached subset of ``labels_per_class`` images per class of a digits split (built if missing)."""
    from contrastive.data.subsets import write_subset

    base = ensure_digits(root)
    final = base.parent / f"{NAME}-subsets" / f"{split}-per-class-{labels_per_class}-seed-{seed}"
    if not index_path(final).exists():
        maxcount = max(1, min(SHARD_MAXCOUNT, labels_per_class * len(CLASSES) // 16))

        def write(tmp: Path) -> None:
            write_subset(base / split, tmp, per_class=labels_per_class, seed=seed, maxcount=maxcount)

        atomic.build_folder_once(final, write)
    return final
