"""Plugin contract checks: build each component on a dummy input and check what core relies on.

``contrastive check-plugin NAME`` runs these on a component's default options, and ``contrastive
validate`` (and ``run``, before anything is written) on the components a spec names, with the
spec's options. Each broken rule is one :class:`Violation`, printed as one line naming the
component, its plugin and distribution, and the rule:

    encoders.tiny (plugin 'mine', contrastive-mine 0.1): the builder must accept the keyword
    norm_layer (TypeError: build() got an unexpected keyword argument 'norm_layer')

What is checked, by category (the contracts are :mod:`contrastive.interfaces` and
:mod:`contrastive.hookspecs`):

* every component: the options class's annotations resolve (``typing.get_type_hints``), its
  defaults validate;
* encoders: ``build(options, norm_layer=...)`` is accepted, the module has an integer
  ``feature_dim`` and maps ``float32 [2, 3, S, S]`` to ``[2, feature_dim]`` floats;
* heads: ``build(options, in_dim=D, norm_layer=..., num_classes=...)``, an integer ``out_dim``,
  ``[2, D]`` to ``[2, out_dim]`` (``out_dim == num_classes`` for a classifier); with
  ``layer_count()``, ``truncated(k)`` for every ``k`` keeps that contract;
* augmentations: integer ``num_views`` and ``size`` >= 1; ``per_sample`` maps ``uint8 [3, H, W]``
  to ``uint8 [V, 3, S, S]``; ``on_device`` maps ``uint8 [2, V, 3, S, S]`` to ``float32`` of the
  same shape;
* losses: called as their :class:`~contrastive.interfaces.LossKind` says, they return a
  :class:`~contrastive.interfaces.LossOutput` whose ``loss`` is a float scalar with a gradient and
  whose ``metrics`` are named scalar tensors; a loss that remembers negatives has ``remember``;
* optimizers: ``build(options, model=..., roles=...)`` returns a ``torch.optim.Optimizer`` whose
  param groups hold every trainable parameter once, all at one starting learning rate;
* normalizations: ``norm_layer(C)`` is a module keeping the shape of ``[2, C]`` and
  ``[2, C, H, W]`` inputs;
* schedules: a function of the step giving finite learning rates >= 0.

Datasets and loggers need data or a run directory: only their options are checked here (``run
--dry-run`` opens the datasets). Encoders and heads are built on torch's ``meta`` device first (no
memory, no arithmetic: a ResNet-152 3x costs nothing), and on the CPU when a module does not
support it.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from contrastive.errors import PluginError, Problem, UnknownComponentError
from contrastive.hookspecs import Category
from contrastive.interfaces import (
    LossKind,
    LossOutput,
    head_layer_count,
    loss_kind,
    loss_remembers_negatives,
)
from contrastive.parameters import parameter_roles
from contrastive.registry import RegisteredComponent, Registry, close_matches

#: Batch of the dummy inputs.
BATCH = 2
#: Side of the dummy images when nothing says otherwise (``check-plugin --size``).
DEFAULT_SIZE = 32
#: Input width of heads when no encoder says otherwise, and classes of a dummy classifier.
DUMMY_DIM, DUMMY_CLASSES = 16, 10
#: Categories whose components are not built by the checks (they need data or a run directory).
NOT_BUILT = (Category.DATASETS, Category.LOGGERS)


@attrs.frozen
class Violation:
    """One broken rule of one component.

    Attributes:
        component: ``category.name``.
        provider: ``plugin 'NAME', DISTRIBUTION VERSION``.
        rule: What is wrong, with the exception that showed it.
        where: The spec key that chose the component (empty for ``check-plugin``).
    """

    component: str
    provider: str
    rule: str
    where: str = ""

    def __str__(self) -> str:
        place = f"{self.where}: " if self.where else ""
        return f"{place}{self.component} ({self.provider}): {self.rule}"


class ContractError(PluginError):
    """Components that break their contract (exit 3), one line each.

    Attributes:
        violations: What was found.
    """

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations = tuple(violations)
        count = len(self.violations)
        lines = "\n".join(f"  {v}" for v in self.violations)
        super().__init__(
            f"{count} plugin contract violation{'s' if count != 1 else ''} "
            f"(a bug in the plugin, not in the spec):\n{lines}"
        )


class _Broken(Exception):
    """A rule failed; the message is the rule."""


def provider(entry: RegisteredComponent) -> str:
    """``plugin 'NAME', DISTRIBUTION VERSION`` for messages."""
    plugin = entry.plugin
    dist = f", {plugin.distribution} {plugin.version}".rstrip() if plugin.distribution else ""
    return f"plugin {plugin.name!r}{dist}"


def describe(entry: RegisteredComponent) -> str:
    """``category.name (plugin 'NAME', DISTRIBUTION VERSION)``."""
    return f"{entry.category}.{entry.name} ({provider(entry)})"


def _raised(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def annotation_problem(options_class: type) -> str:
    """Why the options class's annotations cannot be read, or ``""`` when they can."""
    try:
        typing.get_type_hints(options_class)
    except Exception as exc:  # NameError (a name not imported), TypeError, SyntaxError in a string
        return (
            f"the annotations of its options class {options_class.__qualname__} cannot be resolved "
            f"({_raised(exc)}): import every name an annotation uses at module level"
        )
    return ""


