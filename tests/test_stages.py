"""The stages and the runner end to end: outputs of every stage, skipping finished stages, export,
and the errors that must stop a run before it trains (tiny sizes: seconds on a CPU)."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from contrastive.cli import cli
from contrastive.distributed import DistInfo
from contrastive.engine import NullReporter, Session
from contrastive.errors import DataError, RunError, SpecError
from contrastive.registry import load_registry
from contrastive.runner import preflight, run
from contrastive.spec.loader import load
from contrastive.spec.schema import RuntimeSpec
from contrastive.spec.toml_writer import dumps
from contrastive.stages.context import StageContext, loop_settings, per_rank_batch
from tests.tiny_specs import (
    DIGITS_SPEC,
    TINY_DIGITS_OVERRIDES,
    files_snapshot,
    load_state_dict,
    read_jsonl,
    tiny_pretrain_spec,
    write_spec,
)

pytest_plugins = ["tests.stage_fixtures"]  # its fixtures: digits_data, digits_env

STEPS = {"pretrain": 3, "finetune": 2, "distill": 2}
RESULT_KEYS = {"stage", "steps", "wall_seconds", "images_per_second", "labelled_images"}
METRIC_KEYS = {"step", "epoch", "loss", "lr", "images_per_second"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _stage_files(run_dir: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of the stage directories with its modification time and content."""
    found = {}
    for stage in STEPS:
        for path in sorted((run_dir / stage).rglob("*")):
            if path.is_file():
                found[str(path.relative_to(run_dir))] = (path.stat().st_mtime_ns, path.read_bytes())
    return found


