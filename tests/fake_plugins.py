"""Plugin modules used by the unit tests through fake entry points (not installed anywhere)."""

from __future__ import annotations

from typing import Any, Literal

import attrs

from contrastive import Component, hookimpl, option


@attrs.frozen
class LossOptions:
    temperature: float = option(0.1, "Softmax temperature.", min=0.0, min_exclusive=True)
    reduction: Literal["mean", "sum"] = option("mean", "How to reduce over rows.")


@attrs.frozen
class EncoderOptions:
    depth: int = option(50, "Depth.", choices=(18, 34, 50))
    width: int = option(1, "Width multiplier.", min=1, max=3)
    strides: tuple[int, ...] = option((1, 2), "Strides.")


@attrs.frozen
class DatasetOptions:
    urls: str = option(doc="Where the shards are.")
    labelled: bool = option(True, "Whether labels are exposed.")


def _build(options: Any, **inputs: Any) -> tuple[Any, dict[str, Any]]:
    return options, inputs


def _c(name: str, options: type | None = None) -> Component:
    if options is None:
        return Component(name, _build, summary=f"Fake {name}.")
    return Component(name, _build, options, summary=f"Fake {name}.")


class Core:
    """Every component name the spec schema uses as a default, with small option classes."""

    @hookimpl
    def contrastive_register_losses(self) -> list[Component]:
        return [_c("nt_xent", LossOptions), _c("cross_entropy"), _c("distillation", LossOptions)]

    @hookimpl
    def contrastive_register_encoders(self) -> list[Component]:
        return [_c("resnet", EncoderOptions)]

    @hookimpl
    def contrastive_register_augmentations(self) -> list[Component]:
        return [_c("simclr"), _c("crop_flip"), _c("center_crop")]

    @hookimpl
    def contrastive_register_heads(self) -> list[Component]:
        return [_c("projection_mlp"), _c("linear")]

    @hookimpl
    def contrastive_register_optimizers(self) -> list[Component]:
        return [_c("lars"), _c("sgd")]

    @hookimpl
    def contrastive_register_normalizations(self) -> list[Component]:
        return [_c("global_bn"), _c("batch_norm")]

    @hookimpl
    def contrastive_register_schedules(self) -> list[Component]:
        return [_c("warmup_cosine")]

    @hookimpl
    def contrastive_register_datasets(self) -> list[Component]:
        return [_c("webdataset", DatasetOptions)]


class Clash:
    """Offers a loss whose name Core already uses."""

    @hookimpl
    def contrastive_register_losses(self) -> list[Component]:
        return [_c("nt_xent")]


class Misspelled:
    """Implements a hook name that does not exist."""

    @hookimpl
    def contrastive_register_loses(self) -> list[Component]:
        return []


class BadReturn:
    """Returns something that is not a list of components."""

    @hookimpl
    def contrastive_register_losses(self) -> list[Component]:
        return ["nt_xent"]  # type: ignore[list-item]