# --- choosing what to check --------------------------------------------------------------------


def select(registry: Registry, name: str) -> list[RegisteredComponent]:
    """The components ``check-plugin NAME`` checks.

    ``NAME`` is ``category.component`` (``encoders.resnet``), a component name alone (every
    category offering it), a plugin's entry-point name (all its components, as ``list-plugins``
    shows them) or a distribution name (all of that distribution's components).

    Raises:
        UnknownComponentError: Nothing has that name (the message suggests close ones).
    """
    entries = registry.components()
    category, dot, component = name.partition(".")
    if dot:
        return [registry.get(category, component)]
    for matches in (
        [e for e in entries if e.name == name],
        [e for e in entries if e.plugin.name == name],
        [e for e in entries if e.plugin.distribution == name],
    ):
        if matches:
            return matches
    known = (
        {e.name for e in entries}
        | {e.plugin.name for e in entries}
        | {e.plugin.distribution for e in entries}
    )
    hint = close_matches(name, sorted(k for k in known if k))
    suggestion = f" (did you mean {' or '.join(repr(h) for h in hint)}?)" if hint else ""
    raise UnknownComponentError(
        f"no component, plugin or distribution is named {name!r}{suggestion}; give CATEGORY.NAME, a "
        "component, a plugin or a distribution as `contrastive list-plugins` shows them"
    )


def check_component(
    entry: RegisteredComponent,
    options: Any = None,
    *,
    size: int = DEFAULT_SIZE,
    kind: LossKind | None = None,
    num_classes: int | None = None,
    where: str = "",
    stage: tuple[int, int] = (100, 256),
) -> list[Violation]:
    """Check one component; ``options`` None means its defaults (not built without them).

    Args:
        entry: The component.
        options: Its validated options, or None for the options class's defaults.
        size: Side of the dummy images of an encoder.
        kind: How a loss is called (default: its ``loss_kind()``; unchecked call without either).
        num_classes: A head built as a classifier of that many classes (None: a projection head).
        where: The spec key that chose it, for the message.
        stage: ``(epochs, global batch size)`` a schedule is built for.

    Returns:
        The violations found (empty when the component keeps its contract).
    """

    def violation(rule: str) -> list[Violation]:
        return [Violation(f"{entry.category}.{entry.name}", provider(entry), rule, where)]

    problem = annotation_problem(entry.options)
    if problem:
        return violation(problem)
    if options is None:
        try:
            options = _default_options(entry)
        except _Broken as exc:
            return violation(str(exc))
        if options is None:  # required options: only a spec can give them
            return []
    checker = _CHECKS.get(entry.category)
    if checker is None:
        return []
    try:
        checker(entry, options, _Inputs(size, kind, num_classes, *stage))
    except _Broken as exc:
        if entry.category != Category.HEADS or num_classes is not None or where:
            return violation(str(exc))
        try:  # check-plugin does not know the head's role: a classifier needs num_classes
            checker(entry, options, _Inputs(size, kind, DUMMY_CLASSES, *stage))
        except _Broken as second:
            return violation(
                f"as a projection head, {exc}; as a classifier of {DUMMY_CLASSES} classes, {second}"
            )
    return []


