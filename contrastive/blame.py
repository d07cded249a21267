"""Telling a plugin's bug from a bad sample or a bad spec: an exception raised by plugin code
becomes a :class:`contrastive.errors.PluginCodeError` naming the component and its distribution.

Two places raise it:

- the data pipeline, around an augmentation's ``per_sample`` (data-loader workers: the error
  crosses the process boundary as text, which :class:`PluginCodeError` reads back);
- the runner, around a whole stage: an exception that is not a :class:`ContrastiveError` and whose
  innermost frame of plugin code lies in a registered plugin's package (found by walking the
  traceback) is that plugin's.

Only a decoding or reading failure counts as a bad sample (:mod:`contrastive.data.pipeline`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import traceback
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from contrastive.errors import PluginCodeError

#: Attribute :func:`tag` sets on a built component (where it can): ``"<category> '<name>'"``.
TAG = "_contrastive_component"


def tag(obj: Any, category: object, name: str, distribution: str = "", version: str = "") -> None:
    """Remember on ``obj`` which component (of which distribution) built it; objects that refuse
    attributes stay untagged (:func:`describe` then names their class)."""
    text = f"{getattr(category, 'value', category)} {name!r}"
    if distribution:
        text += f" of distribution {distribution} {version}".rstrip()
    with contextlib.suppress(AttributeError, TypeError):
        object.__setattr__(obj, TAG, text)


def distribution_of(module: str) -> str:
    """``"my-plugin 1.0"``: the installed distribution providing ``module``'s top package ('' if none)."""
    top = module.split(".", 1)[0]
    names = importlib.metadata.packages_distributions().get(top, [])
    if not names:
        return ""
    try:
        return f"{names[0]} {importlib.metadata.version(names[0])}"
    except importlib.metadata.PackageNotFoundError:
        return names[0]


def describe(obj: Any) -> str:
    """``augmentations 'name' of distribution my-plugin 1.0 (class my_plugin.Aug)``."""
    cls = type(obj)
    where = f"class {cls.__module__}.{cls.__qualname__}"
    named = getattr(obj, TAG, None)
    if isinstance(named, str):
        return f"{named} ({where})"
    dist = distribution_of(cls.__module__)
    return f"{where} of distribution {dist}" if dist else where


def plugin_failure(obj: Any, method: str, error: BaseException) -> PluginCodeError:
    """The error for ``obj.method`` having raised ``error`` (its traceback kept as details)."""
    details = "".join(traceback.format_exception(error))
    text = " ".join(str(error).split())  # one line: a worker's error crosses over as its last line
    return PluginCodeError(
        f"{describe(obj)}: {method} raised {type(error).__name__}: {text}; this is a bug in that "
        "plugin, not in the data (run with -v for its traceback)",
        details,
    )


def _frames(tb: TracebackType | None) -> list[tuple[str, str]]:
    """``(module, function)`` of every frame of ``tb``, outermost first."""
    return [
        (str(frame.f_globals.get("__name__", "")), frame.f_code.co_name) for frame, _ in traceback.walk_tb(tb)
    ]


def blame_plugin(
    error: BaseException, plugins: Iterable[Any], components: Sequence[Any] = ()
) -> PluginCodeError | None:
    """The plugin whose code raised ``error``, or None when no frame of a plugin's package raised it.

    Args:
        error: An exception that is not a ContrastiveError.
        plugins: :class:`contrastive.registry.PluginInfo` of the installed plugins.
        components: The :class:`contrastive.registry.RegisteredComponent` of the components the
            spec uses; the one whose builder lives in the failing module is named.
    """
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return None  # out of memory inside a plugin's forward is the workload's size, not a bug
    packages = {info.module.split(":", 1)[0].split(".", 1)[0]: info for info in plugins}
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for item in chain:
        found = [(m, f) for m, f in _frames(item.__traceback__) if m.split(".", 1)[0] in packages]
        if not found:
            continue
        module, function = found[-1]
        info = packages[module.split(".", 1)[0]]
        named = [
            f"{c.category} {c.name!r}"
            for c in components
            if getattr(c.component.build, "__module__", None) == module
        ]
        dist = f"distribution {info.distribution} {info.version}".strip() if info.distribution else ""
        who = f"plugin {info.name!r}" + (f" ({dist})" if dist else "")
        if len(named) == 1:
            who = f"{named[0]} of {who}"
        text = " ".join(str(error).split())
        return PluginCodeError(
            f"{who} raised {type(error).__name__} in {module}.{function}: {text}; this is a bug in "
            "that plugin (run with -v for its traceback)",
            "".join(traceback.format_exception(error)),
        )
    return None
