"""Import SimCLRv2's official TensorFlow 2 checkpoints as ``final.pt`` records.

The official TF2 code (``google-research/simclr``, ``tf2/``) saves its ``model.Model`` with
object-based checkpoints: a SavedModel's ``variables/`` folder (the released checkpoints under
``gs://simclr-checkpoints-tf2/simclrv2/``) or a ``tf.train.Checkpoint``. Their variables are named
by the attribute path from the model, e.g.::

    resnet_model/initial_conv_relu_max_pool/0/conv2d/kernel                    [7, 7, 3, 64]
    resnet_model/block_groups/0/layers/0/conv_relu_dropblock_layers/3/conv2d_0/kernel
    _projection_head/linear_layers/2/bn_relu/bn/moving_variance                [128]
    supervised_head/linear_layer/dense/kernel                                  [2048, 1000]

(the *official names* used throughout this module: the path below the model, without the
checkpoint's ``/.ATTRIBUTES/VARIABLE_VALUE`` suffix or whatever holds the model). A SavedModel
keys most trainable variables by their position in a list (``trainable_variables_list/17``); the
checkpoint's object graph still holds every attribute path, and :func:`names_from_object_graph`
recovers the official names from it.

Everything but reading the checkpoint is pure and TensorFlow-free:

- :func:`infer_architecture`: official names and shapes to the :class:`Architecture` (depth, width
  multiplier, selective kernels, stem, projection-head layers, classes).
- :func:`official_variables`: every official name an architecture has, with the PyTorch key and
  layout it maps to (:class:`Target`); :func:`check_names` compares it with a checkpoint and
  reports every variable left unmapped or missing at once.
- :func:`convert`: the official arrays to PyTorch tensors (kernels ``HWIO -> OIHW``, dense
  ``[in, out] -> [out, in]``, batch norm ``gamma/beta/moving_mean/moving_variance ->
  weight/bias/running_mean/running_var``).
- :func:`records`: the ``final.pt`` dicts the stages read (``"pretrain"``: encoder and projection
  head, what ``finetune.init`` takes; ``"classifier"``: encoder, the head up to ``from_layer`` and
  the supervised head, what ``distill.teacher`` takes).

:func:`import_checkpoint` ties them together with TensorFlow (only for reading; the optional extra
``pip install 'contrastive[tf]'``). Given a whole SavedModel folder it also runs the SavedModel and
the imported network on the same random images and refuses to write a file that disagrees.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np
import torch
from torch import nn

from contrastive.checkpoint import save_final
from contrastive.errors import RunError
from contrastive.registry import Registry, load_registry
from contrastive.spec.structure import ComponentSpec, structure_options

log = logging.getLogger(__name__)

#: How to get TensorFlow for this command.
TF_EXTRA = "pip install 'contrastive[tf]'"

#: ``BATCH_NORM_EPSILON`` of the official ``tf2/resnet.py`` (every batch-norm layer, heads included).
BN_EPSILON = 1e-5
#: The official ``--batch_norm_decay`` default 0.9, in PyTorch's convention (weight of the batch).
BN_MOMENTUM = 0.1
#: ``--sk_ratio`` of every released SK model (run.py: "Recommendation: 0.0625").
SK_RATIO = 0.0625
#: ``min_dim`` of the official ``SK_Conv2D``.
SK_MIN_DIM = 32
#: Bottleneck blocks per stage of the official depths (``tf2/resnet.py`` ``model_params``).
DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152, (3, 24, 36, 3): 200}
#: The first components of an official name: the model's three parts.
ANCHORS = ("resnet_model", "_projection_head", "supervised_head")
#: Object-graph edges that only alias objects already reachable by their attribute path (Keras'
#: and tf.Module's variable lists, SavedModel functions); never followed.
GENERIC_EDGES = frozenset(
    {
        "variables",
        "trainable_variables",
        "non_trainable_variables",
        "trainable_weights",
        "non_trainable_weights",
        "weights",
        "trainable_variables_list",
        "keras_api",
        "regularization_losses",
        "layer_regularization_losses",
        "metrics",
        "layer_metrics",
        "signatures",
        "__call__",
        "call_and_return_conditional_losses",
        "call_and_return_all_conditional_losses",
        "_jit_compiled_convolution_op",
    }
)
_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
_BN_LEAVES = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
_BLOCK = re.compile(r"^resnet_model/block_groups/(\d+)/layers/(\d+)/")
_HEAD_LAYER = re.compile(r"^_projection_head/linear_layers/(\d+)/dense/kernel$")

Kind = Literal["pretrain", "classifier"]
Layout = Literal["conv", "dense", "vector"]


class CheckpointImportError(RunError):
    """An official checkpoint that cannot be imported: unreadable, not SimCLRv2's network, variables
    left unmapped or missing, or outputs that disagree with the SavedModel's."""


class TensorFlowMissing(RunError):
    """TensorFlow is not installed (it is needed to read official checkpoints)."""