def check_spec(loaded: Any) -> list[Violation]:
    """Check every component a validated spec names, with the spec's options.

    Args:
        loaded: A :class:`contrastive.spec.loader.LoadedSpec`.
    """
    found: list[Violation] = []
    for stage in loaded.spec.stages():
        table = getattr(loaded.spec, stage)
        chosen = {
            field.name: (field.metadata["category"], getattr(table, field.name))
            for field in attrs.fields(type(table))
            if "category" in field.metadata and not field.metadata.get("many") and getattr(table, field.name)
        }
        size = _stage_size(loaded.registry, chosen)
        for key, (category, spec) in chosen.items():
            entry = loaded.registry.get(category, spec.name)
            problems = check_component(
                entry,
                spec.options,
                size=size,
                kind=_STAGE_KINDS.get(stage) if category == Category.LOSSES else None,
                num_classes=DUMMY_CLASSES if key == "classifier" else None,
                where=f"{stage}.{key}",
                stage=(table.epochs, table.batch_size),
            )
            found += problems
    for i, spec in enumerate(loaded.spec.runtime.loggers):
        found += check_component(
            loaded.registry.get(Category.LOGGERS, spec.name), spec.options, where=f"runtime.loggers.{i}"
        )
    return found


def view_problems(loaded: Any) -> list[Problem]:
    """Spec problems only a built augmentation shows: pretraining compares two views of every
    image, so its augmentation must make at least two (call after :func:`check_spec` passed)."""
    if loaded.spec.pretrain is None:
        return []
    chosen = loaded.spec.pretrain.augmentation
    try:
        views = chosen.build(loaded.registry).num_views
    except Exception:  # a broken augmentation is check_spec's to report
        return []
    if not isinstance(views, int) or views >= 2:
        return []
    key = "pretrain.augmentation.name"
    message = f"{chosen.name!r} makes {views} view of every image; pretraining needs 2 (e.g. simclr)"
    return [Problem(loaded.source_of(key), key, message)]


_STAGE_KINDS = {
    "pretrain": LossKind.CONTRASTIVE,
    "finetune": LossKind.SUPERVISED,
    "distill": LossKind.DISTILLATION,
}


def _stage_size(registry: Registry, chosen: dict[str, tuple[str, Any]]) -> int:
    """The view size of the stage's training augmentation (the encoder's input), if it builds."""
    category, spec = chosen.get("augmentation", ("", None))
    if spec is None:
        return DEFAULT_SIZE
    try:
        size = registry.get(category, spec.name).component.build(spec.options).size
    except Exception:  # its own check reports it
        return DEFAULT_SIZE
    return size if isinstance(size, int) and size > 0 else DEFAULT_SIZE


def required_options(entry: RegisteredComponent) -> list[str]:
    """The options a component cannot be built without (only a spec gives them): ``check-plugin``
    checks such a component's options class but builds nothing."""
    return [f.name for f in attrs.fields(entry.options) if f.default is attrs.NOTHING]


def _default_options(entry: RegisteredComponent) -> Any:
    """The options class's defaults, None when an option is required, :class:`_Broken` when the
    defaults themselves fail validation."""
    from contrastive.errors import SpecError
    from contrastive.options import structure_options

    if required_options(entry):
        return None
    try:
        return structure_options(entry.options, {}, source="defaults")
    except SpecError as exc:
        raise _Broken(f"its default options do not validate: {exc}") from exc


# --- the checks --------------------------------------------------------------------------------


@attrs.frozen
class _Inputs:
    size: int
    kind: LossKind | None
    num_classes: int | None
    epochs: int = 100
    batch_size: int = 256


