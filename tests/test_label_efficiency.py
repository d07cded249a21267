"""The label-efficiency protocol in miniature: one seed, a few steps per stage, a tiny encoder.

No accuracy thresholds: the run checks the protocol's outputs, not what they measure. The digits
protocol (no --spec) runs as it always did; the documented example (docs/label-efficiency.md)
runs on a tiny ImageFolder tree through the same commands the document gives.
"""

from __future__ import annotations

import collections
import json
import re
import shutil
from pathlib import Path

import attrs
import numpy as np
import pytest
from click.testing import CliRunner

from contrastive.bench.label_efficiency import (
    ARMS,
    LABELS_PER_CLASS,
    LINEAR_ARM,
    LINEAR_FILE,
    Labels,
    Row,
    arm_overrides,
    check_spec,
    digits_protocol,
    linear_arm,
    markdown_table,
    read_rows,
    summarize,
    write_outputs,
)
from contrastive.cli import cli
from contrastive.data.digits import DATA_ENV
from contrastive.data.index import read_index
from contrastive.errors import DataError, SpecError
from contrastive.registry import load_registry
from contrastive.spec.loader import load
from contrastive.spec.structure import ComponentSpec, structure_options
from contrastive_plugins.datasets import DigitsOptions, cached_subset
from tests.conftest import REPO

