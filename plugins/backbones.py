"""Encoders from other libraries: any timm model (``timm``) and any torchvision classifier (``torchvision``).

Both build the library's network with random weights (never a download: timm's ``pretrained`` is
always False, torchvision's ``weights`` always None), optionally load a local state-dict file
(``weights``), drop the final classification layer so the output is the pooled pre-logits features
``[B, feature_dim]``, and convert every batch-norm layer to the spec's normalization:

- Each ``BatchNorm1d``/``BatchNorm2d`` (and subclass: timm's ``BatchNormAct2d``,
  ``SyncBatchNorm``) becomes ``norm_layer(num_features)``, so ``global_bn`` shares statistics
  across ranks as it does in the ``resnet`` encoder. Scale, shift and running statistics are
  copied where the new layer has tensors of the same name and shape (all of them for
  ``batch_norm``/``global_bn``, whose state-dict keys are those of torch's batch norm); eps and
  momentum are the spec normalization's unless ``keep_bn_settings``. A timm ``BatchNormAct2d``
  (batch norm, dropout and activation in one layer) becomes :class:`NormAct`: the converted norm,
  then the layer's own dropout and activation (its keys gain ``.norm``).
- Other normalizations (the LayerNorms of ViT, Swin and ConvNeXt, GroupNorm, ...) stay the
  network's own: such a network trains the same under any spec normalization, which then only
  reaches the projection head and the classifier.

timm is optional (``pip install 'contrastive[timm]'``); the ``timm`` component is always listed and
a spec that uses it without timm installed fails validation naming the extra.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from contrastive import Component, hookimpl, option
from contrastive.checkpoint import load_checkpoint
from contrastive.errors import MissingExtraError, RunError
from contrastive.interfaces import NormLayer
from contrastive.registry import close_matches

log = logging.getLogger(__name__)

#: torchvision classifiers whose last layer is not a linear layer (no pre-logits features to cut at).
_NO_LINEAR_CLASSIFIER = frozenset({"squeezenet1_0", "squeezenet1_1"})

#: Batch-norm state copied into the converted layer where it has a tensor of the same name and shape.
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _require_timm(what: str = "the timm encoder") -> Any:
    """The ``timm`` module.

    Raises:
        MissingExtraError: timm is not installed (names the extra ``contrastive[timm]``).
    """
    try:
        return importlib.import_module("timm")
    except ImportError as exc:
        raise MissingExtraError(what, "timm", "timm") from exc


def _suggest(name: str, known: list[str]) -> str:
    hint = close_matches(name, known)
    return f" (did you mean {' or '.join(repr(h) for h in hint)}?)" if hint else ""


@attrs.frozen
class TimmOptions:
    """Options of the ``timm`` encoder."""

    model: str = option(
        doc="timm model name (timm.list_models()), e.g. convnext_atto, resnet50d, vit_tiny_patch16_224, "
        "efficientnet_b0; a pretrained tag (.augreg_in21k) only picks the model's config: nothing is "
        "downloaded."
    )
    weights: str = option(
        "",
        "Local state-dict file to start from (.safetensors, or a torch file read with weights_only; a "
        "'state_dict'/'model' entry and 'module.' prefixes are unwrapped; the classifier's keys are "
        "dropped); empty: random initialisation. Read again wherever the encoder is rebuilt: keep it there.",
    )
    image_size: int = option(
        0,
        "Input side passed as img_size to models with a fixed input size (ViT, DeiT, Swin, ...: set it to "
        "the augmentation's size); 0: the model's default. Other models take any size and ignore it.",
        min=0,
    )
    keep_bn_settings: bool = option(
        False,
        "Converted batch-norm layers keep the network's own eps and momentum (default: the spec "
        "normalization's).",
    )

    def __attrs_post_init__(self) -> None:
        try:
            timm = _require_timm()
        except MissingExtraError as exc:
            raise ValueError(str(exc)) from None
        if not timm.is_model(self.model):
            raise ValueError(
                f"model: unknown timm model {self.model!r}{_suggest(self.model, timm.list_models())}; "
                "python -c 'import timm; print(timm.list_models())' lists them"
            )


def _torchvision_models() -> list[str]:
    """Names of torchvision's classification networks (detection, video, ... excluded)."""
    import torchvision

    names: list[str] = torchvision.models.list_models(module=torchvision.models)
    return names


