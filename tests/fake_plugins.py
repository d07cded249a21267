"""Plugin modules used by the unit tests through fake entry points (not installed anywhere)."""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from contrastive import Component, hookimpl, option
from contrastive.interfaces import LossKind, LossOutput


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


# A third-party plugin whose options share no name with any built-in component's: core must serve
# it from capabilities alone (tests/test_third_party_capabilities.py runs it through every stage).


@attrs.frozen
class TinyEncoderOptions:
    """Options of ``tiny_cnn``."""

    channels: int = option(8, "Filters of the convolution (the feature width of arch tiny).", min=1)
    arch: Literal["tiny", "torchvision_resnet18"] = option(
        "tiny", "tiny: one convolution and a global pool; torchvision_resnet18: torchvision's network."
    )

    def torchvision_model(self) -> str | None:
        return "resnet18" if self.arch == "torchvision_resnet18" else None


class TinyCNN(nn.Sequential):
    def __init__(self, channels: int, norm_layer: Any) -> None:
        super().__init__(
            nn.Conv2d(3, channels, 3, padding=1, bias=False),
            norm_layer(channels),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = channels


def build_tiny_cnn(options: TinyEncoderOptions, *, norm_layer: Any) -> nn.Module:
    if options.arch == "tiny":
        return TinyCNN(options.channels, norm_layer)
    from torchvision.models.resnet import BasicBlock, ResNet

    network = ResNet(BasicBlock, [2, 2, 2, 2], norm_layer=norm_layer)
    network.fc = nn.Identity()  # type: ignore[assignment]
    network.feature_dim = 512  # type: ignore[assignment]
    return network


@attrs.frozen
class StackedMlpOptions:
    """Options of ``stacked_mlp``."""

    widths: tuple[int, ...] = option((16, 8), "Output width of each layer, in order.", min=1)

    def layer_count(self) -> int:
        return len(self.widths)


class StackedMlp(nn.Module):
    def __init__(self, layers: list[nn.Module], dims: list[int]) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.dims = dims
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(x)
        return out

    def truncated(self, k: int) -> StackedMlp:
        if not 0 <= k < len(self.dims):
            raise ValueError(f"keep 0..{len(self.dims) - 1} layers, not {k}")
        return StackedMlp(list(self.layers)[:k], self.dims[: k + 1])


def build_stacked_mlp(
    options: StackedMlpOptions, *, in_dim: int, norm_layer: Any, num_classes: int | None = None
) -> StackedMlp:
    dims = [in_dim, *options.widths]
    layers: list[nn.Module] = [
        nn.Sequential(nn.Linear(dims[i], dims[i + 1]), norm_layer(dims[i + 1]), nn.ReLU())
        for i in range(len(options.widths))
    ]
    return StackedMlp(layers, dims)


@attrs.frozen
class SoftTargetOptions:
    """Options of ``soft_targets``."""

    tau: float = option(2.0, "Softmax temperature of teacher and student.", min=0.0, min_exclusive=True)
    hard_label_weight: float = option(0.0, "Weight of a cross-entropy term on labelled rows.", min=0.0)

    def loss_kind(self) -> LossKind:
        return LossKind.DISTILLATION

    def uses_labels(self) -> bool:
        return self.hard_label_weight > 0.0


class SoftTargets(nn.Module):
    def __init__(self, tau: float, hard_label_weight: float) -> None:
        super().__init__()
        self.tau, self.hard_label_weight = tau, hard_label_weight

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor) -> LossOutput:
        student, teacher = student.float(), teacher.detach().float()
        soft = torch.softmax(teacher / self.tau, dim=1)
        loss = -(soft * torch.log_softmax(student / self.tau, dim=1)).sum(dim=1).mean()
        labelled = targets != -1
        if self.hard_label_weight > 0.0 and bool(labelled.any()):
            loss = loss + self.hard_label_weight * F.cross_entropy(student[labelled], targets[labelled])
        agreement = (student.argmax(dim=1) == teacher.argmax(dim=1)).float().mean()
        return LossOutput(loss, {"agreement": agreement.detach()})


