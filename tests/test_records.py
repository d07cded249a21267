"""What final.pt holds: typed records saved as plain dicts that weights_only loading reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contrastive.checkpoint import load_checkpoint, save_final
from contrastive.errors import RunError
from contrastive.hookspecs import Category
from contrastive.stages.records import ClassifierRecord, ComponentRecord, PretrainRecord, read_record
from contrastive.stages.results import load_final

_ENCODER = ComponentRecord("resnet", {"depth": 18, "width_multiplier": 1}, category=Category.ENCODERS)
_NORM = ComponentRecord("global_bn", {"momentum": 0.9}, category=Category.NORMALIZATIONS)
_HEAD = ComponentRecord("projection_mlp", {"num_layers": 3}, category=Category.HEADS)


def _classifier(**changes: object) -> ClassifierRecord:
    values: dict[str, object] = {
        "encoder": _ENCODER,
        "normalization": _NORM,
        "head": _HEAD,
        "from_layer": 1,
        "classifier": ComponentRecord("linear", {"bias": True}, category=Category.HEADS),
        "num_classes": 10,
        "state_dict": {"encoder.w": torch.ones(2)},
    }
    values.update(changes)
    return ClassifierRecord(**values)  # type: ignore[arg-type]


def test_records_round_trip_through_a_weights_only_file(tmp_path: Path) -> None:
    pretrain = PretrainRecord(_ENCODER, _NORM, _HEAD, state_dict={"head.w": torch.zeros(3)})
    classifier = _classifier(imported={"architecture": {"name": "r50_1x"}})
    for name, rec in (("p.pt", pretrain), ("c.pt", classifier)):
        path = save_final(tmp_path / name, rec.to_state())
        back = read_record(torch.load(path, weights_only=True), name)
        assert type(back) is type(rec)
        assert back.to_state().keys() == rec.to_state().keys()
        assert all(torch.equal(back.state_dict[k], v) for k, v in rec.state_dict.items())
    assert load_final(tmp_path / "c.pt", ClassifierRecord).imported == {"architecture": {"name": "r50_1x"}}


def test_a_file_written_before_the_records_still_loads(tmp_path: Path) -> None:
    old = {
        "kind": "classifier",
        "encoder": {"name": "resnet", "options": {"depth": 18}},
        "normalization": {"name": "global_bn", "options": {}},
        "head": None,
        "from_layer": 0,
        "classifier": {"name": "linear", "options": {"bias": True}},
        "num_classes": 10,
        "state_dict": {"classifier.weight": torch.zeros(10, 4)},
    }
    path = save_final(tmp_path / "final.pt", old)
    rec = load_final(path, ClassifierRecord)
    assert rec.head is None and rec.num_classes == 10 and rec.encoder.options == {"depth": 18}
    assert list(rec.to_state()) == list(old)  # the same layout, key for key


def test_the_wrong_kind_or_a_malformed_record_is_a_run_error(tmp_path: Path) -> None:
    path = save_final(tmp_path / "final.pt", PretrainRecord(_ENCODER, _NORM, _HEAD).to_state())
    with pytest.raises(RunError, match="holds a 'pretrain' model, expected a 'classifier' one"):
        load_final(path, ClassifierRecord)
    broken = _classifier().to_state() | {"num_classes": "ten"}
    with pytest.raises(RunError, match="num_classes must be an integer"):
        ClassifierRecord.from_state(broken, "final.pt")
    with pytest.raises(RunError, match="encoder: expected a component record"):
        read_record(_classifier().to_state() | {"encoder": "resnet"}, "final.pt")
    with pytest.raises(RunError, match=r"no contrastive final\.pt record"):
        read_record(load_checkpoint(save_final(tmp_path / "x.pt", {"w": torch.ones(1)})), "x.pt")
    with pytest.raises(RunError, match="does not exist"):
        load_final(tmp_path / "missing.pt", PretrainRecord)
