"""Run a spec's stages in order on this process (one of torchrun's ranks, or alone).

Rerunning the same command continues: a stage whose ``results.json`` exists and whose spec table
is unchanged is skipped; an interrupted stage resumes from its newest checkpoint. A stage whose
table changed (only possible with ``--force``), and every stage after one that ran, starts afresh;
its old directory is kept beside it as ``<stage>.replaced-<n>``, never deleted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from contrastive import distributed
from contrastive.distributed import local_batch_size
from contrastive.engine import NullReporter, Reporter, Session
from contrastive.errors import (
    ContrastiveError,
    DataError,
    FileSystemError,
    IndivisibleBatchError,
    Problem,
    RunDirectoryClash,
    RunError,
    SpecError,
)
from contrastive.hookspecs import Category
from contrastive.lock import FolderLock
from contrastive.metric_loggers import LoggerFactory, factory
from contrastive.rundir import (
    check_run_dir,
    prepare,
    resolved_text,
    spec_defaults,
    spec_difference,
    write_text_atomic,
)
from contrastive.spec.loader import LoadedSpec, to_dict
from contrastive.stages import distill, finetune, pretrain
from contrastive.stages.context import StageContext, loop_settings
from contrastive.stages.results import RESULTS

log = logging.getLogger(__name__)

STAGE_SPEC = "stage_spec.json"

StageRunner = Callable[[Any, StageContext], dict[str, Any]]


def stage_runners() -> dict[str, StageRunner]:
    """Stage name to the function that runs it, in execution order."""
    return {"pretrain": pretrain.run, "finetune": finetune.run, "distill": distill.run}


@attrs.frozen
class RunOutcome:
    """What a run did.

    Attributes:
        run_dir: The run directory.
        results: Stage name to its results (from this run or a finished earlier one).
        skipped: Stages that were already complete.
        is_main: Whether this process is rank 0 (the one that prints).
    """

    run_dir: Path
    results: dict[str, dict[str, Any]]
    skipped: tuple[str, ...]
    is_main: bool


def run(
    loaded: LoadedSpec,
    *,
    run_dir: Path | None = None,
    stages: Sequence[str] = (),
    force: bool = False,
    reporter: Reporter | None = None,
) -> RunOutcome:
    """Prepare the run directory and run the selected stages (all of the spec's by default)."""
    spec = loaded.spec
    selected = [s for s in spec.stages() if not stages or s in stages]
    info = distributed.setup(spec.runtime.device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    lock = None
    try:
        _set_threads(spec.runtime.threads, spec.runtime.num_workers)
        preflight(loaded, selected, info.world_size)
        if spec.runtime.deterministic:
            torch.use_deterministic_algorithms(True)
        directory, lock = _prepare_everywhere(loaded, run_dir, force, info.rank)
        results: dict[str, dict[str, Any]] = {}
        skipped: list[str] = []
        complete = complete_stages(loaded, directory, selected)
        upstream_ran = False
        for name in selected:
            stage_dir = directory / name
            table = to_dict(getattr(spec, name))
            defaults = spec_defaults(getattr(spec, name))
            if name in complete:
                results[name] = json.loads((stage_dir / RESULTS).read_text())
                skipped.append(name)
                log.info("%s: already complete in %s, skipped", name, stage_dir)
                continue
            if info.rank == 0:
                _set_aside_if_stale(stage_dir, table, defaults, fresh=upstream_ran)
                stage_dir.mkdir(parents=True, exist_ok=True)
                write_text_atomic(stage_dir / STAGE_SPEC, json.dumps(table, indent=2, sort_keys=True))
            distributed.barrier()
            session = Session(
                dist=info,
                runtime=loop_settings(spec.runtime),
                seed=spec.experiment.seed,
                directory=stage_dir,
                reporter=reporter if reporter is not None and info.rank == 0 else NullReporter(),
                loggers=_loggers(loaded, directory) if info.rank == 0 else None,
            )
            ctx = StageContext(
                session=session, registry=loaded.registry, run_dir=directory, source=str(loaded.path)
            )
            results[name] = stage_runners()[name](getattr(spec, name), ctx)
            upstream_ran = True
            distributed.barrier()
        return RunOutcome(directory, results, tuple(skipped), info.rank == 0)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        if lock is not None:
            lock.release()
        distributed.teardown()


def _set_threads(requested: int, num_workers: int) -> None:
    """Give this rank its intra-op thread budget (``runtime.threads``) before any work."""
    chosen = distributed.thread_budget(requested, num_workers)
    torch.set_num_threads(chosen)
    how = (
        "runtime.threads"
        if requested
        else (f"{distributed.usable_cores()} usable cores, {num_workers} data workers")
    )
    log.info("intra-op threads: %d (%s)", chosen, how)


def _loggers(loaded: LoadedSpec, directory: Path) -> LoggerFactory:
    """Rank 0's metric loggers: ``metrics.jsonl`` and the spec's ``[[runtime.loggers]]``."""
    spec_text = resolved_text(loaded)
    return factory(loaded.registry, loaded.spec.runtime.loggers, directory, to_dict(loaded.spec), spec_text)


def preflight(loaded: LoadedSpec, stages: Sequence[str], world_size: int) -> dict[str, Any]:
    """Errors that can be found before anything is written: batch sizes the ranks cannot share,
    and data sets that cannot be opened (missing shards, no index).

    Returns:
        The data sources it opened, by dotted key (``"pretrain.dataset"``, ...).
    """
    problems = []
    for name in stages:
        table = getattr(loaded.spec, name)
        try:
            local_batch_size(table.batch_size, world_size)
        except IndivisibleBatchError as exc:
            problems.append(Problem(str(loaded.path), f"{name}.batch_size", str(exc)))
    if problems:
        raise SpecError(problems)
    sources: dict[str, Any] = {}
    for name in stages:
        table = getattr(loaded.spec, name)
        for field in attrs.fields(type(table)):
            chosen = getattr(table, field.name)
            if field.metadata.get("category") == Category.DATASETS and chosen is not None:
                built = chosen.build(loaded.registry)
                sources[f"{name}.{field.name}"] = built
    num_workers = loaded.spec.runtime.num_workers
    for name in stages:
        check = getattr(sources.get(f"{name}.dataset"), "check_training", None)
        if check is not None:  # a source that can check its training batches without reading them
            try:
                check(getattr(loaded.spec, name).batch_size, world_size, num_workers)
            except DataError as exc:
                raise DataError(f"{name}.dataset: {exc}") from exc
    _check_class_names(loaded, sources)
    return sources


#: Splits whose labels index the same classifier (or kNN bank): their class names must agree.
_LABEL_GROUPS = (
    ("pretrain.monitor_train", "pretrain.monitor_test"),
    ("finetune.dataset", "finetune.eval_dataset", "distill.eval_dataset"),
)


def _check_class_names(loaded: LoadedSpec, sources: dict[str, Any]) -> None:
    """Stop when two labelled splits that share a classifier name their classes differently.

    Labels are class positions; a split whose class folders differ from the training set's
    (a folder missing, another added, other names) would be scored with misaligned labels.
    """
    problems = []
    distill = loaded.spec.distill
    for group in _LABEL_GROUPS:
        keys: tuple[str, ...] = group
        if distill is not None and distill.teacher:  # another run's teacher: its own classes
            keys = tuple(key for key in group if key != "distill.eval_dataset")
        named = [(key, tuple(getattr(sources[key], "classes", ()) or ())) for key in keys if key in sources]
        named = [(key, classes) for key, classes in named if classes]
        for key, classes in named[1:]:
            reference, expected = named[0]
            if classes != expected:
                problems.append(f"{key}: {_class_difference(expected, classes, reference)}")
    if problems:
        raise DataError(
            "labelled splits name their classes differently (labels would be misaligned): "
            + "; ".join(problems)
        )


def _class_difference(expected: tuple[str, ...], found: tuple[str, ...], reference: str) -> str:
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]

    def some(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    parts = [f"{len(found)} classes, {reference} has {len(expected)}"]
    if missing:
        parts.append(f"missing {some(missing)}")
    if extra:
        parts.append(f"not in {reference}: {some(extra)}")
    if not missing and not extra:
        parts.append(f"the same names in another order than {reference}")
    return "; ".join(parts)


def _prepare_everywhere(
    loaded: LoadedSpec, run_dir: Path | None, force: bool, rank: int
) -> tuple[Path, FolderLock | None]:
    """Rank 0 locks and prepares the directory; every rank learns the outcome (so none waits forever).

    Returns:
        The run directory, and on rank 0 the lock it holds on it (released by the caller).

    Raises:
        RunDirectoryClash: On every rank, when the directory holds a run of a different spec.
        RunLockedError: On rank 0 (RunError on the others), when another process runs there.
        RunError: On every rank, for any other problem rank 0 met (rank 0 raises it as it met it).
    """
    outcome: tuple[str, str, str] = ("", "", "")  # directory, error message, clashing difference
    lock: FolderLock | None = None
    error: ContrastiveError | None = None
    if rank == 0:
        try:
            directory = check_run_dir(loaded, run_dir, force=force)
            directory.mkdir(parents=True, exist_ok=True)
            lock = FolderLock(directory, "a run").acquire()
            outcome = (str(prepare(loaded, directory, force=force)), "", "")
        except RunDirectoryClash as exc:
            outcome, error = (exc.directory, str(exc), exc.difference), exc
        except ContrastiveError as exc:
            outcome, error = ("", str(exc), ""), exc
        except OSError as exc:
            error = FileSystemError(f"cannot prepare the run directory: {exc}")
            outcome = ("", str(error), "")
        if error is not None and lock is not None:
            lock.release()
            lock = None
    outcome = distributed.broadcast_object(outcome)
    if error is not None:
        raise error
    if outcome[2]:
        raise RunDirectoryClash(outcome[0], outcome[2])
    if outcome[1]:
        raise RunError(outcome[1])
    return Path(outcome[0]), lock


def complete_stages(loaded: LoadedSpec, directory: Path, selected: Sequence[str]) -> list[str]:
    """The selected stages a run in ``directory`` skips: each finished with its current table,
    up to the first stage that must run (every later stage runs again on its new input)."""
    complete = []
    for name in selected:
        table = getattr(loaded.spec, name)
        if not _is_complete(directory / name, to_dict(table), spec_defaults(table)):
            break
        complete.append(name)
    return complete


def _is_complete(stage_dir: Path, table: dict[str, Any], defaults: dict[str, Any]) -> bool:
    return (stage_dir / RESULTS).exists() and _same_table(_recorded_table(stage_dir), table, defaults)


def _same_table(recorded: Any, table: dict[str, Any], defaults: dict[str, Any]) -> bool:
    """Whether a stage's recorded table matches ``table`` (options newer than the record at default match)."""
    return isinstance(recorded, dict) and not spec_difference(recorded, table, defaults)


def _recorded_table(stage_dir: Path) -> Any:
    path = stage_dir / STAGE_SPEC
    return json.loads(path.read_text()) if path.exists() else None


def _set_aside_if_stale(
    stage_dir: Path, table: dict[str, Any], defaults: dict[str, Any], *, fresh: bool
) -> None:
    """Move a stage directory that belongs to another spec (or to replaced inputs) aside."""
    if not stage_dir.exists():
        return
    recorded = _recorded_table(stage_dir)
    same = _same_table(recorded, table, defaults)
    if recorded is None or (same and not fresh):
        return  # same table: an interrupted stage resumes from its checkpoints
    if same and not (stage_dir / RESULTS).exists():
        return
    number = 1
    while stage_dir.with_name(f"{stage_dir.name}.replaced-{number}").exists():
        number += 1
    target = stage_dir.with_name(f"{stage_dir.name}.replaced-{number}")
    stage_dir.rename(target)
    log.warning("%s was run with other inputs; kept it as %s and starting afresh", stage_dir, target)
