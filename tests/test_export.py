"""``contrastive export``: every format of a stage's encoder and classifier read back and compared
with the PyTorch model it came from, its metadata read back, and the errors (tiny digits run)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from contrastive.cli import EXPORT_FORMATS, cli
from contrastive.data.scan import read_groups
from contrastive.deploy import Deployable, load_stage, rebuild_network, record_from_json
from contrastive.errors import PluginError, RunError
from contrastive.export import (
    FORMATS,
    ONNX_TOLERANCE,
    export_model,
    load_safetensors,
    load_torchscript,
    read_onnx_metadata,
    read_safetensors_metadata,
)
from contrastive.interfaces import augmentation_preprocessing
from contrastive.registry import load_registry
from contrastive.stages.records import ClassifierRecord

#: Fixtures: digits_data, digits_env; tiny_run, digits_test (one tiny run for the session).
pytest_plugins = ["tests.stage_fixtures", "tests.deploy_fixtures"]

DIGITS = tuple(str(i) for i in range(10))


def real_views(shards: Path, augmentation: object, count: int = 12) -> torch.Tensor:
    """The evaluation views ``uint8 [count, 3, S, S]`` of the first digits test images."""
    from contrastive.data.decode import decode

    groups = read_groups(sorted(shards.glob("*.tar"))[0], want=lambda ext: True)[:count]
    views = [augmentation.per_sample(decode(g.data[g.image_key]))[0] for g in groups]  # type: ignore[attr-defined]
    return torch.stack(views)


def random_views(size: int, batch: int, seed: int = 7) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)


@pytest.fixture
def stage(tiny_run: Path, digits_env: Path) -> Path:
    return tiny_run / "finetune"


@pytest.mark.parametrize("what", ["classifier", "encoder"])
def test_every_format_round_trips_to_the_same_outputs(
    stage: Path,
    digits_test: Path,
    tmp_path: Path,
    what: str,
) -> None:
    registry = load_registry()
    reference = load_stage(stage, what, registry)  # type: ignore[arg-type]
    model = reference.deployable()
    size = reference.metadata.input_size
    inputs = torch.cat([real_views(digits_test, reference.augmentation), random_views(size, 5)])
    with torch.no_grad():
        expected = model(inputs)
    assert expected.shape == (17, 10 if what == "classifier" else expected.shape[1])

    # state_dict: the weights alone, strictly loadable into the rebuilt architecture.
    out = tmp_path / f"{what}.pt"
    export_model(stage, out, format="state_dict", what=what, registry=registry)
    network = rebuild_network(
        ClassifierRecord.from_state(torch.load(stage / "final.pt"), "x"), what, registry, "x"
    )  # type: ignore[arg-type]
    network.load_state_dict(torch.load(out, weights_only=True))
    with torch.no_grad():
        assert torch.equal(Deployable(network, reference.augmentation).eval()(inputs), expected)

    # safetensors: weights and metadata; contrastive rebuilds the same model from it alone.
    out = tmp_path / f"{what}.safetensors"
    export_model(stage, out, format="safetensors", what=what, registry=registry)
    loaded, metadata = load_safetensors(out, registry)
    with torch.no_grad():
        assert torch.equal(Deployable(loaded, reference.augmentation).eval()(inputs), expected)
    assert metadata == read_safetensors_metadata(out) == reference.metadata
    assert metadata.input_size == 8 and metadata.what == what
    assert metadata.class_names == (DIGITS if what == "classifier" else ())
    spec_file = stage.parent / "spec.resolved.toml"
    assert metadata.spec_digest == hashlib.sha256(spec_file.read_bytes()).hexdigest()
    assert record_from_json(metadata.record, "x").encoder.name == "resnet"
    assert metadata.augmentation["name"] == "center_crop"
    assert metadata.preprocessing is not None and metadata.preprocessing["size"] == 8

    # TorchScript: plain torch.jit.load runs it on uint8 views; metadata in the extra files.
    out = tmp_path / f"{what}.torchscript"
    export_model(stage, out, format="torchscript", what=what, registry=registry)
    extra = {"class_names": "", "preprocessing": "", "spec_digest": ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    for batch in (inputs[:1], inputs):
        with torch.no_grad():
            torch.testing.assert_close(scripted(batch), expected[: len(batch)], rtol=0, atol=1e-6)
    assert json.loads(extra["class_names"]) == list(metadata.class_names)
    assert json.loads(extra["preprocessing"])["augmentation"] == metadata.augmentation
    assert load_torchscript(out)[1] == metadata

    # ONNX: onnxruntime on batches of 1 and 5 (dynamic axis), real and random images.
    import onnxruntime

    out = tmp_path / f"{what}.onnx"
    result = export_model(stage, out, format="onnx", what=what, registry=registry)
    assert result.max_difference is not None
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    scale = max(1.0, float(expected.abs().max()))
    for rows in (slice(0, 1), slice(0, 5), slice(12, 17)):  # real x1, real x5, random x5
        (got,) = session.run(None, {"images": inputs[rows].numpy()})
        assert got.shape == tuple(expected[rows].shape)
        assert float(np.abs(got - expected[rows].numpy()).max()) <= ONNX_TOLERANCE * scale
    assert read_onnx_metadata(out.read_bytes(), str(out)) == metadata
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["class_names"]) == list(metadata.class_names)
    assert json.loads(props["preprocessing"])["description"]["size"] == 8


def test_the_default_export_is_still_the_encoder_state_dict(stage: Path, tmp_path: Path) -> None:
    out = tmp_path / "encoder.pt"
    result = CliRunner().invoke(cli, ["export", str(stage), str(out)])
    assert result.exit_code == 0, result.output
    exported = torch.load(out, weights_only=True)
    final = torch.load(stage / "final.pt", weights_only=True)["state_dict"]
    assert set(exported) == {k.removeprefix("encoder.") for k in final if k.startswith("encoder.")}


def test_a_pretraining_stage_has_no_classifier(tiny_run: Path, digits_env: Path, tmp_path: Path) -> None:
    for fmt in FORMATS:
        out = tmp_path / f"c.{fmt}"
        result = CliRunner().invoke(
            cli, ["export", str(tiny_run / "pretrain"), str(out), "--format", fmt, "--what", "classifier"]
        )
        assert result.exit_code == RunError.exit_code, result.output
        assert "pretraining stage" in result.output and "--what encoder" in result.output
        assert not out.exists()
    # its encoder exports in every format
    out = tmp_path / "encoder.onnx"
    assert (
        CliRunner()
        .invoke(cli, ["export", str(tiny_run / "pretrain"), str(out), "--format", "onnx"])
        .exit_code
        == 0
    )
    assert read_onnx_metadata(out.read_bytes(), str(out)).what == "encoder"


def test_an_existing_out_is_never_replaced_without_force(stage: Path, tmp_path: Path) -> None:
    for fmt in FORMATS:
        out = tmp_path / f"mine.{fmt}"
        out.write_bytes(b"a user's file")
        result = CliRunner().invoke(cli, ["export", str(stage), str(out), "--format", fmt])
        assert result.exit_code == RunError.exit_code, result.output
        assert "already exists" in result.output and "--force" in result.output
        assert out.read_bytes() == b"a user's file"
        result = CliRunner().invoke(cli, ["export", str(stage), str(out), "--format", fmt, "--force"])
        assert result.exit_code == 0, result.output
        assert out.read_bytes() != b"a user's file"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporaries left


def test_unknown_format_and_part(stage: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["export", str(stage), str(tmp_path / "x"), "--format", "tflite"])
    assert result.exit_code == 2 and "tflite" in result.output
    result = CliRunner().invoke(cli, ["export", str(stage), str(tmp_path / "x"), "--what", "head"])
    assert result.exit_code == 2 and "head" in result.output
    with pytest.raises(RunError, match="unknown format"):
        export_model(stage, tmp_path / "x", format="tflite")
    assert not (tmp_path / "x").exists()


def test_onnx_without_the_extra_names_it(
    stage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    out = tmp_path / "c.onnx"
    result = CliRunner().invoke(
        cli, ["export", str(stage), str(out), "--format", "onnx", "--what", "classifier"]
    )
    assert result.exit_code == PluginError.exit_code, result.output
    assert "pip install 'contrastive[onnx]'" in result.output
    assert not out.exists()


def test_the_command_line_offers_every_format() -> None:
    assert EXPORT_FORMATS == FORMATS


def test_the_preprocessing_capability_must_give_json() -> None:
    class Good:
        def preprocessing(self) -> dict[str, object]:
            return {"size": 4, "mean": (0.5, 0.5, 0.5)}

    class Bad:
        def preprocessing(self) -> object:
            return {"size": object()}

    assert augmentation_preprocessing(Good()) == {"size": 4, "mean": [0.5, 0.5, 0.5]}
    assert augmentation_preprocessing(object()) is None
    with pytest.raises(PluginError, match="preprocessing"):
        augmentation_preprocessing(Bad())