def _build(entry: RegisteredComponent, options: Any, **inputs: Any) -> Any:
    try:
        return entry.component.build(options, **inputs)
    except TypeError as exc:
        missing = [k for k in inputs if repr(k) in str(exc) or f" {k}" in str(exc)]
        if inputs and ("keyword" in str(exc) or "argument" in str(exc)):
            named = ", ".join(missing or list(inputs))
            raise _Broken(
                f"the builder must accept build(options, {', '.join(f'{k}=...' for k in inputs)}); "
                f"it refused {named} ({_raised(exc)})"
            ) from exc
        raise _Broken(f"the builder raised {_raised(exc)}") from exc
    except Exception as exc:
        raise _Broken(f"the builder raised {_raised(exc)}") from exc


class _AnyBatchNorm(_BatchNorm):
    """Batch norm for any ``[B, C, ...]`` input: the checks' normalization layer."""

    def _check_input_dim(self, input: torch.Tensor) -> None:  # noqa: A002 - torch's name
        if input.dim() < 2:
            raise ValueError(f"expected [B, C, ...], got shape {tuple(input.shape)}")


def _norm_layer(num_features: int) -> nn.Module:
    return _AnyBatchNorm(num_features)


def _positive_int(obj: object, attribute: str, what: str) -> int:
    value = getattr(obj, attribute, None)
    if value is None:
        raise _Broken(f"the built {what} has no attribute {attribute!r} (core reads it)")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _Broken(f"the built {what}'s {attribute} must be an integer >= 1, got {value!r}")
    return value


def _shape(tensor: Any) -> str:
    if not isinstance(tensor, torch.Tensor):
        return type(tensor).__name__
    return f"{str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}"


@contextmanager
def _on(device: str) -> Iterator[None]:
    with torch.device(device), torch.no_grad():
        yield


def _network(check: Callable[[str], None]) -> None:
    """Run a network check on the meta device; whatever fails there (an operation without a meta
    kernel, a builder that needs real tensors, or a real violation) is decided on the CPU."""
    try:
        check("meta")
    except Exception:
        check("cpu")


def _check_encoder(entry: RegisteredComponent, options: Any, inputs: _Inputs) -> None:
    def on(device: str) -> None:
        with _on(device):
            encoder = _build(entry, options, norm_layer=_norm_layer)
            dim = _positive_int(encoder, "feature_dim", "encoder")
            if not isinstance(encoder, nn.Module):
                raise _Broken(f"the builder must return an nn.Module, got {type(encoder).__name__}")
            x = torch.zeros(BATCH, 3, inputs.size, inputs.size)
            out = _forward(encoder.eval(), x, device)
            _expect(
                out, (BATCH, dim), f"maps float32 [{BATCH}, 3, {inputs.size}, {inputs.size}]", "feature_dim"
            )

    _network(on)


def _forward(module: Any, x: torch.Tensor, device: str) -> Any:
    try:
        return module(x)
    except Exception as exc:
        if device == "meta":
            raise  # retried on the CPU
        raise _Broken(f"its forward on {_shape(x)} raised {_raised(exc)}") from exc


def _expect(out: Any, shape: tuple[int, ...], call: str, named: str) -> None:
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape or not out.is_floating_point():
        raise _Broken(
            f"{call} to {_shape(out)}; core needs floats {list(shape)} (the second size is {named})"
        )


def _check_head(entry: RegisteredComponent, options: Any, inputs: _Inputs) -> None:
    count = head_layer_count(options) if inputs.num_classes is None else None

    def on(device: str) -> None:
        with _on(device):
            head = _build(
                entry, options, in_dim=DUMMY_DIM, norm_layer=_norm_layer, num_classes=inputs.num_classes
            )
            _check_head_module(head, device, "head")
            if inputs.num_classes is not None and head.out_dim != inputs.num_classes:
                raise _Broken(
                    f"built as a classifier of {inputs.num_classes} classes, its out_dim is {head.out_dim}"
                )
            for k in range(count + 1 if count is not None else 0):
                cut = getattr(head, "truncated", None)
                if not callable(cut):
                    raise _Broken("its options have layer_count() but the built head has no truncated(k)")
                try:
                    part = cut(k)
                except Exception as exc:
                    raise _Broken(f"truncated({k}) raised {_raised(exc)} (layer_count() is {count})") from exc
                _check_head_module(part, device, f"truncated({k})")

    _network(on)