@attrs.frozen
class BankedInfoNceOptions:
    """Options of ``banked_infonce``."""

    bank: int = option(0, "Keys kept from earlier steps (0: none).", min=0)
    scale: float = option(5.0, "Multiplier of the cosine similarities.", min=0.0, min_exclusive=True)

    def loss_kind(self) -> LossKind:
        return LossKind.CONTRASTIVE

    def remembers_negatives(self) -> bool:
        return self.bank > 0


class BankedInfoNce(nn.Module):
    """One-direction InfoNCE (view 1 against view 2) with a bank of earlier keys as extra negatives;
    one rank only. Counts the steps it was fed, to show who feeds it."""

    def __init__(self, bank: int, scale: float) -> None:
        super().__init__()
        self.bank, self.scale = bank, scale
        self.keys, self.fed = torch.zeros(0, 0), 0

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> LossOutput:
        q, k = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
        columns = torch.cat([k, self.keys]) if self.keys.numel() else k
        logits = self.scale * q @ columns.T
        targets = torch.arange(len(q))
        return LossOutput(F.cross_entropy(logits, targets), {})

    def remember(self, keys1: torch.Tensor, keys2: torch.Tensor) -> None:
        new = F.normalize(keys2.float(), dim=1).detach()
        self.keys = (torch.cat([new, self.keys]) if self.keys.numel() else new)[: self.bank]
        self.fed += 1

    def get_extra_state(self) -> dict[str, Any]:
        return {"keys": self.keys, "fed": self.fed}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.keys, self.fed = state["keys"], int(state["fed"])


class ThirdParty:
    """An encoder, a head and losses as an outside package would write them."""

    @hookimpl
    def contrastive_register_encoders(self) -> list[Component]:
        return [Component("tiny_cnn", build_tiny_cnn, TinyEncoderOptions, summary="A tiny CNN (test).")]

    @hookimpl
    def contrastive_register_heads(self) -> list[Component]:
        return [Component("stacked_mlp", build_stacked_mlp, StackedMlpOptions, summary="An MLP (test).")]

    @hookimpl
    def contrastive_register_losses(self) -> list[Component]:
        return [
            Component(
                "soft_targets",
                lambda o: SoftTargets(o.tau, o.hard_label_weight),
                SoftTargetOptions,
                summary="Distillation on soft targets (test).",
            ),
            Component(
                "banked_infonce",
                lambda o: BankedInfoNce(o.bank, o.scale),
                BankedInfoNceOptions,
                summary="InfoNCE with a bank of earlier keys (test).",
            ),
        ]


# Plugins that break a contract core relies on (tests/test_contracts.py): each must be reported by
# `check-plugin` and `validate` as one line naming the component, its distribution and the rule.


class NoFeatureDim(nn.Sequential):
    """An encoder that forgets to expose ``feature_dim``."""

    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class ClaimsWrongWidth(TinyCNN):
    """An encoder whose ``feature_dim`` is not the width of its output."""

    def __init__(self, norm_layer: Any) -> None:
        super().__init__(4, norm_layer)
        self.feature_dim = 5


@attrs.frozen
class ViewOptions:
    """Options of the broken augmentations."""

    size: int = option(8, "Side of the views.", min=1)