@attrs.frozen
class TorchvisionOptions:
    """Options of the ``torchvision`` encoder."""

    model: str = option(
        doc="torchvision.models classification network, e.g. resnet18, mobilenet_v3_small, efficientnet_b0, "
        "convnext_tiny, vit_b_16 (all but squeezenet, whose classifier is a convolution)."
    )
    weights: str = option(
        "",
        "Local state-dict file to start from (.safetensors, or a torch file read with weights_only; a "
        "'state_dict'/'model' entry and 'module.' prefixes are unwrapped; the final linear layer's keys are "
        "dropped); empty: random initialisation. Read again wherever the encoder is rebuilt: keep it there.",
    )
    image_size: int = option(
        0,
        "Input side for the networks built for one size (vit_*: image_size, maxvit_t: input_size; set it "
        "to the augmentation's size); 0: the network's default (224). Other networks take any size.",
        min=0,
    )
    keep_bn_settings: bool = option(
        False,
        "Converted batch-norm layers keep the network's own eps and momentum (default: the spec "
        "normalization's).",
    )

    def __attrs_post_init__(self) -> None:
        known = _torchvision_models()
        if self.model in _NO_LINEAR_CLASSIFIER:
            raise ValueError(
                f"model: {self.model} ends in a convolution, not a linear classifier: not supported"
            )
        if self.model not in known:
            usable = [name for name in known if name not in _NO_LINEAR_CLASSIFIER]
            hint = _suggest(self.model, usable)
            listing = (
                "; torchvision.models.list_models() lists them" if hint else f"; one of: {', '.join(usable)}"
            )
            raise ValueError(f"model: unknown torchvision classification model {self.model!r}{hint}{listing}")

    def torchvision_model(self) -> str | None:
        """The torchvision builder whose network loads this encoder's weights, its final linear layer
        aside, whenever the normalization keeps batch norm's keys (capability of encoders)."""
        return self.model


class NormAct(nn.Module):
    """A converted timm ``BatchNormAct2d``: the spec's normalization, then the layer's dropout and
    activation. ``[B, C, H, W]`` to the same shape."""

    def __init__(self, norm: nn.Module, drop: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.drop = drop
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.drop(self.norm(x)))
        return out


def _is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, _BatchNorm) and not isinstance(module, nn.BatchNorm3d)


def _copy_same_shape(source: object, target: object) -> None:
    """Copy ``source`` into ``target`` when both are tensors of one shape."""
    if isinstance(source, torch.Tensor) and isinstance(target, torch.Tensor) and source.shape == target.shape:
        target.copy_(source)


def _converted(old: _BatchNorm, norm_layer: NormLayer, keep_settings: bool) -> nn.Module:
    """``norm_layer(old.num_features)`` with ``old``'s tensors (and eps/momentum if kept)."""
    new = norm_layer(old.num_features)
    with torch.no_grad():
        for name in _BN_TENSORS:
            _copy_same_shape(getattr(old, name, None), getattr(new, name, None))
    if keep_settings:
        for name in ("eps", "momentum"):
            if hasattr(new, name):
                setattr(new, name, getattr(old, name))
    drop, act = getattr(old, "drop", None), getattr(old, "act", None)
    if isinstance(drop, nn.Module) and isinstance(act, nn.Module):  # timm's BatchNormAct2d
        return NormAct(new, drop, act)
    return new


def convert_batch_norms(network: nn.Module, norm_layer: NormLayer, *, keep_settings: bool = False) -> int:
    """Replace every batch-norm layer of ``network`` (not 3-d) by ``norm_layer(num_features)``, in place.

    Args:
        network: The network; its other modules are left as they are.
        norm_layer: Factory of the new layers (the spec's normalization).
        keep_settings: Give the new layers the old ones' eps and momentum.

    Returns:
        The number of layers replaced.
    """
    count = 0
    for name, child in list(network.named_children()):
        if _is_batch_norm(child):
            assert isinstance(child, _BatchNorm)
            setattr(network, name, _converted(child, norm_layer, keep_settings))
            count += 1
        else:
            count += convert_batch_norms(child, norm_layer, keep_settings=keep_settings)
    return count


