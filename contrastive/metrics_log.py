"""``metrics.jsonl``: the one log every stage writes, one JSON object per logged step.

A ground-floor module: the training loop, the always-on ``jsonl`` logger and the curves read and
write it through here, and it depends on nothing above :mod:`contrastive.atomic`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import torch

from contrastive.atomic import write_text as write_text_atomic

__all__ = ["MetricsLog", "read_metrics"]


@attrs.define
class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step, written by rank 0 only.

    On resume, lines logged after the resumed step (by the interrupted run) are dropped so the file
    reads as one uninterrupted run.
    """

    path: Path
    enabled: bool
    after_step: int = 0

    def __attrs_post_init__(self) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [
                line for line in self.path.read_text().splitlines() if _line_step(line) <= self.after_step
            ]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, float]) -> None:
        """Append one record."""
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    # The MetricLogger interface: the loop's default logger when the session has no factory.

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Append ``metrics`` (which carries its ``step``) as one line."""
        self.write(metrics)

    def log_text(self, name: str, text: str) -> None:
        """Not written: JSON lines hold scalars only."""

    def log_images(self, step: int, name: str, images: torch.Tensor) -> None:
        """Not written: JSON lines hold scalars only."""

    def close(self) -> None:
        """Nothing to release: every record is appended and closed as it is written."""


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 62


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (empty if absent)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
