"""Shards and indexes over HTTP(S), read with :mod:`urllib`: a timeout on every read, bounded retries.

A URL is opened as a :class:`HttpStream`, a non-seekable binary stream the tar reader consumes in
order. Every connect and every socket read waits at most :attr:`HttpPolicy.timeout` seconds, so a
server that accepts and never answers, or stops in the middle of a body, fails that read instead
of hanging the run. A failure that may pass (a dropped connection, a timeout, a body shorter than
its ``Content-Length``, HTTP 408/425/429 and 5xx) is retried after a short backoff, resuming at the
byte where the stream stopped (an HTTP ``Range`` request; from a server that ignores ranges the
body is read again and the bytes already delivered are passed over), so a retried shard yields
exactly the samples an uninterrupted read would. A URL is tried at most ``1 + retries`` times in
all; after that, or at once for any other HTTP status (404, 403, ...), reading raises
:class:`RemoteError` naming the URL. What happens then is the pipeline's choice
(:attr:`HttpPolicy.stop`): the shard's remaining samples are skipped and counted like those of a
truncated shard, or the error stops the run.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from types import TracebackType
from typing import Any

import attrs

from contrastive.errors import DataError

log = logging.getLogger(__name__)

#: HTTP statuses worth another try (besides every 5xx): timeout, too early, too many requests.
TRANSIENT_STATUSES = frozenset({408, 425, 429})
#: The first backoff before a retry, in seconds; it doubles with every retry (at most the timeout).
FIRST_BACKOFF = 0.5
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@attrs.frozen
class HttpPolicy:
    """How HTTP(S) shards and indexes are read (picklable: sent to data-loader workers).

    Attributes:
        timeout: Seconds every connect and every read may wait for the server.
        retries: Further tries of a URL after failures that may pass (0: one try only).
        stop: Whether a shard that cannot be read stops the run (True) or has its samples skipped
            and counted (False; the run stops only past ``runtime.max_skipped_fraction``).
    """

    timeout: float = 30.0
    retries: int = 3
    stop: bool = False

    def __attrs_post_init__(self) -> None:
        if not self.timeout > 0:
            raise DataError(f"the HTTP timeout must be positive, got {self.timeout}")
        if self.retries < 0:
            raise DataError(f"the HTTP retries must be 0 or more, got {self.retries}")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1, 2, ...): 0.5, 1, 2, ... capped at the timeout."""
        return min(FIRST_BACKOFF * 2.0 ** (retry - 1), self.timeout)


class RemoteError(DataError):
    """A URL could not be read: a status that will not change, or every try failed.

    Constructible from the message alone, as a data-loader worker re-raises it in the trainer.

    Attributes:
        url: The URL.
    """

    def __init__(self, message: str, *, url: str = "") -> None:
        super().__init__(message)
        self.url = url


def is_http(url: str) -> bool:
    """Whether ``url`` is an ``http://`` or ``https://`` URL (read by this module)."""
    return url.lower().startswith(("http://", "https://"))


def join(base: str, name: str) -> str:
    """The URL of ``name`` (a path relative to a shard set's folder) under the folder URL ``base``.

    A query of ``base`` (a storage token valid for the whole folder) is kept.
    """
    parts = urllib.parse.urlsplit(base)
    path = parts.path.rstrip("/") + "/" + urllib.parse.quote(name)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def sibling(url: str, name: str) -> str:
    """The URL of ``name`` in the same folder as ``url`` (its query kept, as by :func:`join`)."""
    parts = urllib.parse.urlsplit(url)
    return join(
        urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rsplit("/", 1)[0], parts.query, "")),
        name,
    )


