"""A real 2-process CPU (gloo) run under torchrun trains like one process on the same global batch,
with and without the memory of negatives (momentum encoder with global BN, keys from both ranks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from contrastive.checkpoint import latest_checkpoint, load_checkpoint
from contrastive.data.digits import ensure_digits_subset
from contrastive.data.index import read_index
from contrastive.runner import run
from contrastive.spec.loader import load
from tests.tiny_specs import (
    load_state_dict,
    read_jsonl,
    subprocess_env,
    tiny_pretrain_spec,
    write_spec,
)

pytest_plugins = ["tests.stage_fixtures"]  # its fixtures: digits_data, digits_env

PER_CLASS = 3  # 30 images: the whole set is one global batch, 15 per rank
#: Full-image views with no random colour, flip or blur: every rank's views do not depend on which
#: rank (or which seeded generator) made them, so both runs see the very same 30 x 2 views.
FIXED_VIEWS = "\n".join(
    (
        'name = "simclr"',
        "size = 8",
        "crop_min_area = 1.0",
        "crop_max_area = 1.0",
        "aspect_ratio_range = [1.0, 1.0]",
        "flip_probability = 0.0",
        "color_jitter_probability = 0.0",
        "grayscale_probability = 0.0",
        "blur_probability = 0.0",
    )
)
STEPS = 2
#: Step 1's keys (2 views x 30 images, from the momentum encoder) are step 2's extra negatives.
MEMORY = ("temperature = 0.2", 'temperature = 0.2\nqueue_size = 60\nqueue_keys = "both_views"')
MOMENTUM = ("[pretrain.dataset]", "memory_momentum = 0.5\n\n[pretrain.dataset]")


@pytest.mark.parametrize("memory", [False, True], ids=["plain", "memory"])
def test_two_ranks_under_torchrun_train_like_one_process(
    digits_env: Path, tmp_path: Path, memory: bool
) -> None:
    subset = ensure_digits_subset(digits_env / "digits", "train", PER_CLASS, 0)
    index = read_index(subset)
    assert index.total == 30 and len(index.shards) >= 2  # one data-loader worker per rank needs a shard each
    spec = write_spec(
        tmp_path / "tiny.toml",
        tiny_pretrain_spec(
            dataset=f'name = "digits"\nsplit = "train"\nlabels_per_class = {PER_CLASS}\nlabelled = false',
            augmentation=FIXED_VIEWS,
            batch_size=30,
            epochs=STEPS,
            max_steps=STEPS,
            num_workers=1,
            normalization="global_bn",
            schedule="constant",
        )
        # lr 0.05 x sqrt(30) = 0.27: the norm layers take the steps they took when nt_xent was
        # half SimCLR's value at lr 0.1 (~0.5 a step).
        .replace("lr = 0.1", "lr = 0.05"),
    )
    if memory:
        spec.write_text(spec.read_text().replace(*MEMORY).replace(*MOMENTUM))
    distributed = tmp_path / "two-ranks"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "contrastive", "run", str(spec), "--run-dir", str(distributed)]
    launched = subprocess.Popen(
        command,
        env=subprocess_env(digits_env),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        single = tmp_path / "one-process"
        run(load(spec), run_dir=single)  # meanwhile, in this process
        output, _ = launched.communicate(timeout=300)
    finally:
        if launched.poll() is None:
            launched.kill()
            launched.communicate(timeout=30)
    assert launched.returncode == 0, output

    ours, reference = (
        read_jsonl(distributed / "pretrain" / "metrics.jsonl"),
        read_jsonl(single / "pretrain" / "metrics.jsonl"),
    )
    assert [r["step"] for r in ours] == [r["step"] for r in reference] == list(range(1, STEPS + 1))
    # Step 1: the mean over ranks of the local NT-Xent equals the loss of the whole batch.
    assert ours[0]["loss"] == pytest.approx(reference[0]["loss"], rel=0, abs=1e-5)
    # Step 2 and the weights: DDP's averaged gradient is the whole batch's gradient. Float rounding
    # differs between the runs (global BN's all-reduced moments) and two LARS steps amplify it:
    # losses agree to 1e-4, most weights to ~4e-5, the zero-initialised last norms of the blocks,
    # whose first gradients divide by near-zero variances, to ~2e-3 (measured at this lr).
    assert ours[1]["loss"] < ours[0]["loss"]
    assert ours[1]["loss"] == pytest.approx(reference[1]["loss"], rel=0, abs=1e-4)
    trained = load_state_dict(distributed / "pretrain" / "final.pt")
    expected = load_state_dict(single / "pretrain" / "final.pt")
    assert trained.keys() == expected.keys()
    for key in trained:
        torch.testing.assert_close(trained[key], expected[key], rtol=0, atol=3e-3, msg=key)
    if memory:
        _assert_same_memory(distributed, single)


def _assert_same_memory(distributed: Path, single: Path) -> None:
    """Rank 0's checkpointed memory (every rank keeps the same one) holds one process's keys: step
    2's keys of all 30 images, view 1 then view 2 (step 1's gave way, queue_size 60). The ranks
    list the images in another order than one process (the loss does not depend on it), so
    images are matched by their view-1 key, and view 2 must follow the same matching."""
    ours, theirs = (
        load_checkpoint(latest_checkpoint(run / "pretrain" / "checkpoints"))["state"]["loss._extra_state"][
            "memory"
        ]  # type: ignore[arg-type]
        for run in (distributed, single)
    )
    assert ours.shape == theirs.shape == (60, 16)
    match = torch.cdist(ours[:30], theirs[:30]).argmin(dim=1)
    assert sorted(match.tolist()) == list(range(30))
    torch.testing.assert_close(ours[:30], theirs[:30][match], rtol=0, atol=1e-3)
    torch.testing.assert_close(ours[30:], theirs[30:][match], rtol=0, atol=1e-3)
