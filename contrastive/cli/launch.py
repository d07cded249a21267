"""``python -m contrastive.cli.launch TORCHRUN-ARGS``: torchrun, ended by a signal without a traceback.

``contrastive run --nproc-per-node N`` starts this instead of ``python -m torch.distributed.run``:
torchrun answers SIGINT / SIGTERM by stopping its workers and then raising ``SignalException``,
and a failed worker with ``ChildFailedError``; Python prints either as a traceback. Here the first
becomes exit code ``128 + signal`` (130, 143), the one-line message left to the ``contrastive``
command that started it, and the second one line naming the first failed rank and its exit code
(the worker printed its own error), with that code.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with ``argv``; its exit code, or ``128 + signal`` when a signal stopped it."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(sys.argv[1:] if argv is None else argv)
    except SignalException as stopped:
        return 128 + int(stopped.sigval)
    except ChildFailedError as failed:  # each worker printed its own one-line message
        rank, failure = failed.get_first_failure()
        code = failure.exitcode
        print(f"torchrun: rank {rank} exited with code {code}", file=sys.stderr)
        return code if code > 0 else 128 - code
    return 0


if __name__ == "__main__":
    sys.exit(main())