@attrs.frozen
class Architecture:
    """What an official checkpoint's variables say about its network.

    Attributes:
        depth: ResNet depth (50, 101, 152 or 200; bottleneck blocks).
        width: Width multiplier (stem ``64 * width`` channels).
        sk_ratio: Selective-kernel ratio; 0: no SK (and no ResNet-D stem or shortcuts).
        cifar_stem: The 3x3 stride-1 stem without max-pool (official ``image_size <= 32``).
        head_layers: Layers of the projection head (0: none, as SimCLRv1's released checkpoints).
        head_out_dim: Width of the projection head's output (0 without a head).
        head_hidden_dim: Width of its hidden layers (the encoder's feature width officially).
        num_classes: Classes of the supervised head (None without one).
        classifier_in_dim: Width the supervised head reads (None without one).
    """

    depth: int
    width: int
    sk_ratio: float
    cifar_stem: bool
    head_layers: int
    head_out_dim: int
    head_hidden_dim: int
    num_classes: int | None
    classifier_in_dim: int | None

    @property
    def feature_dim(self) -> int:
        """Width of the encoder's pooled features."""
        return 2048 * self.width

    @property
    def name(self) -> str:
        """The official checkpoint folder name, e.g. ``r152_3x_sk1``."""
        return f"r{self.depth}_{self.width}x_sk{int(self.sk_ratio > 0)}"

    @property
    def blocks(self) -> tuple[int, int, int, int]:
        """Bottleneck blocks per stage."""
        return next(layout for layout, depth in DEPTHS.items() if depth == self.depth)

    def head_dims(self) -> list[int]:
        """Widths along the projection head: ``dims[k]`` after ``k`` layers (``dims[0]``: features)."""
        if self.head_layers == 0:
            return [self.feature_dim]
        return [self.feature_dim] + [self.head_hidden_dim] * (self.head_layers - 1) + [self.head_out_dim]

    def from_layer_candidates(self) -> list[int]:
        """Head layers whose output width matches what the supervised head reads."""
        if self.classifier_in_dim is None:
            return []
        return [k for k, dim in enumerate(self.head_dims()) if dim == self.classifier_in_dim]

    def encoder_options(self) -> dict[str, Any]:
        """Options of this project's ``resnet`` encoder for this network (widths above 3x through
        ``base_width``, which gives the same layers)."""
        wide = self.width > 3
        return {
            "depth": self.depth,
            "width_multiplier": 1 if wide else self.width,
            "base_width": 64 * self.width if wide else 64,
            "sk_ratio": self.sk_ratio,
            "cifar_stem": self.cifar_stem,
            "maxpool_padding": "tf_same",
            "bn_momentum": BN_MOMENTUM,
            "bn_eps": BN_EPSILON,
        }

    def head_options(self) -> dict[str, Any]:
        """Options of this project's ``projection_mlp`` head."""
        hidden = 0 if self.head_hidden_dim == self.feature_dim else self.head_hidden_dim
        return {"num_layers": self.head_layers, "out_dim": self.head_out_dim, "hidden_dim": hidden}

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON and the record)."""
        return {"name": self.name, **attrs.asdict(self)}


@attrs.frozen
class Target:
    """Where one official variable goes.

    Attributes:
        key: Key in the record's ``state_dict`` (``encoder.``, ``head.`` or ``classifier.`` prefix).
        layout: ``conv`` (``[h, w, in, out] -> [out, in, h, w]``), ``dense`` (``[in, out] -> [out,
            in]``) or ``vector`` (unchanged).
    """

    key: str
    layout: Layout


def _fail(message: str, names: Sequence[str] = (), limit: int = 12) -> CheckpointImportError:
    listed = "".join(f"\n  {name}" for name in sorted(names)[:limit])
    more = f"\n  ... and {len(names) - limit} more" if len(names) > limit else ""
    return CheckpointImportError(message + listed + more)


# ---------------------------------------------------------------------------------------------
# Architecture inference (pure: official names and shapes only)
# ---------------------------------------------------------------------------------------------


def infer_architecture(shapes: Mapping[str, Sequence[int]]) -> Architecture:
    """The network an official checkpoint holds, from its variables' names and shapes alone.

    Args:
        shapes: Official name (see the module docstring) to shape, e.g. from
            ``tf.train.load_checkpoint(...).get_variable_to_shape_map()`` after
            :func:`names_from_object_graph`.

    Raises:
        CheckpointImportError: Not the official SimCLR ResNet, or inconsistent shapes.
    """
    encoder = [name for name in shapes if name.startswith("resnet_model/")]
    if not encoder:
        raise _fail(
            "no resnet_model/ variables: not an official SimCLR TF2 checkpoint; it holds", list(shapes)
        )
    if any("/conv2d_bn_layers/" in name for name in encoder):
        raise _fail(
            "ResNet-18/34 (basic blocks) cannot be imported: the official network projects the shortcut "
            "of every stage's first block, this project's only where the shape changes"
        )
    if any("/se_layer/" in name for name in encoder):
        raise _fail("squeeze-and-excitation layers (--se_ratio > 0) have no counterpart in this project")
    counts: dict[int, set[int]] = {}
    for name in encoder:
        match = _BLOCK.match(name)
        if match:
            counts.setdefault(int(match[1]), set()).add(int(match[2]))
    if sorted(counts) != [0, 1, 2, 3] or any(blocks != set(range(len(blocks))) for blocks in counts.values()):
        found = {group: sorted(blocks) for group, blocks in sorted(counts.items())}
        raise _fail(f"expected 4 block groups of consecutive blocks, found {found}")
    layout = tuple(len(counts[group]) for group in range(4))
    if layout not in DEPTHS:
        raise _fail(f"blocks per stage {layout} match no official depth ({DEPTHS})")
    depth = DEPTHS[layout]  # type: ignore[index]

    stem = "resnet_model/initial_conv_relu_max_pool"
    first = _shape(shapes, f"{stem}/0/conv2d/kernel")
    sk = any(name.endswith("/conv2d_0/kernel") for name in encoder)
    if f"{stem}/4/conv2d/kernel" in shapes:  # the ResNet-D stem: three 3x3 convolutions
        cifar_stem = False
        base = _shape(shapes, f"{stem}/4/conv2d/kernel")[3]
        if not sk:
            raise _fail(
                "a three-convolution (ResNet-D) stem without selective kernels: not an official network"
            )
    else:
        cifar_stem = first[0] == 3
        base = first[3]
        if not cifar_stem and first[0] != 7:
            raise _fail(f"stem kernel {first}: expected 7x7 (ImageNet) or 3x3 (CIFAR)")
    if base % 64:
        raise _fail(f"stem width {base} is not a multiple of 64")
    width = base // 64
    sk_ratio = _infer_sk_ratio(shapes, layout, width) if sk else 0.0

    head_layers = max((int(m[1]) + 1 for n in shapes if (m := _HEAD_LAYER.match(n))), default=0)
    head_out_dim = head_hidden_dim = 0
    if head_layers:
        kernels = [
            _shape(shapes, f"_projection_head/linear_layers/{i}/dense/kernel") for i in range(head_layers)
        ]
        head_out_dim = kernels[-1][1]
        head_hidden_dim = kernels[0][1] if head_layers > 1 else 2048 * width
        dims = [2048 * width] + [head_hidden_dim] * (head_layers - 1) + [head_out_dim]
        for i, kernel in enumerate(kernels):
            if tuple(kernel) != (dims[i], dims[i + 1]):
                raise _fail(
                    f"projection head layer {i} kernel {tuple(kernel)}, expected {(dims[i], dims[i + 1])}"
                )

    num_classes = classifier_in_dim = None
    dense = "supervised_head/linear_layer/dense/kernel"
    if dense in shapes:
        classifier_in_dim, num_classes = (int(v) for v in _shape(shapes, dense))
    return Architecture(
        depth=depth,
        width=width,
        sk_ratio=sk_ratio,
        cifar_stem=cifar_stem,
        head_layers=head_layers,
        head_out_dim=int(head_out_dim),
        head_hidden_dim=int(head_hidden_dim),
        num_classes=num_classes,
        classifier_in_dim=classifier_in_dim,
    )


def _shape(shapes: Mapping[str, Sequence[int]], name: str) -> tuple[int, ...]:
    if name not in shapes:
        raise _fail(f"missing variable {name}")
    return tuple(int(v) for v in shapes[name])


def _infer_sk_ratio(shapes: Mapping[str, Sequence[int]], layout: tuple[int, ...], width: int) -> float:
    """The SK ratio every block's ``conv2d_0`` (``[1, 1, filters, max(int(filters * r), 32)]``) agrees on."""
    pairs = []
    for group, count in enumerate(layout):
        for block in range(count):
            main = f"resnet_model/block_groups/{group}/layers/{block}/conv_relu_dropblock_layers"
            kernel = _shape(shapes, f"{main}/3/conv2d_0/kernel")
            pairs.append((kernel[2], kernel[3]))
    candidates = [SK_RATIO, *sorted({mid / filters for filters, mid in pairs if mid > SK_MIN_DIM})]
    for ratio in candidates:
        if all(mid == max(int(filters * ratio), SK_MIN_DIM) for filters, mid in pairs):
            return ratio
    raise _fail(f"selective-kernel widths {sorted(set(pairs))} fit no single sk_ratio")


