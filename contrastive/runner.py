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
from contrastive.blame import blame_plugin
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
from contrastive.interfaces import check_installed, pending_writes
from contrastive.interrupts import Interrupts
from contrastive.metric_loggers import LoggerFactory, factory
from contrastive.rundir import STAGE_SPEC, RunDirectory, _components, resolved_text
from contrastive.spec.loader import LoadedSpec, to_dict
from contrastive.spec.structure import ComponentSpec
from contrastive.stages import distill, finetune, pretrain
from contrastive.stages.context import StageContext, loop_settings
from contrastive.stages.finetune import SCRATCH
from contrastive.stages.results import FINAL, RESULTS

log = logging.getLogger(__name__)

__all__ = ["STAGE_SPEC", "RunOutcome", "complete_stages", "preflight", "run", "stage_runners"]

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
    interrupts: Interrupts | None = None,
) -> RunOutcome:
    """Check everything, then run the selected stages (all of the spec's by default).

    Nothing is written into the run directory before every check passed and the first stage that
    must run has built its components (:class:`contrastive.rundir.RunDirectory`).

    Args:
        loaded: The spec.
        run_dir: The run directory (default ``runs/<experiment name>``).
        stages: The stages to run (default: all of the spec's).
        force: Reuse a directory that holds a run of a different spec.
        reporter: Rank 0's progress sink.
        interrupts: The command's SIGINT/SIGTERM record; the loop checkpoints at the step boundary
            after the first signal (:mod:`contrastive.interrupts`). None: signals are not deferred.
    """
    spec = loaded.spec
    selected = [s for s in spec.stages() if not stages or s in stages]
    info = distributed.setup(spec.runtime.device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    place: RunDirectory | None = None
    try:
        _set_threads(spec.runtime.threads, spec.runtime.num_workers)
        sources = preflight(loaded, selected, info.world_size)
        if spec.runtime.deterministic:
            torch.use_deterministic_algorithms(True)
        place = _check_everywhere(loaded, run_dir, force, info.rank, selected)
        directory = place.path
        results: dict[str, dict[str, Any]] = {}
        skipped: list[str] = []
        complete = place.complete_stages(selected)
        upstream_ran = False
        for name in selected:
            stage_dir = directory / name
            if name in complete:
                results[name] = json.loads((stage_dir / RESULTS).read_text())
                skipped.append(name)
                log.info("%s: already complete in %s, skipped", name, stage_dir)
                continue
            session = Session(
                dist=info,
                runtime=loop_settings(spec.runtime),
                seed=spec.experiment.seed,
                directory=stage_dir,
                reporter=reporter if reporter is not None and info.rank == 0 else NullReporter(),
                loggers=_loggers(loaded, directory) if info.rank == 0 else None,
                on_start=_opener(place, name, fresh=upstream_ran, rank=info.rank),
                interrupts=interrupts,
            )
            ctx = StageContext(
                session=session,
                registry=loaded.registry,
                run_dir=directory,
                source=str(loaded.path),
                prebuilt=prebuilt(loaded, sources),
            )
            results[name] = _blaming_plugins(loaded, stage_runners()[name], getattr(spec, name), ctx)
            upstream_ran = True
            distributed.barrier()
        if info.rank == 0:
            place.prepare()  # every stage was complete: the records still say what this command asked
        return RunOutcome(directory, results, tuple(skipped), info.rank == 0)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        if place is not None:
            place.release()
        distributed.teardown()


def _opener(place: RunDirectory, name: str, *, fresh: bool, rank: int) -> Callable[[], None]:
    """The session's ``on_start``: rank 0 opens the stage directory, every rank waits for it."""

    def start() -> None:
        if rank == 0:
            place.open_stage(name, fresh=fresh)
        distributed.barrier()

    return start


def _blaming_plugins(loaded: LoadedSpec, stage: StageRunner, table: Any, ctx: StageContext) -> dict[str, Any]:
    """Run ``stage``; an exception raised in a plugin's code becomes a PluginCodeError naming it."""
    try:
        return stage(table, ctx)
    except ContrastiveError:
        raise
    except Exception as exc:
        used = [loaded.registry.get(c.category, c.name) for _, c in _components(loaded.spec, "")]
        blamed = blame_plugin(exc, loaded.registry.plugins, used)
        if blamed is None:
            raise
        raise blamed from exc


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


def preflight(
    loaded: LoadedSpec,
    stages: Sequence[str],
    world_size: int,
    *,
    pending: list[str] | None = None,
) -> dict[str, Any]:
    """Errors that can be found before anything is written: batch sizes the ranks cannot share,
    data sets that cannot be opened (missing shards, no index), loggers missing a package.

    Args:
        loaded: The spec.
        stages: The selected stages.
        world_size: Ranks that will share each batch.
        pending: When given (``--dry-run``), a data set whose options say building it would write
            something first (:func:`contrastive.interfaces.pending_writes`, e.g. the digits shards)
            is not built; what it would write is appended here instead.

    Returns:
        The data sources it opened, by dotted key (``"pretrain.dataset"``, ...); the stages reuse
        them (:attr:`contrastive.stages.context.StageContext.prebuilt`).
    """
    problems = []
    for name in stages:
        table = getattr(loaded.spec, name)
        try:
            local_batch_size(table.batch_size, world_size)
        except IndivisibleBatchError as exc:
            problems.append(Problem(loaded.source_of(f"{name}.batch_size"), f"{name}.batch_size", str(exc)))
    if problems:
        raise SpecError(problems)
    sources: dict[str, Any] = {}
    for name in stages:
        table = getattr(loaded.spec, name)
        for field in attrs.fields(type(table)):
            chosen = getattr(table, field.name)
            if field.metadata.get("category") == Category.DATASETS and chosen is not None:
                key = f"{name}.{field.name}"
                would = pending_writes(chosen.options) if pending is not None else ""
                if would:
                    assert pending is not None
                    pending.append(f"{key}: {would}")
                    continue
                sources[key] = chosen.build(loaded.registry)
    num_workers = loaded.spec.runtime.num_workers
    for name in stages:
        check = getattr(sources.get(f"{name}.dataset"), "check_training", None)
        if check is not None:  # a source that can check its training batches without reading them
            try:
                check(getattr(loaded.spec, name).batch_size, world_size, num_workers)
            except DataError as exc:
                raise DataError(f"{name}.dataset: {exc}") from exc
    _check_class_names(loaded, sources)
    check_loggers(loaded)
    return sources


def check_loggers(loaded: LoadedSpec) -> None:
    """Stop when a chosen logger lacks a package it needs (its options' ``check_installed``).

    Raises:
        MissingExtraError: The package is not installed (``pip install 'contrastive[EXTRA]'``).
    """
    for chosen in loaded.spec.runtime.loggers:
        check_installed(chosen.options)


def prebuilt(loaded: LoadedSpec, sources: dict[str, Any]) -> list[tuple[ComponentSpec, Any]]:
    """The chosen data-set components (the spec's own objects) with the sources preflight built."""
    pairs = []
    for key, source in sources.items():
        stage, field = key.split(".", 1)
        pairs.append((getattr(getattr(loaded.spec, stage), field), source))
    return pairs


def check_inputs(loaded: LoadedSpec, selected: Sequence[str], directory: Path) -> None:
    """Stop when a stage's input file is missing: ``finetune.init``, ``distill.teacher``, or the
    previous stage's ``final.pt`` in the run directory when that stage is not selected.

    Raises:
        RunError: ``key: PATH does not exist``, naming what to do.
    """
    spec = loaded.spec
    wanted: list[tuple[str, Path, str]] = []
    if "finetune" in selected and spec.finetune is not None and spec.finetune.init != SCRATCH:
        if spec.finetune.init:
            wanted.append(("finetune.init", Path(spec.finetune.init), "give the path of a pretrain final.pt"))
        elif "pretrain" not in selected:
            wanted.append(("finetune.init", directory / "pretrain" / FINAL, "run the pretrain stage first"))
    if "distill" in selected and spec.distill is not None:
        if spec.distill.teacher:
            wanted.append(
                ("distill.teacher", Path(spec.distill.teacher), "give the path of a finetune final.pt")
            )
        elif "finetune" not in selected:
            wanted.append(("distill.teacher", directory / "finetune" / FINAL, "run the finetune stage first"))
    for key, path, hint in wanted:
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise RunError(f"{key}: {path} {what}; {hint}")


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


def _check_everywhere(
    loaded: LoadedSpec, run_dir: Path | None, force: bool, rank: int, selected: Sequence[str]
) -> RunDirectory:
    """Rank 0 checks and locks the directory and the stages' input files; every rank learns the
    outcome (so none waits forever). Nothing is written but the lock (and the folder, if missing).

    Returns:
        The run directory; on rank 0 it holds the lock (released by the caller).

    Raises:
        RunDirectoryClash: On every rank, when the directory holds a run of a different spec.
        RunLockedError: On rank 0 (RunError on the others), when another process runs there.
        RunError: On every rank, for any other problem rank 0 met (rank 0 raises it as it met it).
    """
    outcome: tuple[str, str, str] = ("", "", "")  # directory, error message, clashing difference
    place: RunDirectory | None = None
    error: ContrastiveError | None = None
    if rank == 0:
        try:
            place = RunDirectory.check(loaded, run_dir, force=force)
            check_inputs(loaded, selected, place.path)
            place.acquire()
            outcome = (str(place.path), "", "")
        except RunDirectoryClash as exc:
            outcome, error = (exc.directory, str(exc), exc.difference), exc
        except ContrastiveError as exc:
            outcome, error = ("", str(exc), ""), exc
        except OSError as exc:
            error = FileSystemError(f"cannot prepare the run directory: {exc}")
            outcome = ("", str(error), "")
    outcome = distributed.broadcast_object(outcome)
    if error is not None:
        raise error
    if outcome[2]:
        raise RunDirectoryClash(outcome[0], outcome[2])
    if outcome[1]:
        raise RunError(outcome[1])
    return place if place is not None else RunDirectory(loaded, Path(outcome[0]), force)


def complete_stages(loaded: LoadedSpec, directory: Path, selected: Sequence[str]) -> list[str]:
    """The selected stages a run in ``directory`` skips (:meth:`RunDirectory.complete_stages`)."""
    return RunDirectory(loaded, directory).complete_stages(selected)
