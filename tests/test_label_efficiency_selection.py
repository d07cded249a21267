"""Model selection of the label-efficiency protocol: the validation split, the grids, the choice.

The validation split is checked to be disjoint from every labelled subset and from the test
split; the choice is checked to follow validation top-1 where validation and test disagree; a
tiny grid run (``--quick``) checks trial folders, resumption and the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner

from contrastive.bench.label_efficiency import (
    Labels,
    Row,
    chosen_rows,
    chosen_trials,
    markdown_table,
    read_rows,
    write_outputs,
)
from contrastive.bench.trials import GridError, choose, combine, parse_axis, trial_name, trials
from contrastive.bench.validation import held_out
from contrastive.cli import cli
from contrastive.data.digits import DATA_ENV
from contrastive.data.index import read_index
from contrastive.data.scan import scan_shards
from contrastive.errors import DataError, SpecError
from contrastive.registry import load_registry
from contrastive.spec.loader import load
from contrastive_plugins.datasets import DigitsOptions, cached_subset
from tests.test_label_efficiency import _image_tree
from tests.tiny_specs import DIGITS_SPEC

pytest_plugins = ["tests.stage_fixtures"]  # its fixtures: digits_data, digits_env


def _names(folder: Path) -> set[str]:
    """The original names of every sample in a shard folder."""
    index = read_index(folder)
    return {s.name for shard in scan_shards([folder / e.name for e in index.shards]) for s in shard}


# --- the validation split ---------------------------------------------------------------------


def test_digits_validation_subset_is_disjoint_from_every_labelled_subset_and_the_test_split(
    digits_env: Path,
) -> None:
    from contrastive.data.digits import ensure_digits, ensure_digits_subset

    base = DigitsOptions()
    test = _names(ensure_digits(None) / "test")
    sizes = base.class_sizes()
    assert len(sizes) == 10 and sum(sizes) == 1297
    for seed in (0, 1):
        val = base.validation_subset(per_class=20, seed=seed)
        assert val.held_out_per_class == 20 and val.labels_per_class == 0
        val_names = _names(ensure_digits_subset(None, "train", 20, seed, held_out=True))
        assert len(val_names) == 200 and len(test) == 500
        assert not val_names & test
        for per_class in (1, 10, 100):
            labelled = base.labelled_subset(per_class=per_class, fraction=None, seed=seed)
            names = _names(ensure_digits_subset(None, "train", labelled.labels_per_class, seed))
            assert len(names) == 10 * per_class
            assert not val_names & names
        built = load_registry().get("datasets", "digits").component.build(val)
        assert built.num_samples == 200 and built.num_classes == 10
    assert _names(ensure_digits_subset(None, "train", 20, 0, held_out=True)) != val_names


def test_webdataset_validation_subset_is_disjoint_and_refuses_a_class_it_would_empty(tmp_path: Path) -> None:
    _image_tree(tmp_path / "data" / "train", 6, seed=0)
    built = CliRunner().invoke(
        cli, ["shards", "build", "imagefolder", str(tmp_path / "data" / "train"), str(tmp_path / "train")]
    )
    assert built.exit_code == 0, built.output
    source = str(tmp_path / "train")
    val = _names(cached_subset(source, None, per_class=None, fraction=None, seed=3, held_out=2))
    assert len(val) == 6
    for per_class in (1, 2, 4):
        labelled = _names(cached_subset(source, None, per_class=per_class, fraction=None, seed=3))
        assert len(labelled) == 3 * per_class and not labelled & val
    with pytest.raises(DataError, match="keep any to train on"):
        cached_subset(source, None, per_class=None, fraction=None, seed=3, held_out=6)


def test_a_label_setting_that_leaves_too_few_for_validation_is_a_spec_error(digits_env: Path) -> None:
    loaded = load(DIGITS_SPEC)
    sizes = DigitsOptions().class_sizes()
    smallest = min(sizes)
    ok = held_out(loaded, 5, 0, [Labels(per_class=smallest - 5).drawn(sizes)])
    assert ok.options.held_out_per_class == 5
    with pytest.raises(SpecError, match="leaving fewer than 5 for validation"):
        held_out(loaded, 5, 0, [Labels(per_class=smallest - 4).drawn(sizes)])


# --- grids ------------------------------------------------------------------------------------


def test_axes_name_their_group_and_values_are_toml() -> None:
    assert parse_axis("pretrain.loss.temperature=0.2,0.5") == (
        "pretrain",
        parse_axis("pretrain:pretrain.loss.temperature=0.2, 0.5")[1],
    )
    group, axis = parse_axis('finetune.schedule.name="cosine","constant"')
    assert group == "finetune" and axis.values == ("cosine", "constant")
    group, axis = parse_axis("supervised:finetune.optimizer.lr=0.05,0.1")
    assert group == "supervised" and axis.key == "finetune.optimizer.lr" and axis.values == (0.05, 0.1)
    assert parse_axis("finetune.epochs=100", "supervised")[0] == "supervised"
    for bad, said in (
        ("finetune.epochs", "expected KEY=V1,V2"),
        ("distill.epochs=1,2", "a grid is one of"),
        ("supervised:pretrain.epochs=1,2", "sets keys under finetune."),
        ("finetune.dataset.labels_per_class=1,2", "drawn by the protocol"),
        ("finetune.epochs=1,1", "repeated"),
        ("finetune.epochs=1,,", "TOML"),
        ("finetune:finetune.epochs=1", "cannot name"),
    ):
        with pytest.raises(GridError, match=said):
            parse_axis(bad, "supervised" if bad.startswith("finetune:") else None)


def test_trials_are_every_combination_with_readable_folder_names() -> None:
    axes = combine(
        [
            parse_axis("finetune.optimizer.lr=0.1,0.2")[1],
            parse_axis("finetune.epochs=10,20")[1],
            parse_axis("finetune.optimizer.lr=0.05,0.1,0.2")[1],  # replaces the first
        ]
    )
    found = trials(axes)
    assert [t.name for t in found] == [
        "epochs=10_optimizer.lr=0.05",
        "epochs=10_optimizer.lr=0.1",
        "epochs=10_optimizer.lr=0.2",
        "epochs=20_optimizer.lr=0.05",
        "epochs=20_optimizer.lr=0.1",
        "epochs=20_optimizer.lr=0.2",
    ]
    assert found[0].overrides == ("finetune.epochs=10", "finetune.optimizer.lr=0.05")
    assert trials([]) == [trials([])[0]] and trials([])[0].name == ""
    long = trial_name([("finetune.init", "/a/very/long/path/" * 10)])
    assert len(long) <= 80 and "/" not in long


# --- the choice -------------------------------------------------------------------------------


def _row(arm: str, trial: str, seed: int, val: float | None, test: float) -> Row:
    return Row(arm, 1, seed, test, trial=trial, val_top1=val)


def test_the_choice_follows_validation_where_test_disagrees() -> None:
    rows = [
        # "a" is better on test, "b" on validation (on average over the seeds)
        _row("supervised", "lr=0.1", 0, 0.30, 0.90),
        _row("supervised", "lr=0.1", 1, 0.50, 0.92),
        _row("supervised", "lr=0.2", 0, 0.45, 0.40),
        _row("supervised", "lr=0.2", 1, 0.40, 0.42),
        _row("linear", "", 0, 0.2, 0.7),
        _row("linear", "", 1, 0.3, 0.6),
    ]
    assert choose(rows) == {"supervised": "lr=0.2", "linear": ""}
    assert chosen_trials(rows) == {
        ("supervised", Labels(per_class=1)): "lr=0.2",
        ("linear", Labels(per_class=1)): "",
    }
    reported = chosen_rows(rows)
    assert sorted((r.arm, r.seed, r.top1) for r in reported) == [
        ("linear", 0, 0.7),
        ("linear", 1, 0.6),
        ("supervised", 0, 0.40),
        ("supervised", 1, 0.42),
    ]
    table = markdown_table(rows, val_set="5 held out")
    assert "| supervised | 41.0 ± 1.4 |" in table  # the validation choice's test top-1, not 91.0
    assert "| supervised | 1 label/class | lr=0.2 * | 42.5 | 41.0 |" in table
    assert "| supervised | 1 label/class | lr=0.1 | 40.0 | 91.0 |" in table
    assert "lr=0.2 (42.5)" in table


def test_ties_go_to_the_grid_order_and_a_grid_without_validation_is_refused() -> None:
    rows = [_row("finetune_head1", name, 0, 0.5, test) for name, test in (("b", 0.1), ("a", 0.9))]
    assert choose(rows) == {"finetune_head1": "b"}
    assert choose(rows, {"finetune_head1": ["a", "b"]}) == {"finetune_head1": "a"}
    with pytest.raises(GridError, match="no validation score"):
        choose([_row("distill", "x", 0, None, 0.5), _row("distill", "y", 0, None, 0.6)])


def test_rows_with_trials_round_trip_and_old_records_keep_their_keys(tmp_path: Path) -> None:
    rows = [_row("supervised", "lr=0.1", 0, 0.3, 0.9), Row("linear", 1, 0, 0.5)]
    write_outputs(tmp_path, rows, train_seconds=None, chart=True, val_set="v")
    assert read_rows(tmp_path / "label_efficiency.json") == rows
    records = json.loads((tmp_path / "label_efficiency.json").read_text())
    assert set(records[1]) == {"arm", "labels_per_class", "seed", "top1"}
    assert records[0]["trial"] == "lr=0.1" and records[0]["val_top1"] == 0.3
    assert (tmp_path / "label_efficiency.png").exists()


# --- a tiny grid run --------------------------------------------------------------------------

GRID_ARGS = [
    "bench", "label-efficiency", "--spec", str(DIGITS_SPEC), "--labels-per-class", "1", "--seeds", "1",
    "--quick", "--val-per-class", "3", "--set", "finetune.eval_dataset.labels_per_class=2",
    "--set", "distill.eval_dataset.labels_per_class=2",
    "--grid", "pretrain.loss.temperature=0.2,0.5", "--grid", "finetune.optimizer.lr=0.05,0.1",
    "--grid", "supervised:finetune.optimizer.lr=0.05,0.1",
]  # fmt: skip


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("grid")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATA_ENV, str(base / "data"))
        result = CliRunner().invoke(cli, [*GRID_ARGS, "--out", str(base / "out")])
    assert result.exit_code == 0, result.output
    return base


def test_grid_runs_every_trial_as_its_own_run_and_shares_pretrainings(grid_run: Path) -> None:
    seed = grid_run / "out" / "seed0"
    pretrainings = sorted(p.name for p in seed.glob("pretrain*"))
    assert pretrainings == ["pretrain@loss.temperature=0.2", "pretrain@loss.temperature=0.5"]
    arms = sorted(p.name for p in (seed / "labels1").iterdir())
    head1 = [a for a in arms if a.startswith("finetune_head1@")]
    assert head1 == [
        f"finetune_head1@loss.temperature={t}+optimizer.lr={lr}"
        for t in ("0.2", "0.5")
        for lr in ("0.05", "0.1")
    ]
    assert sorted(a for a in arms if a.startswith("supervised")) == [
        "supervised@optimizer.lr=0.05",
        "supervised@optimizer.lr=0.1",
    ]
    assert len([a for a in arms if a.startswith("linear@")]) == 2
    assert len([a for a in arms if a.startswith("distill@")]) == 2
    for name in head1:
        spec = json.loads((seed / "labels1" / name / "finetune" / "stage_spec.json").read_text())
        temperature = name.split("temperature=")[1].split("+")[0]
        assert spec["init"] == str(
            seed / f"pretrain@loss.temperature={temperature}" / "pretrain" / "final.pt"
        )
        assert str(spec["optimizer"]["lr"]) == name.split("lr=")[1]
        assert (seed / "labels1" / name / "val_eval.json").exists()
    rows = read_rows(grid_run / "out" / "label_efficiency.json")
    assert all(r.val_top1 is not None for r in rows)
    assert len([r for r in rows if r.arm == "finetune_head1"]) == 4


def test_grid_report_shows_choices_counts_every_trial_and_pretraining_signals(grid_run: Path) -> None:
    table = (grid_run / "out" / "label_efficiency.md").read_text()
    assert "chosen on validation top-1 (3 images per class held out" in table
    counts = "supervised 2, linear 2, finetune_head1 4, finetune_encoder 4, distill 2."
    assert f"Trials per arm and label setting: {counts}" in table
    assert "Unequal budget: the supervised arm had 2 trials, the fine-tuning arms 4" in table
    assert "## Every trial" in table
    assert table.count("| finetune_head1 | 1 label/class |") == 4
    assert table.count(" * |") == 5  # one chosen trial per arm
    rows = read_rows(grid_run / "out" / "label_efficiency.json")
    chosen = chosen_trials(rows)
    for (arm, _), trial in chosen.items():  # one seed: the first trial of highest validation top-1
        mine = [r for r in rows if r.arm == arm]
        best = max(r.val_top1 or 0.0 for r in mine)
        assert trial == next(r.trial for r in mine if r.val_top1 == best)
    assert "Pretrainings (" not in table  # --quick runs no monitor: no signal to list


def test_pretraining_signals_are_read_from_each_pretrainings_metrics(tmp_path: Path) -> None:
    from contrastive.bench.label_efficiency import Protocol, pretraining_signals

    for name, lines in (
        (
            "pretrain@loss.temperature=0.2",
            [{"step": 5, "rankme": 3.0}, {"step": 10, "rankme": 7.25, "knn_top1": 0.5}],
        ),
        ("pretrain@loss.temperature=0.5", [{"step": 10, "loss": 1.0}]),
    ):
        folder = tmp_path / "out" / "seed0" / name / "pretrain"
        folder.mkdir(parents=True)
        (folder / "metrics.jsonl").write_text(
            "".join(json.dumps(line) + "\n" for line in lines) + "not json\n"
        )
    (tmp_path / "out" / "seed0" / "pretraining_notes").mkdir()  # not a pretraining
    protocol = Protocol(out=tmp_path / "out", seeds=(0, 1), specs={})
    found = pretraining_signals(protocol)
    assert found == [
        {"seed": 0, "trial": "loss.temperature=0.2", "rankme": 7.25, "knn_top1": 0.5, "step": 10},
        {"seed": 0, "trial": "loss.temperature=0.5"},
    ]
    table = markdown_table([Row("linear", 1, 0, 0.5)], pretrainings=found)
    assert "| 0 | loss.temperature=0.2 | 10 | 7.2 | 50.0 |" in table
    assert "| 0 | loss.temperature=0.5 | - | - | - |" in table


def test_grid_rerun_skips_every_finished_trial(grid_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV, str(grid_run / "data"))
    out = grid_run / "out"
    finals = sorted(out.rglob("final.pt"))
    stamps = [p.stat().st_mtime_ns for p in finals]
    vals = sorted(out.rglob("val_eval.json"))
    val_stamps = [p.stat().st_mtime_ns for p in vals]
    before = (out / "label_efficiency.json").read_text()
    result = CliRunner().invoke(cli, [*GRID_ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [p.stat().st_mtime_ns for p in finals] == stamps
    assert [p.stat().st_mtime_ns for p in vals] == val_stamps
    assert (out / "label_efficiency.json").read_text() == before


def test_a_grid_without_a_validation_split_is_refused_before_any_run(tmp_path: Path) -> None:
    args = [a for a in GRID_ARGS if a not in ("--val-per-class", "3")]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "needs a validation split" in result.output and "never chosen on the test split" in result.output
    assert not (tmp_path / "out").exists()
    bad = CliRunner().invoke(cli, [*GRID_ARGS, "--grid", "distill.epochs=1,2", "--out", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "--grid" in bad.output and "a grid is one of" in bad.output


def test_digits_refuses_a_labelled_and_a_held_out_subset_at_once(digits_env: Path) -> None:
    entry = load_registry().get("datasets", "digits")
    with pytest.raises(DataError, match="set one of them"):
        entry.component.build(DigitsOptions(labels_per_class=1, held_out_per_class=2))


def test_a_named_validation_split_chooses_and_stays_out_of_the_runs(
    digits_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """finetune.val_dataset: every run scored on it, the choice follows it, no run records it."""
    import types
    from typing import Any

    from contrastive.bench import label_efficiency as bench

    seen: list[Any] = []

    def fake_run(loaded: Any, *, run_dir: Path, stages: tuple[str, ...], reporter: Any) -> Any:
        seen.append(loaded.spec)
        # test top-1 falls as the learning rate rises; validation top-1 rises with it
        return types.SimpleNamespace(results={stages[0]: {"top1": 0.9 if "lr=0.05" in run_dir.name else 0.1}})

    def fake_val(stage_dir: Path, dataset: Any, registry: Any, device: str = "cpu") -> float:
        assert dataset.options.labels_per_class == 3 and dataset.options.split == "train"
        return 0.2 if "lr=0.05" in stage_dir.parent.name else 0.8

    monkeypatch.setattr(bench, "run", fake_run)
    monkeypatch.setattr(bench, "run_val_top1", fake_val)
    monkeypatch.setattr(bench, "linear_arm", lambda *a, **k: {"top1": 0.5})
    val = '--set=finetune.val_dataset={name = "digits", split = "train", labels_per_class = 3}'
    protocol = bench.spec_protocol(
        DIGITS_SPEC, [Labels(per_class=1)], tmp_path / "out", [0], [val.split("=", 1)[1]]
    )
    protocol = attrs.evolve(protocol, grid=("supervised:finetune.optimizer.lr=0.05,0.1",))
    rows = bench.run_protocol(protocol)
    supervised = {r.trial: (r.val_top1, r.top1) for r in rows if r.arm == "supervised"}
    assert supervised == {"optimizer.lr=0.05": (0.2, 0.9), "optimizer.lr=0.1": (0.8, 0.1)}
    assert [r.top1 for r in chosen_rows(rows) if r.arm == "supervised"] == [0.1]  # validation's choice
    assert all(
        spec.bench is None and (spec.finetune is None or spec.finetune.val_dataset is None) for spec in seen
    )
    assert len(seen) == 1 + 2 + 2 + 1  # pretraining, two fine-tuning arms, two supervised trials, distill
    table = (tmp_path / "out" / "label_efficiency.md").read_text()
    assert "chosen on validation top-1 (finetune.val_dataset (digits))" in table
    with pytest.raises(SpecError, match="choose one"):
        bench.run_protocol(attrs.evolve(protocol, val_per_class=2))


def test_the_documented_grid_tables_parse_and_load_into_the_spec(tmp_path: Path) -> None:
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "label-efficiency.md").read_text()
    block = text.split("[bench.grid.pretrain]", 1)[1].split("```", 1)[0]
    tables = "[bench.grid.pretrain]" + re.sub(r"\s+#[^\n]*", "", block)
    spec = tmp_path / "grid.toml"
    spec.write_text(f'extends = "{DIGITS_SPEC}"\n\n{tables}')
    grid = load(spec).spec.bench.grid
    assert [parse_axis(a, "pretrain")[1].values for a in grid.pretrain.axes] == [(0.2, 0.5)]
    assert [parse_axis(a, "supervised")[1].key for a in grid.supervised.axes] == [
        "finetune.optimizer.lr",
        "finetune.epochs",
    ]
    assert len(trials([parse_axis(a, "supervised")[1] for a in grid.supervised.axes])) == 4
