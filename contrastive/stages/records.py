"""What a stage's ``final.pt`` holds, as typed records.

A ``final.pt`` is a plain dict (so ``torch.load(..., weights_only=True)`` reads it) that names the
components that built its model (name and options), so the next stage, ``contrastive export``,
``contrastive import`` or a user can rebuild the exact architecture without the spec:

* :class:`PretrainRecord` (``"kind": "pretrain"``): encoder and projection head
  (``ContrastiveModel``), what ``finetune.init`` starts from.
* :class:`ClassifierRecord` (``"kind": "classifier"``): encoder, the projection head cut after
  ``from_layer`` layers (or none) and a classifier (``Classifier``), what ``distill.teacher`` reads.

``to_state()`` gives the dict to save; ``from_state()`` checks a loaded dict (files written before
these classes existed have the same layout and load the same way).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch

from contrastive.errors import RunError
from contrastive.hookspecs import Category
from contrastive.spec.loader import to_dict
from contrastive.spec.structure import ComponentSpec

__all__ = ["ClassifierRecord", "ComponentRecord", "PretrainRecord", "read_record"]


@attrs.frozen
class ComponentRecord:
    """A component as chosen: its registered name and its options as plain values.

    Attributes:
        name: Registered name within ``category``.
        options: The options as plain values.
        category: Its category. Not saved: a record's place in ``final.pt`` (``encoder``,
            ``head``, ...) says it, so files keep the ``{name, options}`` layout.
    """

    name: str
    options: dict[str, Any]
    category: Category = attrs.field(kw_only=True, converter=Category)

    @classmethod
    def of(cls, chosen: ComponentSpec) -> ComponentRecord:
        """The record of a component a spec table chose."""
        return cls(name=chosen.name, options=to_dict(chosen.options), category=chosen.category)

    def to_state(self) -> dict[str, Any]:
        return {"name": self.name, "options": self.options}

    @classmethod
    def from_state(cls, value: Any, where: str, category: Category) -> ComponentRecord:
        if not (isinstance(value, Mapping) and isinstance(value.get("name"), str)):
            raise RunError(f"{where}: expected a component record {{name, options}}, found {value!r}")
        options = value.get("options", {})
        if not isinstance(options, Mapping):
            raise RunError(f"{where}.options: expected a table, found {options!r}")
        return cls(name=value["name"], options=dict(options), category=category)


def _state_dict(state: Mapping[str, Any], where: str) -> dict[str, torch.Tensor]:
    weights = state.get("state_dict", {})
    if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise RunError(f"{where}: state_dict is not a mapping of tensors")
    return dict(weights)


def _imported(state: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    imported = state.get("imported")
    if imported is not None and not isinstance(imported, Mapping):
        raise RunError(f"{where}: imported is not a table")
    return None if imported is None else dict(imported)


def _check_kind(state: Any, kind: str, where: str) -> Mapping[str, Any]:
    if not isinstance(state, Mapping):
        raise RunError(f"{where} holds a {type(state).__name__}, not a contrastive final.pt record")
    if state.get("kind") != kind:
        raise RunError(f"{where} holds a {state.get('kind')!r} model, expected a {kind!r} one")
    return state


def _int(state: Mapping[str, Any], key: str, where: str, minimum: int) -> int:
    value = state.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RunError(f"{where}: {key} must be an integer >= {minimum}, found {value!r}")
    return value


def _common(state: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The parts every record has: encoder, normalization, weights, import provenance."""
    return {
        "encoder": ComponentRecord.from_state(state.get("encoder"), f"{where}: encoder", Category.ENCODERS),
        "normalization": ComponentRecord.from_state(
            state.get("normalization"), f"{where}: normalization", Category.NORMALIZATIONS
        ),
        "state_dict": _state_dict(state, where),
        "imported": _imported(state, where),
    }


def _to_state(record: PretrainRecord | ClassifierRecord) -> dict[str, Any]:
    """The plain dict of a record: its kind, then its fields in declaration order (no ``imported``
    when there is none), component records as ``{name, options}``."""
    body: dict[str, Any] = {"kind": record.KIND}
    for field in attrs.fields(type(record)):
        value = getattr(record, field.name)
        if field.name == "imported" and value is None:
            continue
        body[field.name] = value.to_state() if isinstance(value, ComponentRecord) else value
    return body


@attrs.frozen
class PretrainRecord:
    """A pretrained encoder and projection head (``ContrastiveModel``) and their weights."""

    KIND: ClassVar[str] = "pretrain"

    encoder: ComponentRecord
    normalization: ComponentRecord
    head: ComponentRecord
    state_dict: dict[str, torch.Tensor] = attrs.field(factory=dict)
    imported: dict[str, Any] | None = None

    def to_state(self) -> dict[str, Any]:
        """The plain dict saved as ``final.pt``."""
        return _to_state(self)

    @classmethod
    def from_state(cls, state: Any, where: str) -> PretrainRecord:
        """Check and read a loaded ``final.pt``.

        Raises:
            RunError: It is not a pretraining record, or a part is missing or malformed.
        """
        state = _check_kind(state, cls.KIND, where)
        return cls(
            head=ComponentRecord.from_state(state.get("head"), f"{where}: head", Category.HEADS),
            **_common(state, where),
        )


@attrs.frozen
class ClassifierRecord:
    """A classifier (``Classifier``): encoder, head cut after ``from_layer`` layers, classifier."""

    KIND: ClassVar[str] = "classifier"

    encoder: ComponentRecord
    normalization: ComponentRecord
    head: ComponentRecord | None
    from_layer: int
    classifier: ComponentRecord
    num_classes: int
    state_dict: dict[str, torch.Tensor] = attrs.field(factory=dict)
    imported: dict[str, Any] | None = None

    def to_state(self) -> dict[str, Any]:
        """The plain dict saved as ``final.pt``."""
        return _to_state(self)

    @classmethod
    def from_state(cls, state: Any, where: str) -> ClassifierRecord:
        """Check and read a loaded ``final.pt``.

        Raises:
            RunError: It is not a classifier record, or a part is missing or malformed.
        """
        state = _check_kind(state, cls.KIND, where)
        head = state.get("head")
        return cls(
            head=None if head is None else ComponentRecord.from_state(head, f"{where}: head", Category.HEADS),
            from_layer=_int(state, "from_layer", where, 0),
            classifier=ComponentRecord.from_state(
                state.get("classifier"), f"{where}: classifier", Category.HEADS
            ),
            num_classes=_int(state, "num_classes", where, 1),
            **_common(state, where),
        )


def read_record(state: Any, where: str) -> PretrainRecord | ClassifierRecord:
    """The record a loaded ``final.pt`` holds, whichever kind it is.

    Raises:
        RunError: It is no contrastive record, or a malformed one.
    """
    kind = state.get("kind") if isinstance(state, Mapping) else None
    if kind == ClassifierRecord.KIND:
        return ClassifierRecord.from_state(state, where)
    if kind == PretrainRecord.KIND:
        return PretrainRecord.from_state(state, where)
    raise RunError(f"{where} holds no contrastive final.pt record (kind {kind!r})")
