"""Build the official SimCLRv2 TF2 model for the import tests (run as a script, in a subprocess).

Reads the official code from ``../shared/reference/simclr_tf2`` at run time (as its
``build_official.py`` does; nothing of it is copied here). Needs ``tensorflow-cpu``, ``tf-keras`` and
``TF_USE_LEGACY_KERAS=1``. Unlike ``build_official.py``, every variable is random: batch-norm
scales, shifts and moving statistics too (the official initial values, zero scales closing every
residual branch and unit moving variances, would leave most of the network out of the comparison).

    python tests/simclrv2_official.py build OUT [--saved-model] [official flags]
        writes OUT/ckpt (tf.train.Checkpoint of the model), OUT/io.npz (NHWC images in [0, 1],
        final_avg_pool features, projection-head output, supervised logits, eval mode) and, with
        --saved-model, OUT/saved_model (the official run.build_saved_model export).
    python tests/simclrv2_official.py write-back WEIGHTS.npz IMAGES.npz OUT.npz [official flags]
        builds a fresh model, assigns every variable from WEIGHTS.npz (official name -> array,
        names as contrastive_plugins.importers.simclrv2 uses them) and writes its outputs on the images.

The official flags are run.py's (``--resnet_depth=50 --width_multiplier=1 --sk_ratio=0.0625
--image_size=64 --num_proj_layers=3 --ft_proj_selector=0``); pretraining mode with the linear head
(``--lineareval_while_pretraining``, the default) so projection and logits both come out.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import Any

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "simclr_tf2"
NUM_CLASSES = 10
BATCH = 4


def _model(flags_argv: list[str], seed: int) -> Any:
    sys.path.insert(0, str(REFERENCE))
    sys.modules.setdefault("tensorflow_datasets", types.ModuleType("tensorflow_datasets"))
    import model as model_lib  # the official tf2/model.py
    import run  # noqa: F401  (defines the official flags)
    import tensorflow as tf
    from absl import flags

    flags.FLAGS(["simclrv2_official", "--train_mode=pretrain", *flags_argv])
    tf.random.set_seed(seed)
    model = model_lib.Model(num_classes=NUM_CLASSES)
    size = flags.FLAGS.image_size
    model(tf.zeros((1, size, size, 3)), training=False)  # creates the variables
    return model


def _randomise(model: Any, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    for variable in model.variables:
        name = variable.name.split(":")[0]
        shape = tuple(variable.shape)
        if name.endswith("gamma"):
            value = rng.uniform(0.3, 0.9, shape)
        elif name.endswith(("beta", "moving_mean", "bias")):
            value = rng.normal(0.0, 0.2, shape)
        elif name.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, shape)
        else:  # kernels keep the official VarianceScaling / normal initial values
            continue
        variable.assign(value.astype(np.float32))


def _outputs(model: Any, images: Any) -> dict[str, Any]:
    import tensorflow as tf

    x = tf.constant(images)
    projection, logits = model(x, training=False)
    features = model.resnet_model(x, training=False)
    return {
        "images": images,
        "features": features.numpy(),
        "proj": projection.numpy(),
        "logits": logits.numpy(),
    }


def _images(size: int) -> Any:
    import numpy as np

    return np.random.default_rng(1).uniform(0.0, 1.0, (BATCH, size, size, 3)).astype(np.float32)


def build(out: Path, saved_model: bool, flags_argv: list[str]) -> None:
    import numpy as np
    import tensorflow as tf
    from absl import flags

    model = _model(flags_argv, seed=0)
    _randomise(model, seed=0)
    out.mkdir(parents=True, exist_ok=True)
    tf.train.Checkpoint(model=model).write(str(out / "ckpt"))
    np.savez(out / "io.npz", **_outputs(model, _images(flags.FLAGS.image_size)))
    if saved_model:
        import run

        tf.saved_model.save(run.build_saved_model(model), str(out / "saved_model"))
    print(out, "variables:", len(model.variables))


def _variable(model: Any, name: str) -> Any:
    """The variable at an official name: attributes, with list indices for numeric parts."""
    node = model
    for part in name.split("/"):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def write_back(weights: Path, images: Path, out: Path, flags_argv: list[str]) -> None:
    import numpy as np

    model = _model(flags_argv, seed=123)
    values = np.load(weights)
    assigned = set()
    for name in values.files:
        variable = _variable(model, name)
        variable.assign(values[name])
        assigned.add(id(variable))
    left = [v.name for v in model.variables if id(v) not in assigned]
    if left:
        raise SystemExit(f"{len(left)} variables not written back, e.g. {left[:3]}")
    np.savez(out, **_outputs(model, np.load(images)["images"]))


def main(argv: list[str]) -> None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    command, *rest = argv
    if command == "build":
        out, *flags_argv = rest
        saved = "--saved-model" in flags_argv
        build(Path(out), saved, [f for f in flags_argv if f != "--saved-model"])
    elif command == "write-back":
        weights, images, out, *flags_argv = rest
        write_back(Path(weights), Path(images), Path(out), flags_argv)
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
