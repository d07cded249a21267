"""Open a stage's metric loggers: ``jsonl`` always, then the spec's ``[[runtime.loggers]]``.

Only rank 0 logs: the run gives the training loop a :data:`LoggerFactory` there and none elsewhere.
A stage that starts afresh also logs the resolved spec as text (``spec``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from contrastive.hookspecs import Category
from contrastive.interfaces import MetricLogger
from contrastive.metrics_log import MetricsLog
from contrastive.registry import Registry
from contrastive.spec.structure import ComponentSpec

log = logging.getLogger(__name__)

#: ``factory(stage, start_step)``: the stage's loggers, opened (the loop closes them).
LoggerFactory = Callable[[str, int], list[MetricLogger]]

#: The logger every stage has, whatever the spec lists.
ALWAYS = "jsonl"


def open_loggers(
    registry: Registry,
    chosen: Sequence[ComponentSpec],
    *,
    directory: Path,
    stage: str,
    start_step: int,
    config: Mapping[str, Any],
    spec_text: str = "",
) -> list[MetricLogger]:
    """Build ``jsonl`` and every chosen logger for ``stage``; close those built if one fails."""
    wanted = list(chosen)
    opened: list[MetricLogger] = []
    if all(c.name != ALWAYS for c in wanted):
        if ALWAYS in registry.names(Category.LOGGERS):
            options = registry.get(Category.LOGGERS, ALWAYS).options()
            wanted.insert(0, ComponentSpec(name=ALWAYS, options=options, category=Category.LOGGERS))
        else:  # the built-in loggers disabled or a registry without them: metrics.jsonl all the same
            opened.append(
                MetricsLog(directory / stage / "metrics.jsonl", enabled=True, after_step=start_step)
            )
    try:
        for item in wanted:
            opened.append(
                item.build(registry, directory=directory, stage=stage, start_step=start_step, config=config)
            )
        if spec_text and start_step == 0:
            for logger in opened:
                logger.log_text("spec", spec_text)
    except BaseException:
        close_all(opened)
        raise
    return opened


def close_all(loggers: Sequence[MetricLogger]) -> None:
    """Close every logger; one that fails to close is reported, the others still close."""
    for logger in loggers:
        try:
            logger.close()
        except Exception:  # a sink that cannot flush must not hide the run's own outcome
            log.exception("closing the %s logger failed", type(logger).__name__)


def factory(
    registry: Registry,
    chosen: Sequence[ComponentSpec],
    directory: Path,
    config: Mapping[str, Any],
    spec_text: str,
) -> LoggerFactory:
    """A :data:`LoggerFactory` for a run directory (give it to rank 0's session only)."""

    def make(stage: str, start_step: int) -> list[MetricLogger]:
        return open_loggers(
            registry,
            chosen,
            directory=directory,
            stage=stage,
            start_step=start_step,
            config=config,
            spec_text=spec_text,
        )

    return make
