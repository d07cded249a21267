"""``contrastive eval``: linear evaluation (or kNN) of a finished stage's frozen features."""

from __future__ import annotations

import json
from pathlib import Path

import click

#: Defaults of :mod:`contrastive.linear_eval` (``DEFAULT_L2``, ``DEFAULT_MAX_ITER``), repeated so
#: that loading the command line does not import torch; a test checks they agree.
DEFAULT_L2 = 1e-5
DEFAULT_MAX_ITER = 1000


def _split_help(example: str) -> str:
    """How a split is named, with an example of the right split (train or test)."""
    return (
        f"NAME:SPLIT of a registered dataset (e.g. {example}), NAME alone for its defaults, "
        "or the path of a shard folder (the webdataset dataset)."
    )


@click.command("eval")
@click.argument("stage_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--train",
    "train",
    required=True,
    metavar="DATASET",
    help=f"Labelled training split: {_split_help('digits:train')}",
)
@click.option(
    "--test",
    "test",
    required=True,
    metavar="DATASET",
    help=f"Labelled test split: {_split_help('digits:test')}",
)
@click.option(
    "--method",
    type=click.Choice(["linear", "knn"]),
    default="linear",
    show_default=True,
    help="linear: L2-penalised logistic regression (L-BFGS) on standardised features; "
    "knn: the pretraining monitor's weighted kNN (top-1 only).",
)
@click.option(
    "--from-layer",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Projection-head layers after the encoder (0: the encoder's output).",
)
@click.option(
    "--size", type=click.IntRange(min=1), help="View side in pixels (default: the stage's eval view)."
)
@click.option(
    "--l2",
    type=click.FloatRange(min=0.0),
    default=DEFAULT_L2,
    show_default=True,
    help="Weight penalty of the linear probe, per sample (scikit-learn's C = 1 / (l2 * N)).",
)
@click.option(
    "--max-iter",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_ITER,
    show_default=True,
    help="L-BFGS iterations.",
)
@click.option(
    "--device", default=None, help="Device for features and probe (default: cuda if available, else cpu)."
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Images per batch."
)
@click.option(
    "--num-workers", type=click.IntRange(min=0), default=0, show_default=True, help="Loader workers."
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON record instead of a line.")
def eval_command(
    stage_dir: Path,
    train: str,
    test: str,
    method: str,
    from_layer: int,
    size: int | None,
    l2: float,
    max_iter: int,
    device: str | None,
    batch_size: int,
    num_workers: int,
    as_json: bool,
) -> None:
    """Linear evaluation of a finished stage (RUN_DIR/pretrain, finetune or distill): frozen features,
    a logistic-regression probe, top-1/top-5 on the test split; writes STAGE_DIR/linear_eval.json
    (or knn_eval.json)."""
    import torch

    from contrastive.console import ProgressReporter, print_ok
    from contrastive.linear_eval import EvalRequest, evaluate_stage, result_file

    request = EvalRequest(
        stage_dir=stage_dir,
        train=train,
        test=test,
        method="knn" if method == "knn" else "linear",
        from_layer=from_layer,
        size=size,
        l2=l2,
        max_iter=max_iter,
        device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
        batch_size=batch_size,
        num_workers=num_workers,
    )
    record = evaluate_stage(request, progress=ProgressReporter(plain_lines=not as_json))
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    top5 = f", top-5 {record['top5']:.4f}" if "top5" in record else ""
    print_ok(
        f"{method} eval of {stage_dir} (from layer {from_layer}, {record['feature_dim']} features): "
        f"top-1 {record['top1']:.4f}{top5} on {record['test_samples']} test images; "
        f"wrote {result_file(stage_dir, request.method)}"
    )