DOC = REPO / "docs" / "label-efficiency.md"
#: The arms that are training runs (every arm but the linear evaluation).
TRAINED_ARMS = tuple(arm for arm in ARMS if arm != LINEAR_ARM)
#: Digits: 10 classes, 500 test images.
DIGITS_CLASSES, DIGITS_TEST = 10, 500
#: Before the [bench.supervised] tables: the supervised arm's own settings, per labels per class.
OLD_SUPERVISED_OVERRIDES = {
    1: ("finetune.optimizer.lr=0.1", "finetune.epochs=500", "finetune.augmentation.rotation_degrees=10.0"),
    13: ("finetune.optimizer.lr=0.05", "finetune.epochs=500"),
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One seed of the protocol with ``--quick`` through the command line; its output folder."""
    base = tmp_path_factory.mktemp("label_efficiency")
    out = base / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATA_ENV, str(base / "data"))
        result = CliRunner().invoke(
            cli, ["bench", "label-efficiency", "--seeds", "1", "--quick", "--out", str(out)]
        )
    assert result.exit_code == 0, result.output
    return out


def test_json_has_every_arm_fraction_and_seed_with_a_fraction(quick_run: Path) -> None:
    rows = json.loads((quick_run / "label_efficiency.json").read_text())
    assert {(r["arm"], r["labels_per_class"], r["seed"]) for r in rows} == {
        (arm, labels, 0) for arm in ARMS for labels in LABELS_PER_CLASS
    }
    assert len(rows) == len(ARMS) * len(LABELS_PER_CLASS)
    for row in rows:
        assert set(row) == {"arm", "labels_per_class", "seed", "top1"}
        assert isinstance(row["top1"], float) and 0.0 <= row["top1"] <= 1.0


def test_markdown_table_and_chart_are_written(quick_run: Path) -> None:
    table = (quick_run / "label_efficiency.md").read_text()
    for arm in ARMS:
        assert f"| {arm} |" in table
    assert "1 label/class" in table and "13 labels/class" in table
    assert (quick_run / "label_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pretraining_is_shared_and_every_arm_has_its_run_dir(quick_run: Path) -> None:
    seed = quick_run / "seed0"
    assert (seed / "pretrain" / "pretrain" / "final.pt").exists()
    assert not any(
        (seed / f"labels{n}" / arm / "pretrain").exists() for n in LABELS_PER_CLASS for arm in ARMS
    )
    for labels in LABELS_PER_CLASS:
        for arm in TRAINED_ARMS:
            stage = "distill" if arm == "distill" else "finetune"
            assert (seed / f"labels{labels}" / arm / stage / "results.json").exists()
    recorded = json.loads((seed / "labels1" / "finetune_head1" / "finetune" / "stage_spec.json").read_text())
    assert recorded["init"] == str(seed / "pretrain" / "pretrain" / "final.pt")
    assert recorded["from_layer"] == 1
    assert recorded["dataset"]["labels_per_class"] == 1
    scratch = json.loads((seed / "labels13" / "supervised" / "finetune" / "stage_spec.json").read_text())
    assert scratch["init"] == "scratch" and scratch["from_layer"] == 0
    assert scratch["dataset"]["labels_per_class"] == 13
    assert scratch["optimizer"]["lr"] == 0.05 and scratch["epochs"] == 500
    one = json.loads((seed / "labels1" / "supervised" / "finetune" / "stage_spec.json").read_text())
    assert one["optimizer"]["lr"] == 0.1 and one["epochs"] == 500
    assert one["augmentation"]["rotation_degrees"] == 10.0
    assert "[bench" not in (seed / "labels1" / "supervised" / "spec.resolved.toml").read_text()
    teacher = json.loads((seed / "labels13" / "distill" / "distill" / "stage_spec.json").read_text())[
        "teacher"
    ]
    assert teacher == str(seed / "labels13" / "finetune_head1" / "finetune" / "final.pt")


def test_linear_arm_probes_the_pretrained_encoder_on_the_setting_subset(quick_run: Path) -> None:
    seed = quick_run / "seed0"
    final = seed / "pretrain" / "pretrain" / "final.pt"
    rows = {(r.arm, r.labels_per_class): r.top1 for r in read_rows(quick_run / "label_efficiency.json")}
    for labels in LABELS_PER_CLASS:
        folder = seed / f"labels{labels}" / LINEAR_ARM
        record = json.loads((folder / LINEAR_FILE).read_text())
        assert sorted(path.name for path in folder.iterdir()) == [LINEAR_FILE]  # no run directory
        assert record["method"] == "linear" and record["from_layer"] == 0 and record["kind"] == "pretrain"
        assert record["stage"] == str(final.parent) and record["size"] == 8  # the pretraining's view
        assert record["train_samples"] == DIGITS_CLASSES * labels
        assert record["test_samples"] == DIGITS_TEST
        assert rows[LINEAR_ARM, labels] == record["top1"]
        inputs = record["inputs"]
        assert inputs["checkpoint"] == str(final) and inputs["from_layer"] == 0
        trained = json.loads(
            (seed / f"labels{labels}" / "finetune_encoder" / "finetune" / "stage_spec.json").read_text()
        )
        assert inputs["train"] == record["train"] == trained["dataset"]  # the fine-tuning arms' subset
        assert inputs["test"] == trained["eval_dataset"]
        assert inputs["train"]["labels_per_class"] == labels and inputs["train"]["subset_seed"] == 0


def test_linear_arm_is_kept_with_the_same_inputs_and_redone_with_others(
    quick_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATA_ENV, str(quick_run.parent / "data"))
    folder = tmp_path / LINEAR_ARM
    shutil.copytree(quick_run / "seed0" / "labels1" / LINEAR_ARM, folder)
    path = folder / LINEAR_FILE
    recorded = json.loads(path.read_text())
    registry = load_registry()
    entry = registry.get("datasets", "digits")

    def table(values: dict[str, object]) -> ComponentSpec:
        options = {key: value for key, value in values.items() if key != "name"}
        return ComponentSpec(
            name="digits",
            options=structure_options(entry.options, options, source="test"),
            category="datasets",
        )

    final = Path(recorded["inputs"]["checkpoint"])
    train, test = table(recorded["inputs"]["train"]), table(recorded["inputs"]["test"])
    before, stamp = path.read_text(), path.stat().st_mtime_ns
    assert linear_arm(final, train, test, folder, registry=registry) == recorded
    assert path.read_text() == before and path.stat().st_mtime_ns == stamp
    other = attrs.evolve(train, options=attrs.evolve(train.options, subset_seed=5))
    redone = linear_arm(final, other, test, folder, registry=registry)
    assert redone["inputs"]["train"]["subset_seed"] == 5 and redone["train"]["subset_seed"] == 5
    assert redone["train_samples"] == DIGITS_CLASSES
    assert json.loads(path.read_text()) == redone


def test_rerun_skips_finished_arms(quick_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV, str(quick_run.parent / "data"))
    before = (quick_run / "label_efficiency.json").read_text()
    stamp = (quick_run / "seed0" / "pretrain" / "pretrain" / "final.pt").stat().st_mtime_ns
    linear = [quick_run / "seed0" / f"labels{n}" / LINEAR_ARM / LINEAR_FILE for n in LABELS_PER_CLASS]
    records = [(path.read_text(), path.stat().st_mtime_ns) for path in linear]
    result = CliRunner().invoke(
        cli, ["bench", "label-efficiency", "--seeds", "1", "--quick", "--out", str(quick_run)]
    )
    assert result.exit_code == 0, result.output
    assert (quick_run / "label_efficiency.json").read_text() == before
    assert (quick_run / "seed0" / "pretrain" / "pretrain" / "final.pt").stat().st_mtime_ns == stamp
    assert [(path.read_text(), path.stat().st_mtime_ns) for path in linear] == records


def test_changed_settings_in_the_same_output_folder_are_refused_in_the_benchs_terms(
    quick_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATA_ENV, str(quick_run.parent / "data"))
    before = (quick_run / "label_efficiency.json").read_text()
    args = ["bench", "label-efficiency", "--seeds", "1", "--quick", "--out", str(quick_run)]
    result = CliRunner().invoke(cli, [*args, "--set", "pretrain.loss.temperature=0.4"])
    assert result.exit_code == 5
    assert "pretrain.loss.temperature: 0.5 before, 0.4 now" in result.output
    assert "choose another --out" in result.output and "--run-dir" not in result.output
    assert (quick_run / "label_efficiency.json").read_text() == before


def test_digits_supervised_arm_gets_the_old_overrides_after_its_scratch_network(
    quick_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATA_ENV, str(quick_run.parent / "data"))
    protocol = digits_protocol(quick_run.parent / "plan", [0])
    final = quick_run / "pretrain.pt"
    for labels, old in OLD_SUPERVISED_OVERRIDES.items():
        stage, overrides = arm_overrides(protocol, 0, Labels(per_class=labels), final)["supervised"]
        assert stage == "finetune"
        scratch = overrides.index('finetune.init="scratch"')
        assert overrides[scratch + 1] == "finetune.from_layer=0"
        assert overrides[scratch + 4 : scratch + 4 + len(old)] == list(old)
        assert overrides[scratch + 4 + len(old)] == "experiment.seed=0"
        assert overrides[:2] == [
            "runtime.num_workers=0",
            f'finetune.dataset={{name = "digits", labels_per_class = {labels}}}',
        ]


def test_summary_is_mean_and_sample_deviation_over_seeds() -> None:
    rows = [Row("distill", 1, seed, top1) for seed, top1 in enumerate((0.5, 0.7, 0.9))]
    mean, std, count = summarize(rows)[("distill", Labels(per_class=1))]
    assert mean == pytest.approx(0.7) and std == pytest.approx(0.2) and count == 3
    assert "| distill | 70.0 ± 20.0 |" in markdown_table(rows)


def test_fraction_rows_round_trip_and_old_results_still_read(tmp_path: Path) -> None:
    old = [{"arm": "distill", "labels_per_class": 13, "seed": 0, "top1": 0.9}]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert read_rows(tmp_path / "old.json") == [Row("distill", 13, 0, 0.9)]
    rows = [Row("supervised", None, 0, 0.5, fraction=0.1), Row("supervised", 1, 0, 0.25)]
    write_outputs(tmp_path, rows, train_seconds=None, chart=False, test_set="the 9 images of X")
    assert read_rows(tmp_path / "label_efficiency.json") == rows
    table = (tmp_path / "label_efficiency.md").read_text()
    assert table.startswith("Test top-1 (%) on the 9 images of X,")
    assert (
        "| arm | 1 label/class | 10% labels |" in table
        and "| supervised | 25.0 ± 0.0 | 50.0 ± 0.0 |" in table
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--spec", "digits_1pct", "--labels-per-class", "1,0"], "integers >= 1"),
        (["--spec", "digits_1pct", "--labels-per-class", "one"], "integers >= 1"),
        (["--spec", "digits_1pct", "--fraction", "0.1,1.5"], "(0, 1]"),
        (["--labels-per-class", "1"], "need --spec"),
    ],
)
def test_bad_label_settings_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["bench", "label-efficiency", *args])
    assert result.exit_code == 2 and message in result.output


def test_a_bad_supervised_override_is_a_spec_error_before_any_run(
    quick_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATA_ENV, str(quick_run.parent / "data"))
    out = quick_run.parent / "bad"
    for bad, said in (
        ('["pretrain.epochs=3"]', "sets pretrain.epochs"),
        ('["finetune.dataset.labels_per_class=3"]', "sets the labelled subset"),
        ('["finetune.epochs=-1"]', "finetune.epochs"),
        ('["epochs"]', "expected KEY=VALUE"),
    ):
        args = ["--spec", "digits_1pct", "--quick", "--out", str(out), "--set", f"bench.supervised.set={bad}"]
        result = CliRunner().invoke(cli, ["bench", "label-efficiency", *args])
        assert result.exit_code == 2, result.output
        assert "bench.supervised.set" in result.output and said in result.output
    assert not out.exists()


def test_datasets_that_cannot_draw_the_subset_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="labels per class"):
        DigitsOptions().labelled_subset(per_class=None, fraction=0.1, seed=0)
    assert DigitsOptions().labelled_subset(per_class=3, fraction=None, seed=2) == DigitsOptions(
        labels_per_class=3, subset_seed=2
    )
    for urls in ("http://example.com/train", "pipe:cat x.tar", ("a.tar", "b.tar")):
        with pytest.raises(DataError, match="local shard folder"):
            cached_subset(urls, None, per_class=1, fraction=None, seed=0)
    with pytest.raises(DataError, match="has none"):
        cached_subset(str(tmp_path), None, per_class=1, fraction=None, seed=0)
    loaded = load(_write_doc_spec(tmp_path))
    finetune = attrs.evolve(
        loaded.spec.finetune, dataset=ComponentSpec(name="plain", options=object(), category="datasets")
    )
    with pytest.raises(SpecError) as caught:
        check_spec(attrs.evolve(loaded, spec=attrs.evolve(loaded.spec, finetune=finetune)))
    assert [p.key for p in caught.value.problems] == ["finetune.dataset"]
    assert "'plain' dataset cannot draw labelled subsets" in str(caught.value)


def _doc_spec() -> str:
    """The spec written out in docs/label-efficiency.md (its one TOML block)."""
    blocks = re.findall(r"^```toml\n(.*?)^```", DOC.read_text(), flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1
    return str(blocks[0])


def _write_doc_spec(folder: Path) -> Path:
    path = folder / "my.toml"
    path.write_text(_doc_spec())
    return path


def _image_tree(root: Path, per_class: int, seed: int) -> None:
    """3 classes of random 16 px RGB PNGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in ("cat", "dog", "fox"):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i}.png")