class _Views:
    """Two views of ``size`` px; subclasses break one rule."""

    num_views = 2

    def __init__(self, options: ViewOptions) -> None:
        self.size = options.size

    def per_sample(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        view = F.interpolate(image[None].float(), size=(self.size, self.size)).to(torch.uint8)
        return view.expand(self.num_views, -1, -1, -1).clone()

    def on_device(self, views: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return views.float() / 255


class OneViewOnly(_Views):
    """Claims two views, makes one (``[1, 3, S, S]``): the engine would fail on ``views[:, 1]``."""

    def per_sample(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return super().per_sample(image, generator)[:1]


class FloatPerSample(_Views):
    """Returns floats from ``per_sample`` (the data workers collate uint8)."""

    def per_sample(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return super().per_sample(image, generator).float() / 255


class UintOnDevice(_Views):
    """Leaves ``on_device``'s output as uint8."""

    def on_device(self, views: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return views


@attrs.frozen
class BadAnnotationOptions:
    """An option annotated with a name the module never imports."""

    scale: Undefined = option(1.0, "Scale.")  # type: ignore[name-defined]  # noqa: F821


class TupleLoss(nn.Module):
    """Returns a plain tuple instead of LossOutput."""

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return (z1 - z2).pow(2).mean(), {}


class BadOptimizer:
    """An optimizer that leaves the classifier's parameters out."""

    @staticmethod
    def build(options: Any, *, model: nn.Module, roles: Any) -> torch.optim.Optimizer:
        kept = [entry.param for entry in roles if entry.role.value != "classifier"]
        return torch.optim.SGD(kept, lr=0.1)


class Broken:
    """One component per broken rule; `contrastive check-plugin broken` must list every one."""

    @hookimpl
    def contrastive_register_encoders(self) -> list[Component]:
        return [
            Component("no_norm_layer", lambda o: TinyCNN(4, nn.BatchNorm2d), summary="No norm_layer (test)."),
            Component(
                "no_feature_dim", lambda o, *, norm_layer: NoFeatureDim(), summary="No feature_dim (test)."
            ),
            Component(
                "wrong_width",
                lambda o, *, norm_layer: ClaimsWrongWidth(norm_layer),
                summary="Bad width (test).",
            ),
        ]

    @hookimpl
    def contrastive_register_augmentations(self) -> list[Component]:
        return [
            Component("one_view", OneViewOnly, ViewOptions, summary="One view of two (test)."),
            Component("float_views", FloatPerSample, ViewOptions, summary="Float per_sample (test)."),
            Component("uint_on_device", UintOnDevice, ViewOptions, summary="uint8 on_device (test)."),
        ]

    @hookimpl
    def contrastive_register_losses(self) -> list[Component]:
        return [
            Component(
                "bad_annotation", lambda o: TupleLoss(), BadAnnotationOptions, summary="Bad annotation."
            ),
            Component(
                "tuple_loss", lambda o: TupleLoss(), TupleLossOptions, summary="Returns a tuple (test)."
            ),
        ]

    @hookimpl
    def contrastive_register_optimizers(self) -> list[Component]:
        return [Component("drops_classifier", BadOptimizer.build, summary="Leaves parameters out (test).")]


@attrs.frozen
class TupleLossOptions:
    """Options of ``tuple_loss``: says how it is called, so the call is checked."""

    def loss_kind(self) -> LossKind:
        return LossKind.CONTRASTIVE


class RaisingAugmentation:
    """An augmentation whose ``per_sample`` raises (a plugin bug hitting every sample)."""

    num_views = 2
    size = 8

    def per_sample(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return image.no_such_method()  # type: ignore[attr-defined, no-any-return]

    def on_device(self, views: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return views.float() / 255.0


class SquareRaisingAugmentation(RaisingAugmentation):
    """Raises on square images only: a bug the contract check's dummy (a non-square image) misses,
    so it reaches the data-loader workers."""

    def per_sample(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if image.shape[-1] != image.shape[-2]:
            view = F.interpolate(image[None].float(), size=(self.size, self.size)).to(torch.uint8)
            return view.expand(self.num_views, -1, -1, -1).clone()
        return super().per_sample(image, generator)


class SizelessAugmentation(RaisingAugmentation):
    """An augmentation that forgot its ``size`` (the pipeline reads it to bound JPEG drafts)."""

    @property
    def size(self) -> int:  # type: ignore[override]
        raise AttributeError("'SizelessAugmentation' object has no attribute 'view_size'")


def _broken_encoder(options: Any, **inputs: Any) -> nn.Module:
    raise RuntimeError("the broken encoder's builder always fails")


class FirstDay:
    """A third party's buggy components: an augmentation raising on every sample, one without a
    ``size``, and an encoder whose builder raises."""

    @hookimpl
    def contrastive_register_augmentations(self) -> list[Component]:
        return [
            Component("raising", lambda options: RaisingAugmentation(), summary="Raises (test)."),
            Component("sizeless", lambda options: SizelessAugmentation(), summary="No size (test)."),
            Component(
                "raising_on_square",
                lambda options: SquareRaisingAugmentation(),
                summary="Raises on square images (test).",
            ),
        ]

    @hookimpl
    def contrastive_register_encoders(self) -> list[Component]:
        return [Component("broken_encoder", _broken_encoder, summary="Its builder raises (test).")]
