"""Counting and reporting samples the pipeline had to skip (undecodable images, truncated shards)."""

from __future__ import annotations

import logging

import attrs

from contrastive.errors import DataError


def check_skipped(skipped: int, seen: int, limit: float) -> None:
    """Stop a run whose share of skipped samples is over the limit.

    The training loop sums :attr:`contrastive.interfaces.Batch.skipped` over the batches of all
    ranks and calls this with the running totals.

    Args:
        skipped: Samples skipped so far (undecodable, or lost in a truncated shard).
        seen: Samples the pipeline tried so far: the ones delivered plus the skipped ones.
        limit: Largest allowed share ``skipped / seen``, in [0, 1].

    Raises:
        DataError: ``skipped / seen`` is over ``limit``; the message gives both numbers.
    """
    if seen <= 0 or skipped <= 0:
        return
    share = skipped / seen
    if share > limit:
        raise DataError(
            f"{skipped} of {seen} samples ({share:.2%}) were skipped as undecodable images or lost in "
            f"truncated shards, more than the allowed {limit:.2%}; check the shards with "
            f"`contrastive shards inspect` and the log for the failing files, or raise the limit"
        )


@attrs.define
class SkipLog:
    """Rate-limited warnings about skipped samples: the first few, then every ``every``-th.

    One instance per data-loader worker stream (no shared state).

    Attributes:
        logger: Where warnings go.
        first: How many skips are reported one by one.
        every: After that, one summary line per this many skips.
        count: Skips reported to this instance so far.
    """

    logger: logging.Logger
    first: int = 5
    every: int = 1000
    count: int = 0

    def skip(self, what: str, reason: str, n: int = 1) -> None:
        """Record ``n`` skipped samples at ``what`` (a shard URL and key) because of ``reason``."""
        before = self.count
        self.count += n
        if before < self.first:
            self.logger.warning("skipped %d sample(s) at %s: %s", n, what, reason)
            if self.count >= self.first:
                self.logger.warning("further skips are reported once every %d", self.every)
        elif before // self.every != self.count // self.every:
            self.logger.warning(
                "%d samples skipped so far in this worker (latest: %s: %s)", self.count, what, reason
            )