# ---------------------------------------------------------------------------------------------
# The mapping (pure)
# ---------------------------------------------------------------------------------------------


def official_variables(arch: Architecture) -> dict[str, Target]:
    """Every variable the official network of ``arch`` has, by official name, and its target."""
    out: dict[str, Target] = {}

    def conv(name: str, key: str) -> None:
        out[name] = Target(key, "conv")

    def norm(name: str, key: str, center: bool = True) -> None:
        for leaf, attribute in _BN_LEAVES.items():
            if center or leaf != "beta":
                out[f"{name}/{leaf}"] = Target(f"{key}.{attribute}", "vector")

    sk = arch.sk_ratio > 0
    stem = "resnet_model/initial_conv_relu_max_pool"
    if arch.cifar_stem or not sk:  # conv, identity, batch norm (, max-pool, identity)
        conv(f"{stem}/0/conv2d/kernel", "encoder.conv1.weight")
        norm(f"{stem}/2/bn", "encoder.bn1")
    else:  # conv, bn, conv, bn, conv, identity, bn, max-pool, identity
        for index, torch_index in ((0, 0), (2, 3), (4, 6)):
            conv(f"{stem}/{index}/conv2d/kernel", f"encoder.conv1.{torch_index}.weight")
        norm(f"{stem}/1/bn", "encoder.conv1.1")
        norm(f"{stem}/3/bn", "encoder.conv1.4")
        norm(f"{stem}/6/bn", "encoder.bn1")
    for group, count in enumerate(arch.blocks):
        for block in range(count):
            official = f"resnet_model/block_groups/{group}/layers/{block}"
            ours = f"encoder.layer{group + 1}.{block}"
            main = f"{official}/conv_relu_dropblock_layers"
            conv(f"{main}/0/conv2d/kernel", f"{ours}.conv1.weight")
            norm(f"{main}/1/bn", f"{ours}.bn1")
            if sk:  # conv, bn, dropblock, SK_Conv2D, dropblock, conv, bn, dropblock
                kernel = f"{main}/3"
                conv(f"{kernel}/conv2d_fixed_padding/conv2d/kernel", f"{ours}.conv2.conv.weight")
                norm(f"{kernel}/batch_norm_relu/bn", f"{ours}.conv2.bn")
                conv(f"{kernel}/conv2d_0/kernel", f"{ours}.conv2.fc_reduce.weight")
                norm(f"{kernel}/batch_norm_relu_1/bn", f"{ours}.conv2.fc_bn")
                conv(f"{kernel}/conv2d_1/kernel", f"{ours}.conv2.fc_expand.weight")
                conv(f"{main}/5/conv2d/kernel", f"{ours}.conv3.weight")
                norm(f"{main}/6/bn", f"{ours}.bn3")
            else:  # conv, bn, dropblock, conv, bn, dropblock, conv, bn, dropblock
                conv(f"{main}/3/conv2d/kernel", f"{ours}.conv2.weight")
                norm(f"{main}/4/bn", f"{ours}.bn2")
                conv(f"{main}/6/conv2d/kernel", f"{ours}.conv3.weight")
                norm(f"{main}/7/bn", f"{ours}.bn3")
            if block == 0:  # every stage's first block projects its shortcut
                shortcut = f"{official}/projection_layers"
                if sk:  # ResNet-D: [FixedPadding if strided,] AveragePooling2D, conv, bn
                    at = 2 if group > 0 else 1
                    conv(f"{shortcut}/{at}/conv2d/kernel", f"{ours}.downsample.1.weight")
                    norm(f"{shortcut}/{at + 1}/bn", f"{ours}.downsample.2")
                else:
                    conv(f"{shortcut}/0/conv2d/kernel", f"{ours}.downsample.0.weight")
                    norm(f"{shortcut}/1/bn", f"{ours}.downsample.1")
    for layer in range(arch.head_layers):  # dense (no bias), bn (the last without beta)
        official = f"_projection_head/linear_layers/{layer}"
        out[f"{official}/dense/kernel"] = Target(f"head.layers.{layer}.0.weight", "dense")
        norm(f"{official}/bn_relu/bn", f"head.layers.{layer}.1", center=layer < arch.head_layers - 1)
    if arch.num_classes is not None:
        out["supervised_head/linear_layer/dense/kernel"] = Target("classifier.weight", "dense")
        out["supervised_head/linear_layer/dense/bias"] = Target("classifier.bias", "vector")
    return out


