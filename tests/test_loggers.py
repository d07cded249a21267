"""Metric loggers: ``[[runtime.loggers]]`` in a spec, ``jsonl`` always on and unchanged, and what
the tensorboard, mlflow and wandb sinks wrote, read back with each tool's own reader."""

from __future__ import annotations

import json
import struct
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from contrastive.errors import MissingExtraError, SpecError
from contrastive.metric_loggers import open_loggers
from contrastive.metrics_log import MetricsLog
from contrastive.registry import load_registry
from contrastive.rundir import plugins_record, resolved_text
from contrastive.runner import run
from contrastive.spec.loader import load
from contrastive.stages.context import loop_settings
from tests.tiny_specs import read_jsonl, tiny_pretrain_spec, write_spec

pytest_plugins = ["tests.stage_fixtures"]  # its fixtures: digits_data, digits_env

STEPS = 3


def _spec(tmp_path: Path, loggers: str) -> Path:
    text = tiny_pretrain_spec(name="logged", batch_size=32, max_steps=STEPS, checkpoint_every=10) + loggers
    return write_spec(tmp_path / "spec.toml", text)


def _run(tmp_path: Path, loggers: str) -> tuple[Path, list[dict[str, Any]]]:
    run_dir = tmp_path / "run"
    run(load(_spec(tmp_path, loggers)), run_dir=run_dir)
    return run_dir, read_jsonl(run_dir / "pretrain" / "metrics.jsonl")


# --- the spec --------------------------------------------------------------------------------------


def test_loggers_are_an_array_of_component_tables(tmp_path: Path) -> None:
    text = '[[runtime.loggers]]\nname = "tensorboard"\nimages = 2\n\n[[runtime.loggers]]\nname = "wandb"\n'
    loaded = load(_spec(tmp_path, text))
    chosen = loaded.spec.runtime.loggers
    assert [c.name for c in chosen] == ["tensorboard", "wandb"]
    assert chosen[0].options.images == 2 and chosen[1].options.mode == "offline"
    # the resolved spec keeps them and loads back to the same spec
    again = write_spec(tmp_path / "resolved.toml", resolved_text(loaded))
    assert tomllib.loads(again.read_text())["runtime"]["loggers"][0]["name"] == "tensorboard"
    assert load(again).spec == loaded.spec
    keys = {c["key"]: c["name"] for c in plugins_record(loaded)["components"]}
    assert keys["runtime.loggers.0"] == "tensorboard" and keys["runtime.loggers.1"] == "wandb"


def test_no_loggers_table_means_none_besides_jsonl(tmp_path: Path) -> None:
    assert load(_spec(tmp_path, "")).spec.runtime.loggers == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[runtime.loggers]]\nname = "tensorbord"\n', "runtime.loggers.0.name: unknown loggers component"),
        ('[[runtime.loggers]]\nname = "mlflow"\nimagez = 1\n', "runtime.loggers.0.imagez: unknown key"),
        ('[[runtime.loggers]]\nname = "wandb"\nmode = "cloud"\n', "runtime.loggers.0.mode:"),
        ("[[runtime.loggers]]\nimages = 1\n", "runtime.loggers.0.name: missing or not a string"),
        (
            '[[runtime.loggers]]\nname = "wandb"\n[[runtime.loggers]]\nname = "wandb"\n',
            "runtime.loggers: the loggers component 'wandb' is chosen more than once",
        ),
    ],
)
def test_bad_logger_tables_are_spec_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SpecError) as exc:
        load(_spec(tmp_path, text))
    assert message in str(exc.value)


def test_loggers_that_are_not_an_array_are_a_spec_error(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "")
    with pytest.raises(SpecError, match=r"runtime\.loggers: expected an array of tables"):
        load(spec, ['runtime.loggers="tensorboard"'])


def test_loggers_can_be_set_from_the_command_line(tmp_path: Path) -> None:
    loaded = load(_spec(tmp_path, ""), ['runtime.loggers=[{name = "tensorboard", images = 0}]'])
    assert [(c.name, c.options.images) for c in loaded.spec.runtime.loggers] == [("tensorboard", 0)]


# --- jsonl -----------------------------------------------------------------------------------------


def test_jsonl_logger_writes_what_metrics_log_wrote(tmp_path: Path) -> None:
    records = [{"step": 1, "epoch": 0, "loss": 1.5, "lr": 0.25}, {"step": 2, "epoch": 0, "knn_top1": 0.5}]
    MetricsLog(tmp_path / "a" / "metrics.jsonl", enabled=True).write(records[0])
    MetricsLog(tmp_path / "a" / "metrics.jsonl", enabled=True, after_step=1).write(records[1])
    (opened,) = open_loggers(
        load_registry(), (), directory=tmp_path, stage="b", start_step=0, config={}, spec_text="x"
    )
    opened.log_metrics(1, records[0])
    opened.log_images(1, "views", torch.rand(2, 3, 4, 4))
    opened.close()
    (resumed,) = open_loggers(load_registry(), (), directory=tmp_path, stage="b", start_step=1, config={})
    resumed.log_metrics(2, records[1])
    expected = "".join(json.dumps(r) + "\n" for r in records)
    assert (tmp_path / "b" / "metrics.jsonl").read_text() == expected
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == expected


def test_jsonl_is_written_even_when_the_builtin_loggers_are_disabled(tmp_path: Path) -> None:
    registry = load_registry(disabled=("builtin_loggers",))
    (opened,) = open_loggers(registry, (), directory=tmp_path, stage="s", start_step=0, config={})
    opened.log_metrics(1, {"step": 1, "loss": 0.5})
    assert (tmp_path / "s" / "metrics.jsonl").read_text() == '{"step": 1, "loss": 0.5}\n'


