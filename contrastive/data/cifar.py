"""``shards build cifar``: the CIFAR-10/100 python archives written as shard sets.

The source is one of the two standard "python version" archives, as the ``.tar.gz`` (read in
one pass, nothing extracted to disk) or extracted (the archive's folder, or a folder holding it):

* CIFAR-10 (``cifar-10-python.tar.gz``): ``cifar-10-batches-py/`` with ``data_batch_1`` ..
  ``data_batch_5`` (training), ``test_batch`` and ``batches.meta`` (``label_names``).
* CIFAR-100 (``cifar-100-python.tar.gz``): ``cifar-100-python/`` with ``train``, ``test`` and
  ``meta`` (``fine_label_names``, ``coarse_label_names``); the 100 fine labels by default, the
  20 coarse ones on request.

Each file is a Python 2 pickle of a dict: ``data``, a ``uint8`` array of one row of 3,072 bytes
per image (the 32x32 red plane, then green, then blue, each row-major), the labels
(``labels``, or ``fine_labels``/``coarse_labels``) and ``filenames``. The pickles are read with
an unpickler that builds plain data and numpy arrays only (:class:`PlainDataUnpickler`): it
resolves no other global, so a pickle that would call anything else is refused before it runs.

``OUT/train`` and ``OUT/test`` are written like the other builders' sets (resumable, atomic per
shard, index last): every image as a lossless 32x32 RGB PNG (key ``png``) with ``cls`` and
``json`` (``name``: the archive's file name, ``class``, ``index``: the position in the split in
archive order), shuffled across shards with ``seed``; class indices are the archive's labels,
class names come from its meta file.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import pickle
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Literal

import attrs
import numpy as np
import numpy.typing as npt

from contrastive.data.index import ShardIndex
from contrastive.data.seeding import shuffled
from contrastive.data.shards import OutSample, write_shard_set
from contrastive.errors import DataError, FileSystemError
from contrastive.progress import Progress, as_progress, tracked

log = logging.getLogger(__name__)

DEFAULT_MAXCOUNT = 200
DEFAULT_MAXSIZE = 1_000_000_000
#: Bytes of one image row: 32 x 32 pixels x 3 colour planes.
ROW_BYTES = 3 * 32 * 32
Labels = Literal["fine", "coarse"]


@attrs.frozen
class Layout:
    """Where one CIFAR variant keeps its data.

    Attributes:
        kind: ``cifar10`` or ``cifar100``.
        title: Name for messages.
        folder: The archive's top folder.
        splits: File names of each split's pickles, by split.
        meta: File name of the meta pickle.
    """

    kind: str
    title: str
    folder: str
    splits: Mapping[str, tuple[str, ...]]
    meta: str

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the archive must hold, split files first."""
        return (*(name for names in self.splits.values() for name in names), self.meta)

    def label_keys(self, labels: Labels) -> tuple[str, str]:
        """The per-image label key of the split files and the class-name key of the meta file."""
        if self.kind == "cifar10":
            return "labels", "label_names"
        return f"{labels}_labels", f"{labels}_label_names"


