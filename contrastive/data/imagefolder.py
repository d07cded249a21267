"""``shards build imagefolder``: an ImageNet-style tree (one folder per class) written as shards.

Class indices follow torchvision's ``ImageFolder``: the sorted names of SRC's sub-folders; images
are the files below each (recursively) with an image extension. Every image is stored with its
original bytes (never re-encoded) under the key of its real format (``jpg`` for JPEG content,
``png`` for PNG, ...), with ``cls`` (the class index) and ``json`` (``name``: original file name,
``class``: class folder, ``path``: path relative to SRC). Samples are shuffled across shards with
``seed``.

With a labels file (:func:`read_labels`) SRC may instead be flat, like the official ImageNet
validation set (50,000 JPEGs in one folder): each image's class comes from the file, classes are
the sorted class names it uses (so ImageNet's val classes index like its train tree's, when
every class occurs), and ``class`` in ``json`` is that name. The file takes one of two forms:

* ``<file name> <class>`` per line (whitespace between), in any order;
* ``<class>`` per line: the class of each image in SRC in sorted file-name order (as the list of
  validation wnids several ImageNet tools ship).
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
from contrastive.errors import DataError, FileSystemError
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


def _image_files(src: Path) -> dict[str, ImageFile]:
    """Every image below ``src`` (recursively) by file name, label 0.

    Raises:
        DataError: Two images share a file name (a labels file could not tell them apart).
    """
    found: dict[str, ImageFile] = {}
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.lower().endswith(IMG_EXTENSIONS):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(src).as_posix()
            if name in found:
                raise DataError(
                    f"{src} holds two images named {name} ({found[name].rel}, {rel}); "
                    "a labels file names images by file name, so they must differ"
                )
            stat = path.stat()
            found[name] = ImageFile(path=path, rel=rel, size=stat.st_size, mtime_ns=stat.st_mtime_ns, label=0)
    return found


def _named(names: list[str], what: str) -> str:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"{len(names)} {what}: {shown}"


def read_labels(labels: Path, file_names: list[str]) -> dict[str, str]:
    """The class of every image, from a labels file in either form (see the module docstring).

    Args:
        labels: The file.
        file_names: The image file names in SRC (for the plain form: matched in sorted order).

    Returns:
        Class name by file name, for exactly the names in ``file_names``.

    Raises:
        DataError: Unknown form (lines of another number of fields, or of both), a file named
            twice with different classes, a named file missing from SRC, an image of SRC not in
            the file, or (plain form) another number of lines than images.
    """
    try:
        text = labels.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"labels file {labels} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"labels file {labels} is a folder") from None
    except PermissionError as exc:
        raise FileSystemError(f"labels file {labels} cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise DataError(f"labels file {labels} is not UTF-8 text") from None
    rows = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not rows:
        raise DataError(f"labels file {labels} is empty")
    widths = {len(fields) for _, fields in rows}
    if widths == {1}:
        ordered = sorted(file_names)
        if len(rows) != len(ordered):
            raise DataError(
                f"labels file {labels} lists {len(rows)} classes, one per line, but the source holds "
                f"{len(ordered)} images (this form gives the class of each image in sorted file-name order)"
            )
        return {name: fields[0] for name, (_, fields) in zip(ordered, rows, strict=True)}
    if widths != {2}:
        line, fields = next((n, f) for n, f in rows if len(f) != len(rows[0][1]) or len(f) > 2)
        raise DataError(
            f"labels file {labels}: unknown format (line {line} has {len(fields)} fields); expected lines "
            "of `<file name> <class>` or lines of `<class>` (in sorted file-name order)"
        )
    mapping: dict[str, str] = {}
    for line, (name, cls) in rows:
        if mapping.get(name, cls) != cls:
            raise DataError(f"labels file {labels}: line {line} gives {name} a second class ({cls})")
        mapping[name] = cls
    present = set(file_names)
    missing = sorted(name for name in mapping if name not in present)
    if missing:
        raise DataError(f"labels file {labels} names {_named(missing, 'image(s) missing from the source')}")
    unlabelled = sorted(name for name in file_names if name not in mapping)
    if unlabelled:
        raise DataError(f"labels file {labels} does not name {_named(unlabelled, 'image(s) of the source')}")
    return mapping


def scan_labelled(src: Path, labels: Path) -> tuple[list[str], list[ImageFile]]:
    """The classes and images of ``src`` (flat or not), labelled by the file ``labels``.

    Raises:
        DataError: SRC is missing or holds no image, two images share a name, or see
            :func:`read_labels`.
    """
    if not src.is_dir():
        raise DataError(f"{src} is not a folder of images")
    found = _image_files(src)
    if not found:
        raise DataError(f"{src} holds no image (image extensions: {' '.join(IMG_EXTENSIONS)})")
    mapping = read_labels(labels, list(found))
    classes = sorted(set(mapping.values()))
    label = {name: i for i, name in enumerate(classes)}
    images = [attrs.evolve(found[name], label=label[mapping[name]]) for name in sorted(found)]
    return classes, images


def build_imagefolder(
    src: str | Path,
    out: str | Path,
    *,
    labels: str | Path | None = None,
    maxcount: int = DEFAULT_MAXCOUNT,
    maxsize: int = DEFAULT_MAXSIZE,
    workers: int = 1,
    seed: int = 0,
    progress: Progress | Callable[[int], None] | None = None,
) -> ShardIndex:
    """Write the tree ``src`` as a shuffled shard set in ``out`` (resuming an interrupted build).

    Args:
        src: Tree root: one folder per class; with ``labels``, any folder of images (flat or not).
        out: Output folder.
        labels: File giving each image's class by its file name (see :func:`read_labels`);
            None: the class folders of ``src``.
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
    classes, images = scan_tree(src) if labels is None else scan_labelled(src, Path(labels))
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
    if labels is not None:
        build["labels"] = str(Path(labels).resolve())
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
