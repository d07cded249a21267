"""Crash-safe checkpoints: atomic writes, keep-last-k pruning, RNG capture that survives ``weights_only``.

Every file is written through :mod:`contrastive.atomic` (a temporary in the final directory,
fsynced, renamed over the final name), so a crash at any point leaves either the previous file or
the complete new one under the final name, never a partial one.

A checkpoint is a ``dict`` of plain containers (dict, list, tuple) holding tensors, numbers, strings,
booleans and ``None``: exactly what ``torch.load(..., weights_only=True)`` accepts. Python's and
NumPy's RNG states are not of that kind; :func:`capture_rng_state` converts them.
"""

from __future__ import annotations

import logging
import pickle
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastive import atomic
from contrastive.errors import RunError

__all__ = [
    "capture_rng_state",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "save_final",
]

logger = logging.getLogger(__name__)

#: Names written by :func:`save_checkpoint`: ``ckpt-<step, at least 8 digits>.pt``.
_CHECKPOINT_NAME = re.compile(r"^ckpt-(\d{8,})\.pt$")

_MIN_KEEP = 2
_NUMPY_MT_KEYS = 624


def checkpoint_path(directory: Path, step: int) -> Path:
    """Final path of the checkpoint taken after ``step`` optimizer steps.

    Args:
        directory: Checkpoint directory.
        step: Global optimizer step, ``>= 0``.

    Returns:
        ``<directory>/ckpt-<step:08d>.pt``.
    """
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    return Path(directory) / f"ckpt-{step:08d}.pt"


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Atomically write the checkpoint for ``step``, then prune to the last ``keep`` checkpoints.

    Pruning only deletes files named like checkpoints (``ckpt-<digits>.pt``) and stale temporaries of
    such files; the file just written is never deleted, even if checkpoints of higher steps exist.
    Only one process may write to a directory at a time.

    Args:
        directory: Checkpoint directory (created if missing).
        step: Global optimizer step, ``>= 0``.
        state: ``weights_only``-compatible state (see the module docstring).
        keep: Number of checkpoints to keep, ``>= 2`` so that a crash while writing one never leaves
            none behind.

    Returns:
        Path of the written checkpoint.

    Raises:
        ValueError: ``keep < 2`` or ``step < 0``.
        RunError: The file cannot be written (disk full, permissions, ...).
    """
    if keep < _MIN_KEEP:
        raise ValueError(f"keep must be >= {_MIN_KEEP}, got {keep}")
    path = checkpoint_path(directory, step)
    atomic.write_torch(path, state)
    _prune(Path(directory), keep=keep, protect=path)
    return path


def save_final(path: Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` (e.g. ``final.pt``); nothing is pruned.

    Args:
        path: Destination file; its directory is created if missing.
        state: ``weights_only``-compatible state.

    Returns:
        ``path``.

    Raises:
        RunError: The file cannot be written.
    """
    path = Path(path)
    atomic.write_torch(path, state)
    return path


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Checkpoints in ``directory`` by name, ascending by step (temporaries and other files ignored).

    Args:
        directory: Checkpoint directory; a missing directory has no checkpoints.

    Returns:
        ``(step, path)`` pairs sorted by step.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for entry in directory.iterdir():
        match = _CHECKPOINT_NAME.match(entry.name)
        if match is not None and entry.is_file():
            found.append((int(match.group(1)), entry))
    found.sort(key=lambda item: item[0])
    return found


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint of the highest step that looks complete, or None.

    Temporaries are ignored. A file under a checkpoint name that is not a readable archive (empty,
    truncated, overwritten by something else) is skipped with a warning; this is a cheap structural
    check, :func:`load_checkpoint` does the full one.

    Args:
        directory: Checkpoint directory; a missing directory has no checkpoints.

    Returns:
        Path of the latest complete checkpoint, or None when there is none.
    """
    for _, path in reversed(list_checkpoints(directory)):
        if _looks_complete(path):
            return path
        logger.warning("skipping unreadable checkpoint %s", path)
    return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU with ``weights_only=True``.

    Nothing in the file runs: a pickle that names a function or class to call (anything but
    tensors, numbers, strings and plain containers) is refused before any object is built.

    Args:
        path: Checkpoint file.

    Returns:
        The saved state dict.

    Raises:
        RunError: The file is missing, not a regular file, unreadable, corrupt, holds types
            ``weights_only`` refuses, or does not hold a dict. The message (one line) names the path.
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO would block the read forever
        raise RunError(f"cannot load checkpoint {path}: not a regular file")
    try:
        with warnings.catch_warnings():  # torch warns about pickles it did not write; refused below
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RunError(
            f"cannot load checkpoint {path}: refused by the safe loader ({_refusal(exc)}); a checkpoint "
            "may hold only tensors, numbers, strings and plain containers, never objects that run code"
        ) from exc
    except Exception as exc:  # any failure to read the file means the checkpoint is unusable
        raise RunError(f"cannot load checkpoint {path}: {type(exc).__name__}: {_one_line(str(exc))}") from exc
    if not isinstance(state, dict):
        raise RunError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


#: The part of torch's ``weights_only`` refusal that says what was refused (torch 2.6 to 2.9 put
#: it after this label, or in a paragraph of its own between the two below).
_REFUSAL = re.compile(r"WeightsUnpickler error:\s*(.*?)(?:\.?\s+Please use `|\n\s*\n|$)", re.DOTALL)
_BOILERPLATE = ("Weights only load failed", "Check the documentation")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _one_line(text: str) -> str:
    """``text`` without terminal colour codes, its whitespace (newlines included) collapsed."""
    return " ".join(_ANSI.sub("", text).split())


def _refusal(exc: pickle.UnpicklingError) -> str:
    """What ``torch.load(..., weights_only=True)`` refused, in one line, without torch's advice to
    load the file with ``weights_only=False`` (which would run the code)."""
    text = _ANSI.sub("", str(exc))
    found = _REFUSAL.search(text)
    if found is not None:
        detail = found.group(1)
    else:
        paragraphs = re.split(r"\n\s*\n", text)
        detail = " ".join(p for p in paragraphs if not p.strip().startswith(_BOILERPLATE))
    detail = _one_line(detail).rstrip(".")
    if not detail or "weights_only" in detail:
        return "objects other than tensors and plain containers"
    return detail


def capture_rng_state() -> dict[str, Any]:
    """Snapshot Python's, NumPy's (global, legacy) and torch's CPU and CUDA RNGs.

    Returns:
        A ``weights_only``-compatible dict: ``python`` (version, ``int64 [625]`` Mersenne Twister
        words plus position, cached Gaussian or None), ``numpy`` (``int64 [624]`` keys, position,
        cached Gaussian), ``torch`` (``uint8`` CPU state) and ``cuda`` (one ``uint8`` state per
        visible device; empty without CUDA).
    """
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    cuda = list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []
    return {
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": None if gauss_next is None else float(gauss_next),
        },
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore RNGs from :func:`capture_rng_state`'s dict, exactly.

    CUDA states are restored for the devices both the snapshot and this process have; a difference in
    device count is logged as a warning.

    Args:
        state: Output of :func:`capture_rng_state`, possibly after a save/load round trip.

    Raises:
        RunError: ``state`` is not such a dict.
    """
    try:
        python = state["python"]
        numpy_state = state["numpy"]
        torch_state = state["torch"]
        cuda_states = state["cuda"]
        python_tuple = (
            int(python["version"]),
            tuple(int(v) for v in python["state"].tolist()),
            python["gauss_next"],
        )
        keys = np.asarray(numpy_state["keys"].tolist(), dtype=np.uint32)
        if keys.shape != (_NUMPY_MT_KEYS,):
            raise ValueError(f"numpy keys have shape {keys.shape}, expected ({_NUMPY_MT_KEYS},)")
        numpy_tuple = (
            str(numpy_state["name"]),
            keys,
            int(numpy_state["pos"]),
            int(numpy_state["has_gauss"]),
            float(numpy_state["cached_gaussian"]),
        )
        random.setstate(python_tuple)
        np.random.set_state(numpy_tuple)
        torch.set_rng_state(torch_state)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise RunError(f"malformed RNG state in checkpoint: {type(exc).__name__}: {exc}") from exc
    _restore_cuda_rng(list(cuda_states))