#: The documented command, on 18 training images: batches that fit them, the rest as --quick.
FOLDER_ARGS = [
    "bench", "label-efficiency", "--spec", "my.toml", "--labels-per-class", "1,2", "--seeds", "1",
    "--quick", "--out", "out", "--set", "pretrain.batch_size=6", "--set", "distill.batch_size=6",
]  # fmt: skip


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documented example on a tiny ImageFolder tree (3 classes x 6 train, x 3 val); its folder."""
    base = tmp_path_factory.mktemp("label_efficiency_folder")
    _image_tree(base / "data" / "train", 6, seed=0)
    _image_tree(base / "data" / "val", 3, seed=1)
    _write_doc_spec(base)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        for split in ("train", "val"):
            built = CliRunner().invoke(
                cli, ["shards", "build", "imagefolder", f"data/{split}", f"shards/{split}"]
            )
            assert built.exit_code == 0, built.output
        result = CliRunner().invoke(cli, FOLDER_ARGS)
    assert result.exit_code == 0, result.output
    return base


def test_documented_example_runs_every_arm_for_every_setting(folder_run: Path) -> None:
    rows = read_rows(folder_run / "out" / "label_efficiency.json")
    assert {(r.arm, r.labels_per_class, r.seed) for r in rows} == {(a, n, 0) for a in ARMS for n in (1, 2)}
    assert len(rows) == 2 * len(ARMS) and all(r.fraction is None for r in rows)
    table = (folder_run / "out" / "label_efficiency.md").read_text()
    assert table.startswith("Test top-1 (%) on the 9 held-out images of finetune.eval_dataset (webdataset),")
    assert "digits" not in table and "untuned" not in table
    assert "| arm | 1 label/class | 2 labels/class |" in table
    assert all(
        re.search(rf"^\| {arm} \| [0-9.]+ ± [0-9.]+ \| [0-9.]+ ± [0-9.]+ \|$", table, re.M) for arm in ARMS
    )
    assert not (folder_run / "out" / "seed0" / "labels1" / "supervised" / "pretrain").exists()


def test_documented_example_draws_class_balanced_seeded_subsets_beside_the_source(folder_run: Path) -> None:
    seed = folder_run / "out" / "seed0"
    for labels in (1, 2):
        used = {
            arm: json.loads((seed / f"labels{labels}" / arm / "finetune" / "stage_spec.json").read_text())
            for arm in ("supervised", "finetune_head1", "finetune_encoder")
        }
        urls = {spec["dataset"]["urls"] for spec in used.values()}
        assert len(urls) == 1  # every arm of a setting trains on the same subset
        subset = Path(urls.pop())
        assert subset.parent.parent == (folder_run / "shards" / "train-subsets").resolve()
        assert subset.name == f"per-class-{labels}-seed-0"
        index = read_index(subset)
        assert index.classes == ("cat", "dog", "fox") and index.class_counts == (labels, labels, labels)
        assert all(spec["batch_size"] == 3 * labels for spec in used.values())  # cut from 256
        assert used["supervised"]["init"] == "scratch" and used["supervised"]["optimizer"]["lr"] == 0.05
        counts = collections.Counter(json.loads((subset / "index.json").read_text())["class_counts"])
        assert counts == {labels: 3}


def test_documented_example_rerun_skips_finished_arms(
    folder_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = folder_run / "out"
    before = (out / "label_efficiency.json").read_text()
    finals = sorted(out.rglob("final.pt"))
    assert len(finals) == 1 + 2 * len(TRAINED_ARMS)
    linear = sorted(out.rglob(LINEAR_FILE))
    assert len(linear) == 2 and all(json.loads(p.read_text())["test_samples"] == 9 for p in linear)
    linear_stamps = [path.stat().st_mtime_ns for path in linear]
    stamps = [path.stat().st_mtime_ns for path in finals]
    subsets = sorted((folder_run / "shards" / "train-subsets").rglob("*"))
    monkeypatch.chdir(folder_run)
    result = CliRunner().invoke(cli, FOLDER_ARGS)
    assert result.exit_code == 0, result.output
    assert (out / "label_efficiency.json").read_text() == before
    assert [path.stat().st_mtime_ns for path in finals] == stamps
    assert [path.stat().st_mtime_ns for path in linear] == linear_stamps
    assert sorted((folder_run / "shards" / "train-subsets").rglob("*")) == subsets
