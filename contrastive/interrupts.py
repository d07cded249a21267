"""SIGINT / SIGTERM: stop at the next step boundary with a checkpoint, or at once on a second signal.

The command line installs :meth:`Interrupts.handle` for both signals. Outside training a signal
unwinds at once (:class:`contrastive.errors.Interrupted`, exit ``128 + signal``). While the training
loop runs (:meth:`Interrupts.deferred`) the first signal is only recorded: the loop finishes the
step it is in, the ranks agree on stopping (:class:`StopVote`), write a checkpoint of that step and
then raise :class:`Interrupted`, so the same command resumes exactly there. A second signal raises
at once (the checkpoint is given up; the newest earlier one stays).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from contrastive.errors import Interrupted

log = logging.getLogger(__name__)


class Interrupts:
    """The SIGINT / SIGTERM a command received, and whether the training loop defers them.

    Attributes:
        received: Signal numbers in the order they arrived.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self._deferring = 0

    def handle(self, signum: int, frame: Any) -> None:
        """Signal handler: record ``signum``; unwind (raise Interrupted) unless the loop defers the first."""
        self.received.append(signum)
        if self._deferring and len(self.received) == 1:
            log.warning(
                "%s: finishing this step and writing a checkpoint; send it again to stop at once",
                signal.Signals(signum).name,
            )
            return
        raise Interrupted(self.received[0])

    @property
    def pending(self) -> int:
        """The first signal received (0: none)."""
        return self.received[0] if self.received else 0

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """While inside, the first signal is recorded for the loop instead of unwinding."""
        if self.received:  # a signal before the loop started: stop now
            raise Interrupted(self.received[0])
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if self.received:  # a signal the loop had no step left to act on: stop before more work
            raise Interrupted(self.received[0])


class StopVote:
    """The ranks' agreement, once a step, on stopping after a signal.

    Each call is one vote (every rank calls it after the same step). A single process reads its own
    :attr:`Interrupts.pending`. Several ranks all-reduce it (MAX: any rank's signal stops all); on
    CUDA the result is read back ``lag`` steps later through pinned memory, so the vote never makes
    the host wait for the step just queued. All ranks read the result of the same vote, so all stop
    after the same step.

    Args:
        interrupts: The command's signal record (None: never stop).
        device: This rank's device.
        distributed: Whether a process group of several ranks runs.
        lag: Steps between a vote and its reading on CUDA.
    """

    def __init__(
        self, interrupts: Interrupts | None, device: torch.device, distributed: bool, lag: int = 2
    ) -> None:
        self.interrupts = interrupts
        self.device = device
        self.distributed = distributed
        self.lag = lag
        self._votes: collections.deque[tuple[Any, torch.Tensor]] = collections.deque()

    def __call__(self) -> int:
        """The signal all ranks stop for now (0: go on)."""
        if self.interrupts is None:
            return 0
        local = self.interrupts.pending
        if not self.distributed:
            return local
        vote = torch.full((1,), float(local), device=self.device)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX)
        if self.device.type != "cuda":
            return int(vote.item())
        host = torch.empty(1, pin_memory=True)
        host.copy_(vote, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._votes.append((event, host))
        if len(self._votes) <= self.lag:
            return 0
        done, value = self._votes.popleft()
        done.synchronize()
        return int(value.item())