def read_weights(path: str, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a local file: ``.safetensors``, or a torch file (``weights_only``).

    A ``state_dict`` or ``model`` entry holding the tensors is unwrapped, ``module.`` prefixes
    (DistributedDataParallel) are dropped.

    Raises:
        RunError: No such file, unreadable, or no mapping of tensors in it.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise RunError(f"{what}: weights file {file} does not exist (weights are never downloaded)")
    state: Any
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise RunError(f"{what}: reading {file} needs safetensors: pip install safetensors") from exc
        try:
            state = load_file(str(file), device="cpu")
        except Exception as exc:  # any failure to read means the file is unusable
            raise RunError(f"{what}: cannot read weights {file}: {type(exc).__name__}: {exc}") from exc
    else:
        state = load_checkpoint(file)
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RunError(f"{what}: {file} holds no state dict (a mapping of names to tensors)")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def load_weights(network: nn.Module, path: str, dropped: tuple[str, ...], what: str) -> None:
    """Load a weights file into ``network`` strictly, ignoring the keys under ``dropped`` prefixes.

    Raises:
        RunError: Keys missing or left over, or shapes that differ.
    """
    state = {
        k: v for k, v in read_weights(path, what).items() if not any(k.startswith(p + ".") for p in dropped)
    }
    try:
        missing, unexpected = network.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise RunError(f"{what}: {path} does not fit the network: {exc}") from exc
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RunError(
            f"{what}: {path} does not fit the network: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}"
        )


def _finish(
    network: nn.Module, feature_dim: int, norm_layer: NormLayer | None, keep: bool, what: str
) -> None:
    """Convert the batch norms and set ``feature_dim`` on ``network``."""
    if norm_layer is not None:
        count = convert_batch_norms(network, norm_layer, keep_settings=keep)
        log.debug("%s: %d batch-norm layers converted to the spec's normalization", what, count)
    setattr(network, "feature_dim", feature_dim)  # noqa: B010 - the encoder contract's attribute


def build_timm(options: TimmOptions, *, norm_layer: NormLayer | None = None) -> nn.Module:
    """Build the ``timm`` encoder.

    Args:
        options: Validated options.
        norm_layer: The spec's normalization; None keeps the network's batch norms.

    Returns:
        timm's network without classifier (``num_classes = 0``): ``float32 [B, 3, H, W]`` to its
        pooled pre-logits features ``[B, feature_dim]``, ``feature_dim`` set.

    Raises:
        MissingExtraError: timm is not installed.
        RunError: The network cannot be built with these options, or the weights do not fit it.
    """
    timm = _require_timm()
    what = f"timm encoder {options.model!r}"
    kwargs: dict[str, Any] = {}
    config = timm.get_pretrained_cfg(options.model)
    if options.image_size and config is not None and getattr(config, "fixed_input_size", False):
        kwargs["img_size"] = options.image_size
    try:
        network: nn.Module = timm.create_model(options.model, pretrained=False, num_classes=0, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise RunError(f"{what} cannot be built with {kwargs or 'its defaults'}: {exc}") from exc
    if options.weights:
        classifier = getattr(network, "pretrained_cfg", {}).get("classifier") or ()
        dropped = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        load_weights(network, options.weights, dropped, what)
    width = getattr(network, "head_hidden_size", None) or getattr(network, "num_features")  # noqa: B009
    _finish(network, int(width), norm_layer, options.keep_bn_settings, what)
    return network


def _torchvision_kwargs(options: TorchvisionOptions) -> dict[str, Any]:
    """Builder arguments besides ``weights``: the input size of fixed-size networks, no auxiliary
    classifiers (GoogLeNet, Inception v3)."""
    kwargs: dict[str, Any] = {}
    if options.image_size and options.model.startswith("vit_"):
        kwargs["image_size"] = options.image_size
    elif options.image_size and options.model.startswith("maxvit"):
        kwargs["input_size"] = (options.image_size, options.image_size)
    if options.model in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    return kwargs


def _last_linear(network: nn.Module) -> tuple[str, nn.Linear]:
    """The qualified name and module of the network's last linear layer (its classifier)."""
    found = [(name, module) for name, module in network.named_modules() if isinstance(module, nn.Linear)]
    if not found:
        raise RunError(f"{type(network).__name__} has no linear classifier to cut")
    return found[-1]


def _replace(network: nn.Module, qualified: str, module: nn.Module) -> None:
    parent_name, _, child = qualified.rpartition(".")
    parent = network.get_submodule(parent_name) if parent_name else network
    setattr(parent, child, module)


def build_torchvision(options: TorchvisionOptions, *, norm_layer: NormLayer | None = None) -> nn.Module:
    """Build the ``torchvision`` encoder.

    Args:
        options: Validated options.
        norm_layer: The spec's normalization; None keeps the network's batch norms.

    Returns:
        The torchvision network with its last linear layer replaced by an identity:
        ``float32 [B, 3, H, W]`` to the features that layer read, ``[B, feature_dim]``.

    Raises:
        RunError: The network cannot be built with these options, or the weights do not fit it.
    """
    import torchvision

    what = f"torchvision encoder {options.model!r}"
    kwargs = _torchvision_kwargs(options)
    try:
        network: nn.Module = torchvision.models.get_model(options.model, weights=None, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise RunError(f"{what} cannot be built with {kwargs or 'its defaults'}: {exc}") from exc
    name, linear = _last_linear(network)
    _replace(network, name, nn.Identity())
    if options.weights:
        load_weights(network, options.weights, (name,), what)
    _finish(network, linear.in_features, norm_layer, options.keep_bn_settings, what)
    return network


@hookimpl
def contrastive_register_encoders() -> list[Component]:
    """The encoders of other libraries."""
    return [
        Component(
            name="timm",
            build=build_timm,
            options=TimmOptions,
            summary="Any timm model's pooled pre-logits features (needs timm: the optional extra timm).",
        ),
        Component(
            name="torchvision",
            build=build_torchvision,
            options=TorchvisionOptions,
            summary="Any torchvision.models classification network without its last linear layer.",
        ),
    ]
