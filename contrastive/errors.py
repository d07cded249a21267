"""The one error hierarchy of contrastive.

Every error a user can cause derives from :class:`ContrastiveError`. Library code raises these;
only the CLI turns them into a message and an exit code (``exit_code``).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs


class ContrastiveError(Exception):
    """Base class of every error a user can cause (bad spec, missing data, broken plugin)."""

    exit_code: int = 1


@attrs.frozen
class Problem:
    """One located problem in a spec.

    Attributes:
        source: Where the value came from: a file path, or ``--set``.
        key: Dotted key, e.g. ``pretrain.loss.temperature``; empty for file-level problems.
        message: What is wrong, with a suggestion where one fits.
    """

    source: str
    key: str
    message: str

    def __str__(self) -> str:
        if self.key:
            return f"{self.source}: {self.key}: {self.message}"
        return f"{self.source}: {self.message}"


class SpecError(ContrastiveError):
    """A spec (file, extends chain or ``--set`` overrides) has one or more problems."""

    exit_code = 2

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class IndivisibleBatchError(ContrastiveError):
    """A global batch size the ranks cannot share evenly (a spec mistake, found before training)."""

    exit_code = 2


class UnknownComponentError(ContrastiveError):
    """A component name that no installed plugin provides."""

    exit_code = 2


class PluginError(ContrastiveError):
    """A plugin failed to load, misnamed a hook, or clashed with another plugin."""

    exit_code = 3


class MissingExtraError(PluginError):
    """A component needs an optional package that is not installed (``pip install 'contrastive[extra]'``).

    Attributes:
        extra: The extra of ``contrastive`` that installs it.
    """

    def __init__(self, what: str, package: str, extra: str) -> None:
        super().__init__(
            f"{what} needs the {package} package, which is not installed; "
            f"install it with: pip install 'contrastive[{extra}]'"
        )
        self.extra = extra


class PluginCodeError(PluginError):
    """Code of a plugin raised while core called it (a bug in the plugin, not in the data or spec).

    Attributes:
        details: The plugin's traceback (the CLI shows it under ``-v``).

    Raised in a data-loader worker, it reaches the trainer re-created by PyTorch from text
    (``"Caught PluginCodeError in DataLoader worker process N.\\nOriginal Traceback ..."``); the
    message is read back from that text's last line and the text kept as details.
    """

    def __init__(self, message: str, details: str = "") -> None:
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            details = message.split("\nOriginal ", 1)[1]
            last = details.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)
        self.details = details


class DataError(ContrastiveError):
    """Missing, malformed or insufficient data (shards, indexes, label lists)."""

    exit_code = 4


class RunError(ContrastiveError):
    """A run cannot start or continue (run-directory clash, NaN loss, bad checkpoint)."""

    exit_code = 5


class RunDirectoryClash(RunError):
    """The run directory holds a run of a different spec.

    Attributes:
        directory: The run directory.
        difference: The first differing key, ``"dotted.key: OLD before, NEW now"``.
    """

    def __init__(self, directory: str, difference: str) -> None:
        super().__init__(
            f"{directory} holds a run of a different spec ({difference}); "
            "use --run-dir for a new run, or --force to reuse this directory"
        )
        self.directory = directory
        self.difference = difference


class RunLockedError(RunError):
    """Another process holds the lock of a run directory or shard folder (it is running there now)."""


class FileSystemError(ContrastiveError):
    """A file or folder cannot be read or written (permissions, read-only or full file system, a
    file where a folder is expected)."""

    exit_code = 6


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; the CLI exits ``128 + signum`` (130, 143) after one line.

    A subclass of ``KeyboardInterrupt`` so that code cleaning up after Ctrl-C cleans up after
    SIGTERM as well.

    Attributes:
        signum: The signal number.
    """

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        """``128 + signum``, the shell's convention for a process ended by a signal."""
        return 128 + self.signum
