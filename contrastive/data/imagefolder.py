"""``shards build imagefolder``: an ImageNet-style tree (one folder per class) written as shards.

Class indices follow torchvision's ``ImageFolder``: the sorted names of SRC's sub-folders; images
are the files below each (recursively) with an image extension. Every image is stored with its
original bytes (never re-encoded) under the key of its real format (``jpg`` for JPEG content,
``png`` for PNG, ...), with ``cls`` (the class index) and ``json`` (``name``: original file name,
``class``: class folder, ``path``: path relative to SRC). Samples are shuffled across shards with
``seed``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import attrs

from contrastive.data.index import ShardIndex
from contrastive.data.seeding import shuffled
from contrastive.data.shards import OutSample, write_shard_set
from contrastive.errors import DataError
from contrastive.progress import Progress

log = logging.getLogger(__name__)

#: Image file extensions taken from the tree (those of torchvision's ImageFolder).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_MAXCOUNT = 1000
DEFAULT_MAXSIZE = 1_000_000_000


@attrs.frozen
class ImageFile:
    """One image of the tree.

    Attributes:
        path: The file.
        rel: Path relative to the tree root, with ``/``.
        size: Bytes.
        mtime_ns: Modification time (for the build fingerprint).
        label: Class index.
    """

    path: Path
    rel: str
    size: int
    mtime_ns: int
    label: int


def _class_images(root: Path, folder: str, label: int) -> list[ImageFile]:
    found: list[ImageFile] = []
    for dirpath, dirnames, filenames in os.walk(root / folder, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.lower().endswith(IMG_EXTENSIONS):
                continue
            path = Path(dirpath) / name
            stat = path.stat()
            rel = path.relative_to(root).as_posix()
            found.append(
                ImageFile(path=path, rel=rel, size=stat.st_size, mtime_ns=stat.st_mtime_ns, label=label)
            )
    return found


def scan_tree(src: Path) -> tuple[list[str], list[ImageFile]]:
    """The classes and images of an ImageFolder-style tree.

    Raises:
        DataError: SRC is missing, has no class folders, or a class folder has no images.
    """
    if not src.is_dir():
        raise DataError(f"{src} is not a folder (expected one sub-folder of images per class)")
    classes = sorted(
        entry.name for entry in os.scandir(src) if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise DataError(f"{src} has no class folders (expected one sub-folder of images per class)")
    images: list[ImageFile] = []
    empty: list[str] = []
    for label, folder in enumerate(classes):
        found = _class_images(src, folder, label)
        if not found:
            empty.append(folder)
        images.extend(found)
    if empty:
        raise DataError(
            f"{len(empty)} class folder(s) in {src} hold no image ({', '.join(empty[:5])}); "
            f"image extensions: {' '.join(IMG_EXTENSIONS)}"
        )
    return classes, images


def build_imagefolder(
    src: str | Path,
    out: str | Path,
    *,
    maxcount: int = DEFAULT_MAXCOUNT,
    maxsize: int = DEFAULT_MAXSIZE,
    workers: int = 1,
    seed: int = 0,
    progress: Progress | Callable[[int], None] | None = None,
) -> ShardIndex:
    """Write the tree ``src`` as a shuffled shard set in ``out`` (resuming an interrupted build).

    Args:
        src: Tree root: one folder per class.
        out: Output folder.
        maxcount: Most samples per shard.
        maxsize: Most bytes per shard.
        workers: Shards written in parallel.
        seed: Seed of the shuffle across shards.
        progress: Told of the samples written (see :func:`contrastive.data.shards.write_shard_set`).

    Returns:
        The index written to ``out/index.json``.
    """
    src, out = Path(src), Path(out)
    if out.resolve().is_relative_to(src.resolve()):
        raise DataError(f"the output {out} must not be inside the source tree {src}")
    classes, images = scan_tree(src)
    log.info("found %d images in %d classes under %s", len(images), len(classes), src)
    samples = [
        OutSample(
            image=image.path,
            image_size=image.size,
            source_id=f"{image.rel}:{image.size}:{image.mtime_ns}",
            label=image.label,
            meta={"name": image.path.name, "class": classes[image.label], "path": image.rel},
        )
        for image in shuffled(images, "imagefolder", seed)
    ]
    build = {
        "kind": "imagefolder",
        "source": str(src.resolve()),
        "seed": seed,
        "maxcount": maxcount,
        "maxsize": maxsize,
    }
    return write_shard_set(
        out,
        samples,
        classes=classes,
        build=build,
        maxcount=maxcount,
        maxsize=maxsize,
        workers=workers,
        progress=progress,
    )