CIFAR10 = Layout(
    kind="cifar10",
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    splits={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    meta="batches.meta",
)
CIFAR100 = Layout(
    kind="cifar100",
    title="CIFAR-100",
    folder="cifar-100-python",
    splits={"train": ("train",), "test": ("test",)},
    meta="meta",
)
LAYOUTS = (CIFAR10, CIFAR100)


def _numpy_global(module: str, name: str) -> Any:
    """The numpy callable a pickle of arrays may name as ``module.name``, or None for any other.

    Arrays pickle as ``_reconstruct(ndarray, ...)`` plus ``dtype(...)`` (any protocol up to 4;
    ``numpy.core`` in Python 2 era pickles such as CIFAR's, ``numpy._core`` since numpy 2) or as
    ``_frombuffer(bytes, dtype, shape, order)`` (protocol 5). They build arrays and data types
    from plain values only. They are looked up here, never imported by the name in the pickle.
    """
    if module == "numpy" and name == "ndarray":
        return np.ndarray
    if module == "numpy" and name == "dtype":
        return np.dtype
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
        return _numpy_core_function("multiarray", name)
    if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
        return _numpy_core_function("numeric", name)
    return None


def _numpy_core_function(submodule: str, name: str) -> Any:
    """``numpy._core.<submodule>.<name>`` (numpy 2), else ``numpy.core``'s (numpy 1)."""
    try:
        module = importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # pragma: no cover - numpy before 1.26
        module = importlib.import_module(f"numpy.core.{submodule}")
    return getattr(module, name)


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, strings, bytes, numbers and numpy arrays, nothing else.

    Plain data needs no global; numpy arrays need the few numpy callables of
    :func:`_numpy_global`. Every other global is refused before anything is imported or called,
    so a pickle cannot run code. ``encoding="latin1"`` reads Python 2 byte strings (numpy's
    array buffers among them) as numpy expects.
    """

    def __init__(self, file: IO[bytes], *, where: str) -> None:
        super().__init__(file, encoding="latin1")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        """The allowed numpy callables; :class:`DataError` for any other global."""
        found = _numpy_global(module, name)
        if found is None:
            raise DataError(
                f"{self.where}: refusing to unpickle {module}.{name} (CIFAR files hold only plain "
                "data and numpy arrays; this file is not one of them)"
            )
        return found


def load_plain_pickle(file: IO[bytes], where: str) -> Any:
    """Unpickle ``file`` with :class:`PlainDataUnpickler`.

    Args:
        file: The pickle, opened for binary reading.
        where: Names it in messages (path, or archive and member).

    Raises:
        DataError: The pickle is damaged, or names a global other than the numpy ones.
    """
    try:
        return PlainDataUnpickler(file, where=where).load()
    except DataError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        LookupError,
        AttributeError,
        OverflowError,
    ) as exc:
        raise DataError(f"{where}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from None


@attrs.frozen
class Split:
    """The images of one split, in archive order.

    Attributes:
        rows: ``uint8 [N, 3072]``, one image per row (R, G, B planes).
        labels: Class index of every image.
        names: File name of every image.
    """

    rows: npt.NDArray[np.uint8]
    labels: tuple[int, ...]
    names: tuple[str, ...]


@attrs.frozen
class CifarArchive:
    """A CIFAR archive, read and checked.

    Attributes:
        layout: Which variant it is.
        source: The folder or tarball it was read from.
        classes: Class names, by index.
        splits: ``train`` and ``test``.
        labels: ``fine`` or ``coarse`` (CIFAR-100); ``fine`` for CIFAR-10.
    """

    layout: Layout
    source: Path
    classes: tuple[str, ...]
    splits: Mapping[str, Split]
    labels: Labels


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("latin1")
    return None


def _plain_keys(doc: Any, where: str) -> dict[str, Any]:
    """The dict ``doc`` with its keys as text (Python 2 pickles may give bytes)."""
    if not isinstance(doc, dict):
        raise DataError(f"{where}: expected a dict, found {type(doc).__name__}")
    out: dict[str, Any] = {}
    for key, value in doc.items():
        text = _text(key)
        if text is not None:
            out[text] = value
    return out


def _class_names(doc: Any, key: str, where: str) -> tuple[str, ...]:
    meta = _plain_keys(doc, where)
    names = meta.get(key)
    if not isinstance(names, list | tuple) or not names:
        raise DataError(f"{where}: no '{key}' list of class names")
    texts = [_text(name) for name in names]
    if any(not text for text in texts):
        raise DataError(f"{where}: '{key}' holds an empty or non-text class name")
    found = tuple(str(text) for text in texts)
    if len(set(found)) != len(found):
        raise DataError(f"{where}: '{key}' names a class twice")
    return found


def _split_part(doc: Any, label_key: str, num_classes: int, where: str) -> Split:
    part = _plain_keys(doc, where)
    rows = part.get("data")
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2:
        raise DataError(f"{where}: 'data' is not a uint8 array of image rows")
    if rows.shape[1] != ROW_BYTES:
        raise DataError(f"{where}: image rows of {rows.shape[1]} bytes, expected {ROW_BYTES} (32x32 RGB)")
    labels = part.get(label_key)
    if not isinstance(labels, list | tuple | np.ndarray) or len(labels) != len(rows):
        raise DataError(f"{where}: no '{label_key}' list with one label per image ({len(rows)})")
    checked: list[int] = []
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, int | np.integer) or not 0 <= label < num_classes:
            raise DataError(f"{where}: label {label!r} is not a class index 0..{num_classes - 1}")
        checked.append(int(label))
    raw_names = part.get("filenames")
    names: list[str] = []
    if isinstance(raw_names, list | tuple) and len(raw_names) == len(rows):
        names = [_text(name) or "" for name in raw_names]
    if not names or not all(names):
        names = [f"{i:05d}.png" for i in range(len(rows))]
    return Split(rows=rows, labels=tuple(checked), names=tuple(names))


def _concat(parts: Sequence[Split]) -> Split:
    return Split(
        rows=np.concatenate([p.rows for p in parts]) if len(parts) > 1 else parts[0].rows,
        labels=tuple(label for p in parts for label in p.labels),
        names=tuple(name for p in parts for name in p.names),
    )


def _tar_members(path: Path, wanted: set[str]) -> Iterator[tuple[str, Any]]:
    """``(name, unpickled)`` for the regular members of the tarball ``path`` named in ``wanted``.

    One pass over the archive; nothing is written to disk.
    """
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name not in wanted:
                    continue
                where = f"{path}:{name}"
                if not member.isfile():
                    raise DataError(f"{where}: not a regular file in the archive")
                handle = tar.extractfile(member)
                if handle is None:  # pragma: no cover - isfile() members always have data
                    raise DataError(f"{where}: cannot be read from the archive")
                with handle:
                    yield name, load_plain_pickle(handle, where)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, PermissionError):
            raise FileSystemError(f"{path}: cannot be read ({exc.strerror})") from None
        raise DataError(f"{path}: not a readable CIFAR tar archive ({type(exc).__name__}: {exc})") from None


def _folder_root(src: Path) -> tuple[Layout, Path]:
    """The variant of the extracted archive ``src`` and the folder holding its files."""
    for layout in LAYOUTS:
        if (src / layout.folder).is_dir():
            return layout, src / layout.folder
    for layout in LAYOUTS:
        if src.name == layout.folder:
            return layout, src
    if (src / CIFAR10.meta).is_file() or (src / CIFAR10.splits["test"][0]).is_file():
        return CIFAR10, src
    if (src / CIFAR100.meta).is_file() and (src / "train").is_file():
        return CIFAR100, src
    raise DataError(
        f"{src} is not a CIFAR archive: it holds neither {CIFAR10.folder}/ nor {CIFAR100.folder}/ "
        "(the python-version archives, extracted or as .tar.gz)"
    )


def _missing_message(src: Path, layout: Layout, missing: Sequence[str]) -> str:
    shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
    return f"{src} is not a complete {layout.title} archive: missing {shown}"


def _read_members(src: Path) -> tuple[Layout, dict[str, Any]]:
    """The variant of ``src`` and its unpickled files by file name."""
    if src.is_dir():
        layout, root = _folder_root(src)
        missing = [f"{layout.folder}/{name}" for name in layout.files if not (root / name).is_file()]
        if missing:
            raise DataError(_missing_message(src, layout, missing))
        docs: dict[str, Any] = {}
        for name in layout.files:
            try:
                with open(root / name, "rb") as f:
                    docs[name] = load_plain_pickle(f, str(root / name))
            except PermissionError as exc:
                raise FileSystemError(f"{root / name}: cannot be read ({exc.strerror})") from None
        return layout, docs
    if not src.exists():
        raise DataError(f"{src} does not exist (give a CIFAR .tar.gz or its extracted folder)")
    wanted = {f"{layout.folder}/{name}" for layout in LAYOUTS for name in layout.files}
    found = dict(_tar_members(src, wanted))
    present = [layout for layout in LAYOUTS if any(n.startswith(layout.folder + "/") for n in found)]
    if not present:
        raise DataError(
            f"{src} is not a CIFAR archive: it holds neither {CIFAR10.folder}/ nor {CIFAR100.folder}/ files"
        )
    layout = present[0]
    missing = [f"{layout.folder}/{name}" for name in layout.files if f"{layout.folder}/{name}" not in found]
    if missing:
        raise DataError(_missing_message(src, layout, missing))
    return layout, {name: found[f"{layout.folder}/{name}"] for name in layout.files}


def read_cifar(src: str | Path, *, labels: Labels = "fine") -> CifarArchive:
    """Read and check a CIFAR-10/100 python archive (tarball or extracted folder).

    Args:
        src: ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``, the folder they extract to
            (``cifar-10-batches-py``, ``cifar-100-python``), or a folder holding that folder.
        labels: CIFAR-100's label set: the 100 ``fine`` classes or the 20 ``coarse`` ones.

    Raises:
        DataError: Not a CIFAR archive, a file missing (named), a damaged or foreign pickle, or
            ``coarse`` asked of CIFAR-10.
    """
    src = Path(src)
    layout, docs = _read_members(src)
    if layout is CIFAR10 and labels != "fine":
        raise DataError(f"{src} is CIFAR-10, which has one label set; coarse labels are CIFAR-100's")
    label_key, names_key = layout.label_keys(labels)
    classes = _class_names(docs[layout.meta], names_key, f"{src}: {layout.folder}/{layout.meta}")
    splits = {
        split: _concat(
            [
                _split_part(docs[name], label_key, len(classes), f"{src}: {layout.folder}/{name}")
                for name in names
            ]
        )
        for split, names in layout.splits.items()
    }
    return CifarArchive(layout=layout, source=src, classes=classes, splits=splits, labels=labels)


def row_image(row: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """A CIFAR row (R, G, B planes of 32x32) as a ``uint8 [32, 32, 3]`` image."""
    return np.ascontiguousarray(row.reshape(3, 32, 32).transpose(1, 2, 0))


def png_bytes(row: npt.NDArray[np.uint8]) -> bytes:
    """Lossless PNG of a CIFAR row."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(row_image(row)).save(buffer, format="PNG")
    return buffer.getvalue()


def _encode_all(rows: npt.NDArray[np.uint8], workers: int, advance: Callable[[int], None]) -> list[bytes]:
    """PNG of every row, in order (``workers`` threads; Pillow encodes outside the GIL)."""
    chunk = 500
    starts = range(0, len(rows), chunk)

    def encode(start: int) -> list[bytes]:
        out = [png_bytes(row) for row in rows[start : start + chunk]]
        advance(len(out))
        return out

    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(encode, starts))
    else:
        parts = [encode(start) for start in starts]
    return [data for part in parts for data in part]