def _check_stage_outputs(run_dir: Path, stage: str, results: dict[str, object]) -> None:
    directory = run_dir / stage
    written = json.loads((directory / "results.json").read_text())
    assert written == results
    assert set(written) >= RESULT_KEYS
    assert written["stage"] == stage and written["steps"] == STEPS[stage]
    assert isinstance(written["wall_seconds"], float) and written["wall_seconds"] > 0
    assert isinstance(written["images_per_second"], float) and written["images_per_second"] > 0

    metrics = read_jsonl(directory / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, STEPS[stage] + 1))  # log_every=1
    per_epoch = {"pretrain": 1297 // 32, "finetune": 1, "distill": 1297 // 32}[stage]
    assert [m["epoch"] for m in metrics] == [(m["step"] - 1) // per_epoch for m in metrics]
    for record in metrics:
        assert set(record) >= METRIC_KEYS
        assert math.isfinite(record["loss"]) and record["lr"] >= 0
        assert record["images_per_second"] > 0

    final = torch.load(directory / "final.pt", map_location="cpu", weights_only=True)
    assert final["kind"] == ("pretrain" if stage == "pretrain" else "classifier")
    assert all(torch.isfinite(v).all() for v in final["state_dict"].values() if v.is_floating_point())
    assert (directory / "curves.png").read_bytes().startswith(PNG_MAGIC)
    assert (directory / "checkpoints").is_dir()


def test_digits_spec_runs_every_stage_and_a_rerun_skips_them(digits_env: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    loaded = load(DIGITS_SPEC, TINY_DIGITS_OVERRIDES)
    outcome = run(loaded, run_dir=run_dir)

    assert outcome.run_dir == run_dir and outcome.is_main and outcome.skipped == ()
    assert list(outcome.results) == ["pretrain", "finetune", "distill"]
    resolved = tomllib.loads((run_dir / "spec.resolved.toml").read_text())
    assert resolved["pretrain"]["max_steps"] == 3 and resolved["runtime"]["keep_checkpoints"] == 2
    used = {c["key"]: c["name"] for c in json.loads((run_dir / "plugins.json").read_text())["components"]}
    assert used["pretrain.loss"] == "nt_xent" and used["distill.loss"] == "distillation"
    for stage, results in outcome.results.items():
        _check_stage_outputs(run_dir, stage, results)

    results = outcome.results
    assert results["pretrain"]["labelled_images"] == 0
    assert results["finetune"]["labelled_images"] == 10  # 1 label per class, 10 classes
    assert results["distill"]["labelled_images"] == 0  # the distillation loss uses no labels
    for stage in ("finetune", "distill"):
        assert 0.0 <= results[stage]["top1"] <= results[stage]["top5"] <= 1.0
        assert results[stage]["eval_samples"] == 20  # 2 test images per class
    checkpoints = sorted(p.name for p in (run_dir / "pretrain" / "checkpoints").glob("ckpt-*.pt"))
    assert checkpoints == ["ckpt-00000002.pt", "ckpt-00000003.pt"]  # every 2 steps and the last
    # Fine-tuning starts from the pretrained encoder and the first head layer.
    finetuned = load_state_dict(run_dir / "finetune" / "final.pt")
    assert any(k.startswith("head.") for k in finetuned) and any(
        k.startswith("classifier.") for k in finetuned
    )

    before = _stage_files(run_dir)
    again = run(load(DIGITS_SPEC, TINY_DIGITS_OVERRIDES), run_dir=run_dir)
    assert again.skipped == ("pretrain", "finetune", "distill")
    assert again.results == outcome.results
    assert _stage_files(run_dir) == before  # no new checkpoint, metrics line or results

    _check_export(run_dir)


def _check_export(run_dir: Path) -> None:
    """``contrastive export RUN/STAGE out.pt`` writes the encoder's state_dict, loadable as such."""
    registry = load_registry()
    for stage in ("pretrain", "finetune"):
        out = run_dir / f"{stage}-encoder.pt"
        result = CliRunner().invoke(cli, ["export", str(run_dir / stage), str(out)])
        assert result.exit_code == 0, result.output
        assert "torchvision" not in result.output  # a CIFAR-stem, 4-filter ResNet is not torchvision's
        exported = torch.load(out, map_location="cpu", weights_only=True)
        norm = registry.build("normalizations", "global_bn")
        encoder = registry.build(
            "encoders", "resnet", depth=18, cifar_stem=True, base_width=4, norm_layer=norm
        )
        assert set(exported) == set(encoder.state_dict())
        encoder.load_state_dict(exported)  # strict
        final = load_state_dict(run_dir / stage / "final.pt")
        for key, value in exported.items():
            assert torch.equal(value, final[f"encoder.{key}"])


def test_knn_monitor_reports_every_monitor_epoch(digits_env: Path, tmp_path: Path) -> None:
    overrides = [
        *TINY_DIGITS_OVERRIDES,
        "pretrain.batch_size=256",  # 5 steps an epoch over the 1,297 training images
        "pretrain.max_steps=10",
        "pretrain.monitor_every=1",
        "pretrain.monitor_test.labels_per_class=2",
    ]
    outcome = run(load(DIGITS_SPEC, overrides), run_dir=tmp_path / "run", stages=("pretrain",))
    metrics = read_jsonl(tmp_path / "run" / "pretrain" / "metrics.jsonl")
    monitored = [(m["step"], m["knn_top1"]) for m in metrics if "knn_top1" in m]
    assert [step for step, _ in monitored] == [5, 10]
    assert all(0.0 <= accuracy <= 1.0 for _, accuracy in monitored)
    assert outcome.results["pretrain"]["knn_top1"] == monitored[-1][1]


def test_export_of_a_resnet18_loads_into_torchvision(digits_env: Path, tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    run_dir = tmp_path / "run"
    overrides = (
        *TINY_DIGITS_OVERRIDES,
        "pretrain.max_steps=1",
        "pretrain.batch_size=16",
        "pretrain.encoder.cifar_stem=false",
        "pretrain.encoder.base_width=64",
        "pretrain.augmentation.size=16",
    )
    run(load(DIGITS_SPEC, overrides), run_dir=run_dir, stages=["pretrain"])
    assert not (run_dir / "finetune").exists()
    out = tmp_path / "resnet18.pt"
    result = CliRunner().invoke(cli, ["export", str(run_dir / "pretrain"), str(out)])
    assert result.exit_code == 0, result.output
    assert "torchvision.models.resnet18" in result.output

    exported = torch.load(out, map_location="cpu", weights_only=True)
    reference = torchvision.models.resnet18(weights=None)
    missing, unexpected = reference.load_state_dict(exported, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and unexpected == []
    # Same weights, same function: torchvision's network computes our encoder's features.
    registry = load_registry()
    ours = registry.build(
        "encoders",
        "resnet",
        depth=18,
        cifar_stem=False,
        base_width=64,
        norm_layer=registry.build("normalizations", "global_bn"),
    )
    ours.load_state_dict(exported)
    reference.fc = torch.nn.Identity()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(images), reference.eval()(images), rtol=1e-4, atol=1e-5)


def test_invalid_spec_writes_nothing(digits_env: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [
        "run",
        str(DIGITS_SPEC),
        "--run-dir",
        str(run_dir),
        *[f"--set={o}" for o in TINY_DIGITS_OVERRIDES],
    ]
    result = CliRunner().invoke(
        cli, [*args, "--set", "pretrain.batch_size=0", "--set", "pretrain.loss.name=nope"]
    )
    assert result.exit_code != 0
    assert "pretrain.batch_size" in result.output and "nope" in result.output  # every problem at once
    with pytest.raises(SpecError):
        load(DIGITS_SPEC, (*TINY_DIGITS_OVERRIDES, "pretrain.batch_size=0"))
    assert not run_dir.exists()


def _missing_shards_spec(tmp_path: Path) -> tuple[Path, Path]:
    missing = tmp_path / "no-such-shards"
    dataset = f'name = "webdataset"\nurls = "{missing}"'
    return write_spec(tmp_path / "missing.toml", tiny_pretrain_spec(dataset=dataset)), missing


def test_missing_shard_directory_is_a_data_error(tmp_path: Path) -> None:
    spec, missing = _missing_shards_spec(tmp_path)
    with pytest.raises(DataError) as raised:
        run(load(spec), run_dir=tmp_path / "run")
    message = str(raised.value)
    assert "index" in message and str(missing.parent) in message
    assert not (tmp_path / "run" / "pretrain" / "checkpoints").exists()


def test_missing_shard_directory_writes_no_run_directory(tmp_path: Path) -> None:
    spec, _ = _missing_shards_spec(tmp_path)
    with pytest.raises(DataError):
        run(load(spec), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_indivisible_batch_is_a_spec_error_before_anything_is_written(tmp_path: Path) -> None:
    spec, _ = _missing_shards_spec(tmp_path)
    loaded = load(spec, ["pretrain.batch_size=33"])
    with pytest.raises(SpecError, match=r"pretrain\.batch_size: 33 is not divisible by the 2 ranks"):
        preflight(loaded, ["pretrain"], world_size=2)
    assert not (tmp_path / "run").exists()


def _finished_tiny_pretrain(tmp_path: Path) -> tuple[Path, Path]:
    """A one-step pretraining run: its spec file and run directory."""
    spec = write_spec(tmp_path / "tiny.toml", tiny_pretrain_spec(batch_size=32, max_steps=1))
    run_dir = tmp_path / "run"
    run(load(spec), run_dir=run_dir)
    return spec, run_dir


def test_run_directory_of_another_spec_is_refused_and_left_unchanged(
    digits_env: Path, tmp_path: Path
) -> None:
    spec, run_dir = _finished_tiny_pretrain(tmp_path)
    before = files_snapshot(run_dir)

    with pytest.raises(
        RunError, match=r"holds a run of a different spec \(experiment\.seed: 0 before, 1 now\)"
    ):
        run(load(spec, ["experiment.seed=1"]), run_dir=run_dir)
    assert files_snapshot(run_dir) == before

    # Runtime settings change how, not what, is computed: the finished stage is reused.
    again = run(load(spec, ["runtime.log_every=5"]), run_dir=run_dir)
    assert again.skipped == ("pretrain",)
    assert files_snapshot(run_dir / "pretrain") == {
        k.removeprefix("pretrain/"): v for k, v in before.items() if k.startswith("pretrain/")
    }


def test_records_older_than_an_option_still_match_while_it_is_at_its_default(
    digits_env: Path, tmp_path: Path
) -> None:
    spec, run_dir = _finished_tiny_pretrain(tmp_path)
    # Rewrite both records as a version without the `rotation_degrees` option wrote them.
    resolved_path = run_dir / "spec.resolved.toml"
    resolved = tomllib.loads(resolved_path.read_text())
    del resolved["pretrain"]["augmentation"]["rotation_degrees"]
    resolved_path.write_text(dumps(resolved))
    table_path = run_dir / "pretrain" / "stage_spec.json"
    table = json.loads(table_path.read_text())
    del table["augmentation"]["rotation_degrees"]
    table_path.write_text(json.dumps(table))
    before = files_snapshot(run_dir / "pretrain")

    again = run(load(spec), run_dir=run_dir)
    assert again.skipped == ("pretrain",)
    assert files_snapshot(run_dir / "pretrain") == before
    # Setting the new option is a change like any other.
    with pytest.raises(RunError, match=r"pretrain\.augmentation\.rotation_degrees: 0\.0 before, 10\.0 now"):
        run(load(spec, ["pretrain.augmentation.rotation_degrees=10.0"]), run_dir=run_dir)
    table_path.write_text(json.dumps(table))
    forced = run(load(spec, ["pretrain.augmentation.rotation_degrees=10.0"]), run_dir=run_dir, force=True)
    assert forced.skipped == ()
    assert files_snapshot(run_dir / "pretrain.replaced-1") == before


def test_global_batch_must_divide_by_the_ranks(tmp_path: Path) -> None:
    info = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), is_distributed=True)
    session = Session(
        dist=info, runtime=loop_settings(RuntimeSpec()), seed=0, directory=tmp_path, reporter=NullReporter()
    )
    ctx = StageContext(session=session, registry=load_registry(), run_dir=tmp_path)
    assert per_rank_batch(30, "pretrain.batch_size", ctx) == 15
    with pytest.raises(SpecError, match=r"pretrain\.batch_size.*31 is not divisible by the 2 ranks"):
        per_rank_batch(31, "pretrain.batch_size", ctx)