def check_names(arch: Architecture, names: Sequence[str] | set[str]) -> dict[str, Target]:
    """The targets of ``arch``, after checking a checkpoint holds exactly its variables.

    Raises:
        CheckpointImportError: Variables the mapping does not know (listed) or lacks (listed).
    """
    expected = official_variables(arch)
    unmapped = sorted(set(names) - set(expected))
    missing = sorted(set(expected) - set(names))
    if unmapped:
        raise _fail(f"{len(unmapped)} variable(s) of the checkpoint have no place in {arch.name}:", unmapped)
    if missing:
        raise _fail(f"the checkpoint lacks {len(missing)} variable(s) of {arch.name}:", missing)
    return expected


def to_torch(value: Any, layout: Layout) -> torch.Tensor:
    """One official array in PyTorch's layout (float32, contiguous)."""
    array = np.asarray(value, dtype=np.float32)
    if layout == "conv":
        array = array.transpose(3, 2, 0, 1)
    elif layout == "dense":
        array = array.T
    return torch.from_numpy(np.ascontiguousarray(array))


def from_torch(tensor: torch.Tensor, layout: Layout) -> np.ndarray:
    """The inverse of :func:`to_torch`: a PyTorch tensor in the official layout."""
    array = tensor.detach().cpu().float().numpy()
    if layout == "conv":
        array = array.transpose(2, 3, 1, 0)
    elif layout == "dense":
        array = array.T
    return np.ascontiguousarray(array)


