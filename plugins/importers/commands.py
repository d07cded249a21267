"""The built-in ``contrastive import`` commands (offered through the
``contrastive_register_import_commands`` hook, as a third-party importer would be)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("simclrv2")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--kind",
    type=click.Choice(["pretrain", "classifier"]),
    default="pretrain",
    show_default=True,
    help="pretrain: encoder + projection head (use as finetune.init). classifier: encoder, head up "
    "to --from-layer and the supervised head (use as distill.teacher; fine-tuned checkpoints).",
)
@click.option(
    "--from-layer",
    type=click.IntRange(min=0),
    default=None,
    help="classifier: projection-head layers the supervised head reads (0: encoder output; SimCLRv2 "
    "fine-tuning: 1). Default: found by running the SavedModel, or the only layer of the right width.",
)
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="When SRC is a whole SavedModel folder, run it and the import on random images and write "
    "nothing unless they agree.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the import report as JSON.")
def simclrv2(src: Path, out: Path, kind: str, from_layer: int | None, verify: bool, as_json: bool) -> None:
    """Import an official SimCLRv2 TF2 checkpoint (SRC: a SavedModel folder, its variables/ folder
    or a tf.train.Checkpoint prefix) into OUT (a final.pt). Needs TensorFlow: pip install
    'contrastive[tf]'.

    The architecture (depth, width, selective kernels, projection head, classes) comes from the
    variables' shapes; every variable must map, or nothing is written.
    """
    from contrastive.console import print_ok
    from contrastive_plugins.importers.simclrv2 import import_checkpoint  # TensorFlow: on use

    report = import_checkpoint(
        src,
        out,
        kind="classifier" if kind == "classifier" else "pretrain",
        from_layer=from_layer,
        verify=verify,
    )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    arch = report["architecture"]
    check = report["verification"]
    checked = (
        f"; agrees with the SavedModel (features {check['features']:.1e}, relative)"
        if check
        else "; not run against a SavedModel (give the SavedModel folder to check)"
    )
    layer = f" reading head layer {report['from_layer']}" if report["from_layer"] is not None else ""
    print_ok(
        f"wrote {report['out']}: {arch['name']} as a {report['kind']} record{layer}, "
        f"{report['variables']['mapped']} variables{checked}"
    )
