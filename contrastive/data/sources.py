"""Resolve dataset options (URLs, index, digits cache) into a :class:`ShardDataSource`.

``urls`` is a shard set's folder: a local one holding ``index.json``, or an ``http(s)://`` URL
of one (``https://host/shards/train``: its index is ``.../train/index.json`` and every shard it
lists is ``.../train/<name>``), read as a whole. Or it is one or more URLs or brace patterns
(``/data/train-{000000..000146}.tar``, ``https://host/train-{000000..000146}.tar``,
``pipe:aws s3 cp s3://bucket/train-000000.tar -``). The index defaults to ``index.json`` beside
the first shard when that is a local path or an ``http(s)://`` URL; other remote shards
(``pipe:``, ``gs://``) need ``index``. Each URL's sample count is looked up in the index by file
name, so a URL list may name a part of the indexed set. ``http(s)://`` indexes and shards are
read with :mod:`contrastive.data.remote` (timeouts and retries of its :class:`HttpPolicy`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from contrastive.data.decode import Decoder
from contrastive.data.index import INDEX_NAME, ShardIndex, parse_index, read_index
from contrastive.data.pipeline import ShardDataSource, is_local
from contrastive.data.remote import HttpPolicy, RemoteError, fetch, is_http, join, sibling
from contrastive.errors import DataError


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Brace-expand one pattern or each of several."""
    from braceexpand import braceexpand

    patterns = [urls] if isinstance(urls, str) else list(urls)
    expanded = [url for pattern in patterns for url in braceexpand(pattern)]
    if not expanded:
        raise DataError("no shard URLs given")
    return expanded


def load_index(location: str, http: HttpPolicy | None = None) -> ShardIndex:
    """Read an index from a local path, an ``http(s)://`` URL (with ``http``'s timeout and
    retries), or any other URL ``webdataset.gopen`` opens.

    Raises:
        DataError: The index cannot be read (the message names it) or is malformed.
    """
    if is_local(location):
        return read_index(Path(location).expanduser())
    if is_http(location):
        try:
            data = fetch(location, http or HttpPolicy())
        except RemoteError as exc:
            raise DataError(f"cannot read shard index {exc}") from exc
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            raise DataError(f"cannot parse shard index {location}: not UTF-8 text ({exc})") from exc
        return parse_index(text, source=location)
    from webdataset.gopen import gopen

    try:
        with gopen(location, "rb") as stream:
            text = stream.read().decode()
    except Exception as exc:  # network and pipe errors of every kind
        raise DataError(f"cannot read shard index {location}: {type(exc).__name__}: {exc}") from exc
    return parse_index(text, source=location)


def _basename(url: str) -> str:
    name = PurePosixPath(url.split("?", 1)[0].rstrip("/")).name
    return unquote(name) if is_http(url) else name


def resolve_shards(
    urls: str | Sequence[str], index: str | None = None, http: HttpPolicy | None = None
) -> tuple[list[str], list[int], ShardIndex]:
    """The shard URLs, their sample counts and the index they were found in.

    Args:
        urls: A shard set's folder (local, or an ``http(s)://`` URL), or shard URLs/brace patterns.
        index: The index's path or URL (default: ``index.json`` in the folder, or beside the
            first shard when that is local or ``http(s)://``).
        http: Timeout and retries of ``http(s)://`` reads.

    Raises:
        DataError: No index can be found, or a URL names a shard the index does not list.
    """
    if isinstance(urls, str) and is_local(urls) and Path(urls).expanduser().is_dir():
        folder = Path(urls).expanduser()
        found = load_index(index, http) if index is not None else read_index(folder)
        return [str(folder / s.name) for s in found.shards], [s.count for s in found.shards], found
    if isinstance(urls, str) and is_http(urls) and not _shard_like(urls):
        found = load_index(index if index is not None else join(urls, INDEX_NAME), http)
        return [join(urls, s.name) for s in found.shards], [s.count for s in found.shards], found
    if isinstance(urls, str) and _missing_folder(urls):
        raise DataError(
            f"{urls} does not exist: give a shard folder holding index.json (written by `contrastive shards "
            "build` or `contrastive shards index`), or shard paths/brace patterns"
        )
    expanded = expand_urls(urls)
    if index is None and is_http(expanded[0]):
        index = sibling(expanded[0], INDEX_NAME)
    elif index is None:
        if not is_local(expanded[0]):
            raise DataError(
                f"remote shards ({expanded[0]} ...) need the index option (path or URL of index.json)"
            )
        index = os.path.join(os.path.dirname(os.path.expanduser(expanded[0])) or ".", INDEX_NAME)
    found = load_index(index, http)
    counts = {s.name: s.count for s in found.shards}
    unknown = [url for url in expanded if _basename(url) not in counts]
    if unknown:
        raise DataError(
            f"{len(unknown)} of {len(expanded)} shards are not in the index {index} "
            f"(e.g. {', '.join(unknown[:3])}); index them with `contrastive shards index`"
        )
    local = [os.path.expanduser(url) if is_local(url) else url for url in expanded]
    return local, [counts[_basename(url)] for url in expanded], found


def _shard_like(url: str) -> bool:
    """Whether ``url`` names shards (a brace pattern or an archive suffix) rather than a folder."""
    path = url.split("?", 1)[0]
    return "{" in path or path.endswith((".tar", ".tgz", ".tar.gz"))


def _missing_folder(url: str) -> bool:
    """A local path that names no shard (no brace pattern, no archive suffix) and does not exist."""
    return not _shard_like(url) and is_local(url) and not Path(url).expanduser().exists()


def webdataset_source(
    urls: str | Sequence[str],
    *,
    index: str | None = None,
    shuffle_buffer: int = 1000,
    decoder: Decoder = "torchcodec",
    labelled: bool = True,
    http: HttpPolicy | None = None,
) -> ShardDataSource:
    """The data source of the ``webdataset`` component (see :func:`resolve_shards`).

    ``http`` says how ``http(s)://`` indexes and shards are read (default :class:`HttpPolicy`).
    """
    shard_urls, counts, found = resolve_shards(urls, index, http)
    return ShardDataSource(
        urls=shard_urls,
        counts=counts,
        classes=found.classes,
        labelled=labelled,
        shuffle_buffer=shuffle_buffer,
        decoder=decoder,
        build=found.build,
        http=http,
    )


def digits_source(
    *,
    split: str,
    root: str | None,
    labelled: bool = True,
    labels_per_class: int = 0,
    subset_seed: int = 0,
    shuffle_buffer: int = 1000,
    decoder: Decoder = "torchcodec",
    held_out_per_class: int = 0,
) -> ShardDataSource:
    """The data source of the ``digits`` component: its shards built on first use, then as ``webdataset``."""
    from contrastive.data.digits import ensure_digits, ensure_digits_subset

    base = Path(root).expanduser() if root else None
    if held_out_per_class > 0:
        folder = ensure_digits_subset(base, split, held_out_per_class, subset_seed, held_out=True)
    elif labels_per_class > 0:
        folder = ensure_digits_subset(base, split, labels_per_class, subset_seed)
    else:
        folder = ensure_digits(base) / split
    return webdataset_source(str(folder), shuffle_buffer=shuffle_buffer, decoder=decoder, labelled=labelled)