def convert(arch: Architecture, variables: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Every official variable as a PyTorch tensor, keyed as :func:`official_variables` says.

    Raises:
        CheckpointImportError: Unmapped or missing variables.
    """
    targets = check_names(arch, set(variables))
    return {target.key: to_torch(variables[name], target.layout) for name, target in targets.items()}


# ---------------------------------------------------------------------------------------------
# Records and modules (this project's side)
# ---------------------------------------------------------------------------------------------


def _component(registry: Registry, category: str, name: str, values: Mapping[str, Any]) -> ComponentSpec:
    entry = registry.get(category, name)
    options = structure_options(entry.options, values, source=f"import simclrv2 ({category}.{name})")
    return ComponentSpec(name=name, options=options, category=category)


def components(arch: Architecture, registry: Registry | None = None) -> dict[str, ComponentSpec]:
    """The components that rebuild ``arch``: encoder, normalization, head (if any), classifier (if any).

    Batch norm is ``global_bn`` (the official ``--global_bn`` default, also in its fine-tuning
    command) with the official epsilon and decay.
    """
    registry = registry or load_registry()
    chosen = {
        "encoder": _component(registry, "encoders", "resnet", arch.encoder_options()),
        "normalization": _component(
            registry, "normalizations", "global_bn", {"momentum": BN_MOMENTUM, "eps": BN_EPSILON}
        ),
    }
    if arch.head_layers:
        chosen["head"] = _component(registry, "heads", "projection_mlp", arch.head_options())
    if arch.num_classes is not None:
        chosen["classifier"] = _component(registry, "heads", "linear", {"bias": True, "zero_init": False})
    return chosen


def records(
    arch: Architecture,
    tensors: Mapping[str, torch.Tensor],
    *,
    kind: Kind,
    from_layer: int = 0,
    registry: Registry | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``final.pt`` dict of an import.

    Args:
        arch: The imported network.
        tensors: :func:`convert`'s output.
        kind: ``"pretrain"`` (encoder and projection head: a ``finetune.init``) or
            ``"classifier"`` (encoder, head up to ``from_layer``, supervised head: a
            ``distill.teacher``).
        from_layer: Head layers the supervised head reads (``classifier`` only).
        registry: Plugins to build with; default every installed one.
        provenance: Stored under ``"imported"`` with the architecture.

    Raises:
        CheckpointImportError: The kind needs a part the checkpoint does not have, or the tensors
            do not fit the rebuilt modules (names or shapes).
    """
    from contrastive.stages.records import ClassifierRecord, ComponentRecord, PretrainRecord

    registry = registry or load_registry()
    chosen = components(arch, registry)
    if kind == "pretrain":
        if "head" not in chosen:
            raise _fail("the checkpoint has no projection head: import it with --kind classifier")
        rec: PretrainRecord | ClassifierRecord = PretrainRecord(
            encoder=ComponentRecord.of(chosen["encoder"]),
            normalization=ComponentRecord.of(chosen["normalization"]),
            head=ComponentRecord.of(chosen["head"]),
        )
        prefixes: tuple[str, ...] = ("encoder.", "head.")
    else:
        if "classifier" not in chosen:
            raise _fail("the checkpoint has no supervised head (supervised_head/): use --kind pretrain")
        if from_layer not in arch.from_layer_candidates():
            raise _fail(
                f"the supervised head reads {arch.classifier_in_dim} features; after {from_layer} head "
                f"layer(s) there are {arch.head_dims()[min(from_layer, len(arch.head_dims()) - 1)]} "
                f"(possible: {arch.from_layer_candidates()})"
            )
        assert arch.num_classes is not None
        rec = ClassifierRecord(
            encoder=ComponentRecord.of(chosen["encoder"]),
            normalization=ComponentRecord.of(chosen["normalization"]),
            head=ComponentRecord.of(chosen["head"]) if from_layer > 0 else None,
            from_layer=from_layer,
            classifier=ComponentRecord.of(chosen["classifier"]),
            num_classes=arch.num_classes,
        )
        prefixes = ("encoder.", *(f"head.layers.{i}." for i in range(from_layer)), "classifier.")
    kept = {key: value for key, value in tensors.items() if key.startswith(prefixes)}
    with torch.device("meta"):
        reference = build_module(rec.to_state(), registry).state_dict()
    state: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key, meta in reference.items():
        if key in kept:
            if tuple(kept[key].shape) != tuple(meta.shape):
                problems.append(
                    f"{key}: {tuple(kept[key].shape)} from the checkpoint, {tuple(meta.shape)} here"
                )
            state[key] = kept[key]
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
        else:
            problems.append(f"{key}: nothing in the checkpoint maps to it")
    problems += [f"{key}: no such parameter here" for key in sorted(set(kept) - set(reference))]
    if problems:
        raise _fail(f"the converted weights do not fit this project's {arch.name}:", problems)
    imported = {"architecture": arch.as_dict(), **(provenance or {})}
    return attrs.evolve(rec, state_dict=state, imported=imported).to_state()


def build_module(rec: Mapping[str, Any], registry: Registry | None = None) -> nn.Module:
    """The untrained module a record describes: ``ContrastiveModel`` (pretrain) or ``Classifier``
    (with the head cut at ``from_layer``); its ``state_dict`` keys are the record's."""
    from contrastive.stages.models import rebuild
    from contrastive.stages.records import read_record

    return rebuild(registry or load_registry(), read_record(rec, "import"), "import")


def load_module(rec: Mapping[str, Any], registry: Registry | None = None) -> nn.Module:
    """:func:`build_module` with the record's weights loaded, in eval mode."""
    module = build_module(rec, registry)
    module.load_state_dict(rec["state_dict"])
    return module.eval()


# ---------------------------------------------------------------------------------------------
# Reading checkpoints (TensorFlow)
# ---------------------------------------------------------------------------------------------


def tensorflow() -> Any:
    """The ``tensorflow`` module.

    Raises:
        TensorFlowMissing: It is not installed; the message says how to get it.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:  # torch._dynamo loads triton, which segfaults once TensorFlow is loaded: load it first
        importlib.import_module("torch._dynamo")
    except Exception as exc:  # only an ordering precaution
        log.debug("torch._dynamo not preloaded: %s", exc)
    try:
        return importlib.import_module("tensorflow")
    except ImportError as exc:
        raise TensorFlowMissing(
            f"reading official SimCLRv2 checkpoints needs TensorFlow, which is not installed: {TF_EXTRA} "
            f"(or pip install tensorflow-cpu); only this command needs it ({exc})"
        ) from exc


def checkpoint_prefix(source: Path) -> tuple[str, Path | None]:
    """The checkpoint prefix to read, and the SavedModel folder when ``source`` is (in) one.

    ``source`` may be a SavedModel folder, its ``variables/`` folder, a ``tf.train.Checkpoint``
    prefix (``.../ckpt`` beside ``ckpt.index``) or a folder holding one checkpoint.
    """
    source = Path(source)
    if (source / "variables" / "variables.index").exists():
        saved = source if (source / "saved_model.pb").exists() else None
        return str(source / "variables" / "variables"), saved
    if (source / "variables.index").exists():
        parent = source.parent
        return str(source / "variables"), parent if (parent / "saved_model.pb").exists() else None
    if Path(f"{source}.index").exists():
        return str(source), None
    if source.is_dir():
        indexes = sorted(source.glob("*.index"))
        if len(indexes) == 1:
            return str(indexes[0].with_suffix("")), None
    raise CheckpointImportError(
        f"{source}: no TensorFlow checkpoint there; give a SavedModel folder (holding variables/), "
        "its variables/ folder, or a checkpoint prefix (the path without .index)"
    )


def names_from_object_graph(
    children: Sequence[Sequence[tuple[str, int]]], variable_keys: Sequence[str | None]
) -> dict[str, set[str]]:
    """Official names of the variables an object graph reaches from the model's parts.

    Args:
        children: Per node, its ``(local name, node id)`` edges.
        variable_keys: Per node, its checkpoint key if it is a variable, else None.

    Returns:
        Checkpoint key to the official names (attribute paths from ``resnet_model``,
        ``_projection_head`` or ``supervised_head``) that reach it. Keras' and tf.Module's variable
        lists (:data:`GENERIC_EDGES`) and Keras' generic ``layers`` lists are not followed.

    Raises:
        CheckpointImportError: A part is held by two different objects (two models in one file).
    """
    anchors: dict[str, set[int]] = {}
    for edges in children:
        for name, node in edges:
            if name in ANCHORS:
                anchors.setdefault(name, set()).add(node)
    found: dict[str, set[str]] = {}
    for anchor, nodes in anchors.items():
        if len(nodes) > 1:
            raise CheckpointImportError(f"the checkpoint holds {len(nodes)} different {anchor} objects")
        stack: list[tuple[int, tuple[str, ...], frozenset[int]]] = [
            (next(iter(nodes)), (anchor,), frozenset())
        ]
        while stack:
            node, path, seen = stack.pop()
            key = variable_keys[node]
            if key is not None:
                found.setdefault(key, set()).add("/".join(path))
                continue
            for name, child in children[node]:
                if name in GENERIC_EDGES or name.startswith("trace_") or child in seen:
                    continue
                if name == "layers" and not (len(path) >= 2 and path[-2] == "block_groups"):
                    continue  # Keras' list of sublayers; BlockGroup's own `layers` is the one kept
                if len(path) < 32:
                    stack.append((child, (*path, name), seen | {node}))
    return found


@attrs.frozen
class OfficialCheckpoint:
    """The variables of an official checkpoint by official name, read on demand.

    Attributes:
        prefix: The checkpoint prefix read.
        saved_model: The SavedModel folder it belongs to, if any.
        keys: Official name to checkpoint key.
        shapes: Official name to shape.
        outside: Checkpoint keys outside the model (optimizer slots, step counters): not imported.
        reader: TensorFlow's checkpoint reader.
    """

    prefix: str
    saved_model: Path | None
    keys: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    outside: list[str]
    reader: Any

    def arrays(self, names: Sequence[str]) -> Iterator[tuple[str, np.ndarray]]:
        for name in names:
            yield name, np.asarray(self.reader.get_tensor(self.keys[name]))


def read_checkpoint(source: Path) -> OfficialCheckpoint:
    """Open an official checkpoint and name its variables (TensorFlow needed).

    Raises:
        TensorFlowMissing: No TensorFlow.
        CheckpointImportError: No checkpoint there, a TF1 (name-based) checkpoint, or one whose
            variables cannot be named.
    """
    tf = tensorflow()
    prefix, saved_model = checkpoint_prefix(source)
    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as exc:  # TF raises a zoo of errors for unreadable files
        raise CheckpointImportError(f"cannot read the checkpoint {prefix}: {exc}") from exc
    key_shapes = {
        key: tuple(int(v) for v in shape) for key, shape in reader.get_variable_to_shape_map().items()
    }
    if _OBJECT_GRAPH not in key_shapes:
        tf1 = [
            key for key in key_shapes if key.startswith(("base_model/", "ema_model/", "head_contrastive/"))
        ]
        if tf1:
            raise CheckpointImportError(
                f"{prefix} is a TF1 checkpoint (variables such as {tf1[0]}): only the TF2 checkpoints "
                "(gs://simclr-checkpoints-tf2/simclrv2/...) can be imported"
            )
        raise CheckpointImportError(f"{prefix} has no object graph: not a TF2 checkpoint")
    from tensorflow.core.protobuf import trackable_object_graph_pb2  # type: ignore[import-not-found]

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH))
    children = [[(child.local_name, child.node_id) for child in node.children] for node in graph.nodes]
    variable_keys = [
        next((a.checkpoint_key for a in node.attributes if a.name == "VARIABLE_VALUE"), None)
        for node in graph.nodes
    ]
    named = names_from_object_graph(children, variable_keys)
    keys: dict[str, str] = {}
    for key, names in named.items():
        for name in names:
            keys[name] = key
    outside = sorted(set(key_shapes) - set(named) - {_OBJECT_GRAPH})
    if not keys:
        raise _fail(f"{prefix}: no variable under {', '.join(ANCHORS)}; its variables:", sorted(key_shapes))
    shapes = {name: key_shapes[key] for name, key in keys.items()}
    return OfficialCheckpoint(prefix, saved_model, keys, shapes, outside, reader)


def _pick_names(checkpoint: OfficialCheckpoint, arch: Architecture) -> dict[str, str]:
    """One official name per checkpoint key (the one the mapping knows, when a key has several)."""
    expected = official_variables(arch)
    by_key: dict[str, list[str]] = {}
    for name, key in checkpoint.keys.items():
        by_key.setdefault(key, []).append(name)
    chosen: dict[str, str] = {}
    for key, names in by_key.items():
        known = [name for name in names if name in expected]
        chosen[(known or sorted(names))[0]] = key
    return chosen


# ---------------------------------------------------------------------------------------------
# Verification against a SavedModel (TensorFlow)
# ---------------------------------------------------------------------------------------------

#: Largest ``max |ours - official| / max |official|`` accepted when verifying.
TOLERANCE = 1e-4


def relative_difference(ours: torch.Tensor | np.ndarray, official: np.ndarray) -> float:
    """``max |ours - official|`` over the output's scale ``max |official|``."""
    mine = ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    scale = float(np.abs(official).max())
    return float(np.abs(mine - official).max()) / (scale if scale > 0 else 1.0)


def verify_saved_model(
    saved_model: Path,
    arch: Architecture,
    tensors: Mapping[str, torch.Tensor],
    registry: Registry,
    image_size: int = 64,
    batch: int = 2,
) -> dict[str, Any]:
    """Run the SavedModel and the imported network on the same random images.

    Returns:
        ``{"image_size", "features", "projection", "logits": {from_layer: difference},
        "from_layer"}``: relative differences (:func:`relative_difference`), ``projection`` None
        without a head, ``logits`` empty and ``from_layer`` None without a supervised head;
        ``from_layer`` is the head layer whose logits agree.

    Raises:
        CheckpointImportError: Features or projections differ by more than :data:`TOLERANCE`, or
            no head layer gives the SavedModel's logits.
    """
    tf = tensorflow()
    loaded = tf.saved_model.load(str(saved_model))
    rng = np.random.default_rng(0)
    images = rng.uniform(0.0, 1.0, size=(batch, image_size, image_size, 3)).astype(np.float32)
    outputs = loaded(tf.constant(images), trainable=False)
    official = {name: np.asarray(value) for name, value in outputs.items()}
    full = dict(tensors)
    pretrain = records(arch, full, kind="pretrain", registry=registry) if arch.head_layers else None
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        if pretrain is not None:
            model = load_module(pretrain, registry)
            features = getattr(model, "encoder")(x)  # noqa: B009
            head = getattr(model, "head")  # noqa: B009
        else:
            classifier_only = load_module(records(arch, full, kind="classifier", registry=registry), registry)
            features = getattr(classifier_only, "encoder")(x)  # noqa: B009
            head = None
        report: dict[str, Any] = {
            "image_size": image_size,
            "projection": None,
            "logits": {},
            "from_layer": None,
        }
        report["features"] = relative_difference(features, official["final_avg_pool"])
        if head is not None and "proj_head_output" in official:
            report["projection"] = relative_difference(head(features), official["proj_head_output"])
        if arch.num_classes is not None and "logits_sup" in official:
            weight = tensors["classifier.weight"]
            bias = tensors["classifier.bias"]
            for k in arch.from_layer_candidates():
                hidden = head.forward_to(features, k) if head is not None else features
                logits = hidden @ weight.T + bias
                report["logits"][k] = relative_difference(logits, official["logits_sup"])
            best = min(report["logits"], key=report["logits"].get, default=None)
            if best is None or report["logits"][best] > TOLERANCE:
                raise CheckpointImportError(
                    f"no projection-head layer gives the SavedModel's logits: differences {report['logits']}"
                )
            report["from_layer"] = best
    bad = {
        part: report[part]
        for part in ("features", "projection")
        if report[part] is not None and not report[part] <= TOLERANCE
    }
    if bad:
        raise CheckpointImportError(
            f"the imported network disagrees with the SavedModel {saved_model} (relative differences "
            f"{bad}, tolerance {TOLERANCE}); nothing written"
        )
    return report


# ---------------------------------------------------------------------------------------------
# The whole import
# ---------------------------------------------------------------------------------------------


def import_checkpoint(
    source: Path,
    out: Path,
    *,
    kind: Kind = "pretrain",
    from_layer: int | None = None,
    verify: bool = True,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Import an official SimCLRv2 TF2 checkpoint and write ``out`` (a ``final.pt``).

    Args:
        source: SavedModel folder, its ``variables/`` folder, or a ``tf.train.Checkpoint`` prefix.
        out: Where to write the record.
        kind: ``"pretrain"`` (for ``finetune.init``) or ``"classifier"`` (for ``distill.teacher``).
        from_layer: Head layers the supervised head reads (``classifier`` only). Default: what
            running the SavedModel shows, else the only width-compatible layer, else an error.
        verify: Run the SavedModel (when ``source`` is one) against the import before writing.
        registry: Plugins to build with; default every installed one.

    Returns:
        A JSON-ready report: ``out``, ``kind``, ``from_layer``, ``architecture``, ``variables``
        (mapped count, keys outside the model), ``verification`` (None when not run).

    Raises:
        TensorFlowMissing: No TensorFlow.
        CheckpointImportError: Anything that stops a faithful import (nothing is written then).
    """
    registry = registry or load_registry()
    checkpoint = read_checkpoint(source)
    arch = infer_architecture(checkpoint.shapes)
    names = _pick_names(checkpoint, arch)
    targets = check_names(arch, set(names))
    tensors = {
        targets[name].key: to_torch(array, targets[name].layout)
        for name, array in checkpoint.arrays(list(names))
    }
    verification = None
    if verify and checkpoint.saved_model is not None:
        verification = verify_saved_model(checkpoint.saved_model, arch, tensors, registry)
    if kind == "classifier":
        from_layer = _choose_from_layer(arch, from_layer, verification)
    provenance = {
        "format": "simclrv2-tf2",
        "source": str(source),
        "variables": len(names),
        "verification": _plain(verification),
    }
    rec = records(
        arch, tensors, kind=kind, from_layer=from_layer or 0, registry=registry, provenance=provenance
    )
    save_final(Path(out), rec)
    return {
        "out": str(out),
        "kind": kind,
        "from_layer": from_layer if kind == "classifier" else None,
        "architecture": arch.as_dict(),
        "encoder": rec["encoder"],
        "variables": {"mapped": len(names), "outside_model": checkpoint.outside},
        "verification": _plain(verification),
    }


def _choose_from_layer(arch: Architecture, given: int | None, verification: Mapping[str, Any] | None) -> int:
    shown = verification.get("from_layer") if verification else None
    if given is not None:
        if shown is not None and shown != given:
            raise CheckpointImportError(
                f"--from-layer {given}, but the SavedModel's logits are those of head layer {shown} "
                f"(differences {verification['logits'] if verification else {}})"
            )
        return given
    if shown is not None:
        return int(shown)
    candidates = arch.from_layer_candidates()
    if len(candidates) == 1:
        return candidates[0]
    raise CheckpointImportError(
        f"the supervised head reads {arch.classifier_in_dim} features, which head layers {candidates} "
        "all give: pass --from-layer (0: encoder output, as the linear-eval heads of the pretrained "
        "checkpoints; 1: SimCLRv2's fine-tuning, --ft_proj_selector=1), or give the whole SavedModel "
        "folder so the import can tell by running it"
    )


def _plain(value: Any) -> Any:
    """JSON- and ``weights_only``-safe copy (dict keys as strings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
