"""Problems of the installation itself, told apart from the bugs they look like.

The commonest: a torchvision built for another torch (a CPU torch with a CUDA torchvision, or
versions from different releases). ``import torchvision`` then fails inside torchvision's own
registration of its C++ operators (``operator torchvision::nms does not exist``) with a long
traceback, on the first command that needs it. :func:`installation_problem` recognises that case
from any failure and turns it into one line naming both versions and the fix.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

from contrastive.errors import ContrastiveError


class InstallationError(ContrastiveError):
    """The installed packages do not work together (exit 3, as a missing extra)."""

    exit_code = 3


def distribution_version(name: str) -> str:
    """The installed version of a distribution, or ``"(not installed)"``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def torchvision_import_failure() -> BaseException | None:
    """What ``import torchvision`` raises now, or None when it imports (or is not installed)."""
    if "torchvision" in sys.modules and getattr(sys.modules["torchvision"], "__version__", None):
        return None
    try:
        importlib.import_module("torchvision")
    except ModuleNotFoundError as exc:
        return None if exc.name == "torchvision" else exc
    except Exception as exc:  # RuntimeError: operator torchvision::nms does not exist, and the like
        return exc
    return None


def _mentions_torchvision(error: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if "torchvision" in str(current) or "torchvision" in type(current).__module__:
            return True
        tb = current.__traceback__
        while tb is not None:
            if "torchvision" in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
        current = current.__cause__ or current.__context__
    return False


def mismatch_message(failure: BaseException) -> str:
    """One line: both versions, what failed, and the fix."""
    torch_version = distribution_version("torch")
    vision_version = distribution_version("torchvision")
    reason = (str(failure).strip().splitlines() or [type(failure).__name__])[-1]
    return (
        f"torchvision {vision_version} does not work with torch {torch_version} "
        f"({type(failure).__name__}: {reason}): they must come from the same PyTorch release and "
        "build (CPU or the same CUDA); reinstall them together from one index, e.g. "
        "pip install --force-reinstall torch torchvision --index-url https://download.pytorch.org/whl/cpu "
        "(or .../whl/cu126 for CUDA 12.6)"
    )


def installation_problem(error: BaseException) -> InstallationError | None:
    """The installation problem behind ``error``, if there is one (else None).

    Only a failure that involves torchvision is checked, by importing torchvision again: an import
    that fails is the diagnosis, whatever the original error looked like.
    """
    if isinstance(error, InstallationError):
        return error
    if not _mentions_torchvision(error):
        return None
    failure = torchvision_import_failure()
    return InstallationError(mismatch_message(failure)) if failure is not None else None
