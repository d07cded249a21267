"""The label-efficiency protocol in miniature: one seed, a few steps per stage, a tiny encoder.

No accuracy thresholds: the run checks the protocol's outputs, not what they measure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from contrastive.bench.label_efficiency import ARMS, LABELS_PER_CLASS, Row, markdown_table, summarize
from contrastive.cli import cli
from contrastive.data.digits import DATA_ENV


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
        for arm in ARMS:
            stage = "distill" if arm == "distill" else "finetune"
            assert (seed / f"labels{labels}" / arm / stage / "results.json").exists()
    recorded = json.loads((seed / "labels1" / "finetune_head1" / "finetune" / "stage_spec.json").read_text())
    assert recorded["init"] == str(seed / "pretrain" / "pretrain" / "final.pt")
    assert recorded["from_layer"] == 1
    assert recorded["dataset"]["labels_per_class"] == 1
    scratch = json.loads((seed / "labels13" / "supervised" / "finetune" / "stage_spec.json").read_text())
    assert scratch["init"] == "scratch" and scratch["from_layer"] == 0
    assert scratch["dataset"]["labels_per_class"] == 13
    teacher = json.loads((seed / "labels13" / "distill" / "distill" / "stage_spec.json").read_text())[
        "teacher"
    ]
    assert teacher == str(seed / "labels13" / "finetune_head1" / "finetune" / "final.pt")


def test_rerun_skips_finished_arms(quick_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV, str(quick_run.parent / "data"))
    before = (quick_run / "label_efficiency.json").read_text()
    stamp = (quick_run / "seed0" / "pretrain" / "pretrain" / "final.pt").stat().st_mtime_ns
    result = CliRunner().invoke(
        cli, ["bench", "label-efficiency", "--seeds", "1", "--quick", "--out", str(quick_run)]
    )
    assert result.exit_code == 0, result.output
    assert (quick_run / "label_efficiency.json").read_text() == before
    assert (quick_run / "seed0" / "pretrain" / "pretrain" / "final.pt").stat().st_mtime_ns == stamp


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


def test_summary_is_mean_and_sample_deviation_over_seeds() -> None:
    rows = [Row("distill", 1, seed, top1) for seed, top1 in enumerate((0.5, 0.7, 0.9))]
    mean, std, count = summarize(rows)[("distill", 1)]
    assert mean == pytest.approx(0.7) and std == pytest.approx(0.2) and count == 3
    assert "| distill | 70.0 ± 20.0 |" in markdown_table(rows)
