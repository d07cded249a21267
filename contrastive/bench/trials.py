"""Grids of the label-efficiency protocol: axes, the trials they make, and the choice on validation.

A grid belongs to one of three groups of arms (:data:`GROUPS`):

* ``pretrain``: ``pretrain.*`` keys; every pretraining trial is shared by the arms that start from
  it (linear, finetune_head1, finetune_encoder, distill);
* ``finetune``: ``finetune.*`` keys of the SimCLRv2 fine-tuning arms (finetune_head1,
  finetune_encoder; distill learns from the finetune_head1 trial chosen for its pretraining);
* ``supervised``: ``finetune.*`` keys of the supervised arm.

An axis is written ``KEY=V1,V2,...`` (the values are TOML values, as ``--set`` takes them, so
``finetune.schedule.name="cosine","constant"``); on the command line ``GROUP:KEY=...`` names the
group, which otherwise follows from the key (``pretrain.*`` or ``finetune.*``). Every combination
of a group's axes is a :class:`Trial`: an ordinary run whose folder is named by its settings.

Every arm's reported number is its test top-1 at the trial whose validation top-1, averaged over
the seeds, is highest (:func:`choose`); the test split never takes part in the choice.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import statistics
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs

from contrastive.errors import ContrastiveError
from contrastive.spec.toml_writer import dumps_value

#: The groups of arms a grid belongs to, in the order trials are combined.
GROUPS = ("pretrain", "finetune", "supervised")
#: The stage whose keys each group's axes set.
GROUP_STAGE = {"pretrain": "pretrain", "finetune": "finetune", "supervised": "finetune"}
#: Longest trial folder suffix spelled out; longer ones are shortened to a digest.
MAX_NAME = 80


class GridError(ContrastiveError, ValueError):
    """An axis that cannot be parsed or belongs to no group (the caller says where it came from),
    or trials that cannot be chosen between (exit code 2, as a spec error)."""

    exit_code = 2


@attrs.frozen
class Axis:
    """One grid axis: a spec key and the values it takes, in order.

    Attributes:
        key: Dotted spec key, e.g. ``finetune.optimizer.lr``.
        values: TOML values (at least one, all different).
    """

    key: str
    values: tuple[Any, ...]


@attrs.frozen
class Trial:
    """One combination of a group's axes.

    Attributes:
        name: Folder suffix and label, e.g. ``optimizer.lr=0.1_epochs=200`` ("" without a grid).
        overrides: The ``--set`` strings that make it.
        setting: Every axis key and the value it takes here.
    """

    name: str = ""
    overrides: tuple[str, ...] = ()
    setting: tuple[tuple[str, Any], ...] = ()

    def __add__(self, other: Trial) -> Trial:
        """The two trials applied one after the other (a pretraining and a fine-tuning trial)."""
        name = "+".join(part for part in (self.name, other.name) if part)
        return Trial(name, (*self.overrides, *other.overrides), (*self.setting, *other.setting))


#: The trial of a group without a grid: the spec's own settings.
NO_TRIAL = Trial()


def parse_axis(text: str, group: str | None = None) -> tuple[str, Axis]:
    """``[GROUP:]KEY=V1,V2,...`` to its group and axis.

    Args:
        text: The axis as written.
        group: The group it is given for (a spec's ``[bench.grid.<group>]``); None: from
            ``GROUP:`` or the key's stage.

    Raises:
        GridError: No ``=``, no values, repeated values, an unknown group, or a key the group
            does not set.
    """
    head, sep, raw = text.partition("=")
    if not sep or not head.strip() or not raw.strip():
        raise GridError(f"{text!r}: expected KEY=V1,V2,... e.g. finetune.optimizer.lr=0.05,0.1")
    named, colon, key = head.strip().rpartition(":")
    key = key.strip()
    if colon:
        if group is not None and named != group:
            raise GridError(f"{text!r}: an axis of the {group} grid cannot name the {named} group")
        group = named.strip()
    if group is None:
        group = key.split(".", 1)[0]
    if group not in GROUPS:
        raise GridError(
            f"{text!r}: a grid is one of {', '.join(GROUPS)} (pretrain.* and finetune.* keys name their "
            "group; supervised:finetune.KEY=... grids the supervised arm)"
        )
    stage = GROUP_STAGE[group]
    if not key.startswith(f"{stage}.") or key.count(".") < 1 or any(not p for p in key.split(".")):
        raise GridError(f"{text!r}: the {group} grid sets keys under {stage}.")
    if key == "finetune.dataset" or key.startswith("finetune.dataset."):
        raise GridError(f"{text!r}: the labelled subset is drawn by the protocol, not gridded")
    try:
        values = tuple(tomllib.loads(f"values = [{raw}]")["values"])
    except tomllib.TOMLDecodeError as exc:
        raise GridError(f"{text!r}: the values are no comma-separated TOML values ({exc})") from None
    if len(set(map(dumps_value, values))) != len(values):
        raise GridError(f"{text!r}: a value is repeated")
    return group, Axis(key=key, values=values)


def combine(axes: Sequence[Axis]) -> list[Axis]:
    """Axes with later ones replacing earlier ones on the same key (``--grid`` over the spec's)."""
    chosen: dict[str, Axis] = {}
    for axis in axes:
        chosen.pop(axis.key, None)
        chosen[axis.key] = axis
    return list(chosen.values())


def trials(axes: Sequence[Axis]) -> list[Trial]:
    """Every combination of ``axes`` (the first axis varies slowest); one empty trial without axes."""
    if not axes:
        return [Trial()]
    found = []
    for values in itertools.product(*(axis.values for axis in axes)):
        setting = tuple((axis.key, value) for axis, value in zip(axes, values, strict=True))
        overrides = tuple(f"{key}={dumps_value(value)}" for key, value in setting)
        found.append(Trial(name=trial_name(setting), overrides=overrides, setting=setting))
    return found


def trial_name(setting: Sequence[tuple[str, Any]]) -> str:
    """A folder-safe name of a setting: ``optimizer.lr=0.1_epochs=200`` (stage prefix dropped).

    Characters other than letters, digits and ``.=-`` become ``-``; a name longer than
    :data:`MAX_NAME` keeps its start and gets a digest of the whole setting.
    """
    parts = [f"{key.split('.', 1)[1]}={_plain(value)}" for key, value in setting]
    name = "_".join(re.sub(r"[^A-Za-z0-9.=\-]", "-", part) for part in parts)
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(repr(list(setting)).encode()).hexdigest()[:10]
        name = f"{name[: MAX_NAME - 11]}-{digest}"
    return name


def _plain(value: Any) -> str:
    text = dumps_value(value)
    return text[1:-1] if isinstance(value, str) else text


class Scored(Protocol):
    """What :func:`choose` reads of a measurement."""

    @property
    def arm(self) -> str: ...

    @property
    def trial(self) -> str: ...

    @property
    def seed(self) -> int: ...

    @property
    def top1(self) -> float: ...

    @property
    def val_top1(self) -> float | None: ...


def choose(rows: Sequence[Scored], order: Mapping[str, Sequence[str]] | None = None) -> dict[str, str]:
    """Each arm's chosen trial: the highest validation top-1 averaged over the seeds.

    ``rows`` are one label setting's measurements. Ties go to the trial first in ``order[arm]``
    (the grid's order), else to the first met. An arm with a single trial chooses it, with or
    without a validation score; test top-1 never takes part.

    Raises:
        GridError: An arm with several trials and a row without a validation score.
    """
    by_arm: dict[str, dict[str, list[float | None]]] = {}
    for row in rows:
        by_arm.setdefault(row.arm, {}).setdefault(row.trial, []).append(row.val_top1)
    chosen: dict[str, str] = {}
    for arm, scores in by_arm.items():
        names = list(scores)
        if order is not None and arm in order:
            names.sort(
                key=lambda name: list(order[arm]).index(name) if name in order[arm] else len(order[arm])
            )
        if len(names) == 1:
            chosen[arm] = names[0]
            continue
        if any(value is None for values in scores.values() for value in values):
            raise GridError(f"{arm}: {len(names)} trials and no validation score to choose between them")
        means = {name: statistics.fmean(v for v in scores[name] if v is not None) for name in names}
        chosen[arm] = max(names, key=lambda name: (means[name], -names.index(name)))
    return chosen