def _restore_cuda_rng(states: list[torch.Tensor]) -> None:
    """Set each visible CUDA device's RNG from ``states`` (by device index)."""
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(states) != available and states:
        logger.warning(
            "checkpoint has CUDA RNG states for %d devices, this process sees %d", len(states), available
        )
    for index in range(min(len(states), available)):
        torch.cuda.set_rng_state(states[index], device=index)


def _remove_quietly(path: Path) -> None:
    """Delete ``path`` if it exists, ignoring errors."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        logger.warning("could not remove %s", path)


def _prune(directory: Path, *, keep: int, protect: Path) -> None:
    """Delete all but the ``keep`` highest-step checkpoints (never ``protect``) and stale temporaries."""
    checkpoints = [path for _, path in list_checkpoints(directory)]
    for path in checkpoints[: max(len(checkpoints) - keep, 0)]:
        if path != protect:
            logger.debug("pruning checkpoint %s", path)
            _remove_quietly(path)
    for entry in directory.iterdir():
        if _is_checkpoint_temporary(entry.name) and entry.is_file():
            logger.debug("removing stale temporary %s", entry)
            _remove_quietly(entry)


def _is_checkpoint_temporary(name: str) -> bool:
    """Whether ``name`` is an atomic-write temporary of a checkpoint file."""
    target = atomic.temporary_target(name)
    return target is not None and _CHECKPOINT_NAME.match(target) is not None


def _looks_complete(path: Path) -> bool:
    """Whether ``path`` is a readable zip archive (the format ``torch.save`` writes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return len(archive.namelist()) > 0
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