def _check_head_module(head: Any, device: str, what: str) -> None:
    if not isinstance(head, nn.Module):
        raise _Broken(f"{what} must be an nn.Module, got {type(head).__name__}")
    dim = _positive_int(head, "out_dim", what)
    out = _forward(head.eval(), torch.zeros(BATCH, DUMMY_DIM), device)
    _expect(out, (BATCH, dim), f"{what} maps [{BATCH}, {DUMMY_DIM}]", "out_dim")


def _check_augmentation(entry: RegisteredComponent, options: Any, inputs: _Inputs) -> None:
    augmentation = _build(entry, options)
    views = _positive_int(augmentation, "num_views", "augmentation")
    size = _positive_int(augmentation, "size", "augmentation")
    generator = torch.Generator().manual_seed(0)
    made = []
    for height, width in ((size + 7, 2 * size + 3), (2 * size + 5, size + 1)):
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        try:
            out = augmentation.per_sample(image, torch.Generator().manual_seed(1))
        except Exception as exc:
            raise _Broken(f"per_sample on uint8 {[3, height, width]} raised {_raised(exc)}") from exc
        if (
            not isinstance(out, torch.Tensor)
            or out.dtype != torch.uint8
            or tuple(out.shape) != (views, 3, size, size)
        ):
            raise _Broken(
                f"per_sample maps uint8 {[3, height, width]} to {_shape(out)}; core needs "
                f"uint8 {[views, 3, size, size]} (num_views, 3, size, size)"
            )
        made.append(out)
    batch = torch.stack(made)
    try:
        out = augmentation.on_device(batch, torch.Generator().manual_seed(2))
    except Exception as exc:
        raise _Broken(f"on_device on uint8 {list(batch.shape)} raised {_raised(exc)}") from exc
    if not isinstance(out, torch.Tensor) or out.dtype != torch.float32 or out.shape != batch.shape:
        raise _Broken(
            f"on_device maps uint8 {list(batch.shape)} to {_shape(out)}; core needs float32 of that shape"
        )


def _loss_call(kind: LossKind) -> tuple[tuple[torch.Tensor, ...], str]:
    generator = torch.Generator().manual_seed(0)
    if kind is LossKind.CONTRASTIVE:
        z = torch.randn(2, 4, 8, generator=generator)
        return (z[0].requires_grad_(), z[1].requires_grad_()), "loss(z1, z2) on [4, 8] projections"
    logits = torch.randn(4, DUMMY_CLASSES, generator=generator).requires_grad_()
    if kind is LossKind.SUPERVISED:
        return (logits, torch.tensor([0, 1, 2, 3])), f"loss(logits, targets) on [4, {DUMMY_CLASSES}] logits"
    teacher = torch.randn(4, DUMMY_CLASSES, generator=generator)
    return (logits, teacher, torch.tensor([0, -1, 2, -1])), "loss(student_logits, teacher_logits, targets)"


def _check_loss(entry: RegisteredComponent, options: Any, inputs: _Inputs) -> None:
    loss = _build(entry, options)
    if not callable(loss):
        raise _Broken(f"the builder must return a callable module, got {type(loss).__name__}")
    if loss_remembers_negatives(options) and not callable(getattr(loss, "remember", None)):
        raise _Broken(
            "its options say remembers_negatives() but the built loss has no remember(keys1, keys2)"
        )
    kind = inputs.kind or loss_kind(options)
    if kind is None:
        return  # nothing says how it is called
    args, call = _loss_call(kind)
    try:
        out = loss(*args)
    except Exception as exc:
        raise _Broken(f"{call} raised {_raised(exc)}") from exc
    if not isinstance(out, LossOutput):
        raise _Broken(
            f"{call} returned {type(out).__name__}; it must return contrastive.interfaces.LossOutput"
        )
    value = out.loss
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.is_floating_point():
        raise _Broken(f"{call}: LossOutput.loss is {_shape(value)}; it must be a float scalar tensor")
    if not value.requires_grad:
        raise _Broken(f"{call}: LossOutput.loss has no gradient (computed without the inputs, or detached)")
    if not isinstance(out.metrics, dict):
        raise _Broken(f"{call}: LossOutput.metrics is {type(out.metrics).__name__}; it must be a dict")
    for name, metric in out.metrics.items():
        if not isinstance(name, str) or not isinstance(metric, torch.Tensor) or metric.numel() != 1:
            raise _Broken(
                f"{call}: metric {name!r} is {_shape(metric)}; metrics must be named scalar tensors"
            )