def build_cifar(
    src: str | Path,
    out: str | Path,
    *,
    labels: Labels = "fine",
    maxcount: int = DEFAULT_MAXCOUNT,
    maxsize: int = DEFAULT_MAXSIZE,
    workers: int = 1,
    seed: int = 0,
    progress: Progress | Callable[[int], None] | None = None,
) -> dict[str, ShardIndex]:
    """Write ``out/train`` and ``out/test`` from a CIFAR archive (resuming an interrupted build).

    Args:
        src: The archive (see :func:`read_cifar`).
        out: Output folder; gets ``train/`` and ``test/``.
        labels: CIFAR-100's label set, ``fine`` (100 classes) or ``coarse`` (20).
        maxcount: Most samples per shard.
        maxsize: Most bytes per shard.
        workers: Threads encoding PNGs and writing shards.
        seed: Seed of the shuffle across shards.
        progress: Told of the images encoded and the samples written, one task per step and
            split (see :func:`contrastive.data.shards.write_shard_set`).

    Returns:
        The index written for each split, by split.

    Raises:
        DataError: See :func:`read_cifar`; or ``out`` holds data not written here.
    """
    src, out = Path(src), Path(out)
    if src.is_dir() and out.resolve().is_relative_to(src.resolve()):
        raise DataError(f"the output {out} must not be inside the source folder {src}")
    archive = read_cifar(src, labels=labels)
    layout = archive.layout
    log.info("read %s from %s (%d classes)", layout.title, src, len(archive.classes))
    reporter = as_progress(progress)
    indexes: dict[str, ShardIndex] = {}
    for split, data in archive.splits.items():
        with tracked(reporter, len(data.rows), f"encoding {layout.title} {split} (images)") as advance:
            encoded = _encode_all(data.rows, workers, advance)
        samples = [
            OutSample(
                image=encoded[i],
                image_size=len(encoded[i]),
                source_id=f"{layout.kind}:{split}:{i}:{hashlib.sha1(encoded[i]).hexdigest()}",
                label=data.labels[i],
                meta={"name": data.names[i], "class": archive.classes[data.labels[i]], "index": i},
                image_ext="png",
            )
            for i in shuffled(range(len(encoded)), layout.kind, split, seed)
        ]
        build = {
            "kind": layout.kind,
            "split": split,
            "labels": labels,
            "source": str(src.resolve()),
            "seed": seed,
            "maxcount": maxcount,
            "maxsize": maxsize,
        }
        indexes[split] = write_shard_set(
            out / split,
            samples,
            classes=archive.classes,
            build=build,
            maxcount=maxcount,
            maxsize=maxsize,
            workers=workers,
            progress=reporter,
        )
    return indexes


__all__ = [
    "CIFAR10",
    "CIFAR100",
    "CifarArchive",
    "PlainDataUnpickler",
    "build_cifar",
    "load_plain_pickle",
    "png_bytes",
    "read_cifar",
    "row_image",
]