def _transient(exc: BaseException) -> bool:
    """Whether another try may succeed: any network error, a short body, or a transient status."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in TRANSIENT_STATUSES
    return isinstance(exc, OSError | http.client.HTTPException)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return _describe(reason) if isinstance(reason, BaseException) else f"URLError: {reason}"
    if isinstance(exc, TimeoutError):
        return "no answer within the timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class HttpStream(io.RawIOBase):
    """The body of one URL as a non-seekable binary stream, with timeouts and resuming retries.

    Args:
        url: An ``http://`` or ``https://`` URL.
        policy: Timeout and retries.
        sleep: Waits between tries (tests may pass a recorder).
    """

    def __init__(self, url: str, policy: HttpPolicy, sleep: Callable[[float], Any] = time.sleep) -> None:
        super().__init__()
        self.url = url
        self.policy = policy
        self.position = 0
        self.tries = 0
        self._sleep = sleep
        self._response: http.client.HTTPResponse | None = None
        self._size: int | None = None

    def readable(self) -> bool:
        """Always True."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Read up to ``len(buffer)`` bytes at the current position (0 only at the end of the body).

        Raises:
            RemoteError: The server answered with a status that will not change, or every try failed.
        """
        while True:
            try:
                if self._response is None:
                    self._response = self._connect()
                got = self._response.readinto(buffer)
                if got == 0 and len(buffer) and self._size is not None and self.position < self._size:
                    raise ConnectionError(
                        f"the connection closed after {self.position} of {self._size} bytes"
                    )
            except Exception as exc:  # sorted into another try or giving up
                self._failed(exc)
                continue
            self.position += got
            return got

    def _connect(self) -> http.client.HTTPResponse:
        """A response whose next byte is byte ``position`` of the body."""
        self.tries += 1
        headers = {"Range": f"bytes={self.position}-"} if self.position else {}
        request = urllib.request.Request(self.url, headers=headers)
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=self.policy.timeout)
        try:
            self._size = self._body_size(response)
            if self.position and response.status != 206:  # the server ignored the range
                self._pass_over(response, self.position)
        except BaseException:
            response.close()
            raise
        return response

    def _body_size(self, response: http.client.HTTPResponse) -> int | None:
        """The size of the whole body, when the response says it."""
        if response.status == 206:
            found = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if found is None or int(found.group(1)) != self.position:
                raise http.client.HTTPException(
                    f"a range request from byte {self.position} got Content-Range "
                    f"{response.headers.get('Content-Range')!r}"
                )
            total = found.group(3)
            return int(total) if total != "*" else int(found.group(2)) + 1
        length = response.headers.get("Content-Length")
        return int(length) if length is not None and length.isdigit() else None

    def _pass_over(self, response: http.client.HTTPResponse, count: int) -> None:
        """Read and drop the first ``count`` bytes of a body sent again from its start."""
        left = count
        while left:
            chunk = response.read(min(left, 1 << 16))
            if not chunk:
                raise ConnectionError(f"the connection closed after {count - left} of {count} bytes")
            left -= len(chunk)

    def _failed(self, exc: Exception) -> None:
        """Close the connection, then wait for the next try, or raise :class:`RemoteError`."""
        self._drop()
        tries = 1 + self.policy.retries
        reason = _describe(exc)
        if not _transient(exc):
            raise RemoteError(f"{self.url}: {reason}", url=self.url) from exc
        if self.tries >= tries:
            raise RemoteError(
                f"{self.url}: {reason} (tried {self.tries} times, {self.policy.timeout:g} s timeout a read)",
                url=self.url,
            ) from exc
        wait = self.policy.backoff(self.tries)
        log.warning(
            "reading %s failed at byte %d (%s); try %d of %d in %.2g s",
            self.url,
            self.position,
            reason,
            self.tries + 1,
            tries,
            wait,
        )
        self._sleep(wait)

    def _drop(self) -> None:
        if self._response is not None:
            response, self._response = self._response, None
            with contextlib.suppress(Exception):  # closing a broken connection may fail too
                response.close()

    def close(self) -> None:
        """Close the connection (the stream cannot be read again)."""
        self._drop()
        super().close()

    def __enter__(self) -> HttpStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def fetch(url: str, policy: HttpPolicy) -> bytes:
    """The whole body of ``url`` (e.g. a shard index).

    Raises:
        RemoteError: See :meth:`HttpStream.readinto`.
    """
    with HttpStream(url, policy) as stream:
        return stream.read()