class _TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = _AnyBatchNorm(4)
        self.classifier = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.norm(self.conv(x)).mean(dim=(2, 3)))
        return out


def _check_optimizer(entry: RegisteredComponent, options: Any, inputs: _Inputs) -> None:
    model = _TinyClassifier()
    roles = parameter_roles(model, classifier=model.classifier)
    optimizer = _build(entry, options, model=model, roles=roles)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise _Broken(f"the builder must return a torch.optim.Optimizer, got {type(optimizer).__name__}")
    held = [id(p) for group in optimizer.param_groups for p in group["params"]]
    trainable = {id(entry.param) for entry in roles}
    if len(held) != len(set(held)) or set(held) != trainable:
        raise _Broken(
            f"its param groups must hold each of the {len(trainable)} trainable parameters of `roles` once; "
            f"they hold {len(held)} entries, {len(set(held) & trainable)} of them trainable parameters"
        )
    rates = {float(group.get("lr", math.nan)) for group in optimizer.param_groups}
    if len(rates) != 1:
        raise _Broken(f"its param groups must start at one base learning rate, got {sorted(rates)}")
    model(torch.zeros(BATCH, 3, 8, 8)).sum().backward()
    try:
        optimizer.step()
    except Exception as exc:
        raise _Broken(f"step() raised {_raised(exc)}") from exc


def _check_normalization(entry: RegisteredComponent, options: Any, inputs: _Inputs) -> None:
    factory = _build(entry, options)
    if not callable(factory):
        raise _Broken(
            f"the builder must return a factory norm_layer(num_features), got {type(factory).__name__}"
        )
    for shape in ((BATCH, 4), (BATCH, 4, 3, 3)):
        try:
            layer = factory(4)
            out = layer.eval()(torch.randn(*shape))
        except Exception as exc:
            raise _Broken(f"norm_layer(4) on float32 {list(shape)} raised {_raised(exc)}") from exc
        if not isinstance(layer, nn.Module) or not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
            raise _Broken(
                f"norm_layer(4) maps float32 {list(shape)} to {_shape(out)}; it must keep the shape"
            )


def _check_schedule(entry: RegisteredComponent, options: Any, inputs: _Inputs) -> None:
    steps_per_epoch, epochs = 10, inputs.epochs
    schedule = _build(
        entry,
        options,
        base_lr=0.1,
        global_batch_size=inputs.batch_size,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
    )
    if not callable(schedule):
        raise _Broken(f"the builder must return a function of the step, got {type(schedule).__name__}")
    for step in (0, steps_per_epoch, steps_per_epoch * epochs - 1):
        try:
            lr = schedule(step)
        except Exception as exc:
            raise _Broken(f"schedule({step}) raised {_raised(exc)}") from exc
        try:
            value = float(lr)
        except (TypeError, ValueError):
            value = math.nan
        if isinstance(lr, bool) or not math.isfinite(value) or value < 0:
            raise _Broken(f"schedule({step}) returned {lr!r}; it must be a finite number >= 0")


_CHECKS: dict[str, Callable[[RegisteredComponent, Any, _Inputs], None]] = {
    Category.ENCODERS: _check_encoder,
    Category.HEADS: _check_head,
    Category.AUGMENTATIONS: _check_augmentation,
    Category.LOSSES: _check_loss,
    Category.OPTIMIZERS: _check_optimizer,
    Category.NORMALIZATIONS: _check_normalization,
    Category.SCHEDULES: _check_schedule,
}