def test_missing_optional_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = load_registry()
    for name, module in (("tensorboard", "tensorboard"), ("mlflow", "mlflow"), ("wandb", "wandb")):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
        chosen = load(_spec(tmp_path, f'[[runtime.loggers]]\nname = "{name}"\n')).spec.runtime.loggers
        with pytest.raises(MissingExtraError) as exc:
            open_loggers(registry, chosen, directory=tmp_path, stage="pretrain", start_step=0, config={})
        assert f"pip install 'contrastive[{name}]'" in str(exc.value)
        assert exc.value.extra == name
    # the always-on jsonl logger opened before the failing one was closed, and wrote nothing
    assert not (tmp_path / "pretrain" / "metrics.jsonl").exists()


def _wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records (W&B's own ``wandb_internal_pb2.Record``) of an offline ``.wandb`` file.

    The file is W&B's transaction log: a 7-byte header (``:W&B``, magic, version), then LevelDB
    log blocks of 32 KiB whose chunks (CRC, length, type: full, first, middle, last) carry one
    serialised record each. wandb 0.31 reads it in its Go core only, so the framing is read here.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # the tail of a block too short for a chunk header is padding
            position += left
            continue
        _, length, kind = struct.unpack_from("<IHB", data, position)
        if kind == 0 and length == 0:  # zero padding
            position += left
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


# --- the sinks, read back with their own readers ----------------------------------------------------


@pytest.mark.slow
def test_tensorboard_events_read_back_with_event_accumulator(digits_env: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, metrics = _run(tmp_path, '[[runtime.loggers]]\nname = "tensorboard"\nimages = 4\n')
    events = EventAccumulator(str(run_dir / "tensorboard" / "pretrain"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss", "lr", "epoch", "images_per_second", "contrastive_accuracy"} <= set(tags["scalars"])
    for key in ("loss", "lr"):
        read = events.Scalars(key)
        assert [e.step for e in read] == [m["step"] for m in metrics]
        assert [e.value for e in read] == pytest.approx([m[key] for m in metrics], rel=1e-6)
    (views,) = events.Images("views")
    assert views.step == 0 and (views.width, views.height) == (4 * 8, 8)  # a grid of 4 views
    texts = [t for t in tags["tensors"] if t.startswith("spec")]
    (spec_event,) = events.Tensors(texts[0])
    text = spec_event.tensor_proto.string_val[0].decode()
    assert 'name = "logged"' in text and "[pretrain.encoder]" in text


@pytest.mark.slow
def test_mlflow_run_reads_back_with_the_mlflow_client(digits_env: Path, tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    run_dir, metrics = _run(tmp_path, '[[runtime.loggers]]\nname = "mlflow"\nimages = 2\n')
    from contrastive_plugins.loggers import tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri(run_dir))
    experiment = client.get_experiment_by_name("logged")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "pretrain" and found.info.status == "FINISHED"
    params = found.data.params
    assert params["pretrain.batch_size"] == "32" and params["pretrain.encoder.name"] == "resnet"
    assert params["experiment.seed"] == "0" and params["runtime.device"] == "cpu"
    for key in ("loss", "lr"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, key))
        assert [step for step, _ in history] == [m["step"] for m in metrics]
        assert [value for _, value in history] == pytest.approx([m[key] for m in metrics], rel=1e-9)
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"spec.toml", "views"} <= artifacts
    views = {a.path for a in client.list_artifacts(found.info.run_id, "views")}
    assert views == {"views/step0_0.png", "views/step0_1.png"}
    spec_file = Path(client.download_artifacts(found.info.run_id, "spec.toml", str(tmp_path)))
    assert tomllib.loads(spec_file.read_text())["experiment"]["name"] == "logged"


@pytest.mark.slow
def test_wandb_offline_run_reads_back_from_its_files(
    digits_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir, metrics = _run(tmp_path, '[[runtime.loggers]]\nname = "wandb"\nimages = 2\n')
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (records_file,) = offline.glob("run-*.wandb")
    history: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    run_name = ""
    for record in _wandb_records(records_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":  # keys as W&B nests them: views/_type, views/count, ...
            items = record.history.item
            history.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}
            )
        elif kind == "run":
            run_name = record.run.display_name
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    assert run_name == "pretrain"
    assert config["experiment"]["name"] == "logged" and config["pretrain"]["batch_size"] == 32
    logged = [h for h in history if "loss" in h]
    assert [h["_step"] for h in logged] == [m["step"] for m in metrics]
    for key in ("loss", "lr"):
        assert [h[key] for h in logged] == pytest.approx([m[key] for m in metrics], rel=1e-9)
    (views,) = [h for h in history if "views/_type" in h]
    assert views["views/_type"] == "images/separated" and views["views/count"] == 2
    assert len(list((offline / "files" / "media" / "images").glob("views_0_*.png"))) == 2
    assert (offline / "files" / "spec.toml").read_text().startswith("# Resolved by contrastive")


def test_only_rank_zero_opens_loggers(tmp_path: Path) -> None:
    from contrastive.distributed import DistInfo
    from contrastive.engine import Session, _open_loggers
    from contrastive.spec.schema import RuntimeSpec

    called: list[tuple[str, int]] = []

    def factory(stage: str, step: int) -> list[Any]:
        called.append((stage, step))
        return []

    for rank in (1, 0):
        info = DistInfo(
            rank=rank, local_rank=rank, world_size=2, device=torch.device("cpu"), is_distributed=True
        )
        session = Session(
            dist=info, runtime=loop_settings(RuntimeSpec()), seed=0, directory=tmp_path, loggers=factory
        )
        assert _open_loggers("pretrain", session, 5) == []
    assert called == [("pretrain", 5)]
