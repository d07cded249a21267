"""The run directory: resolved spec, plugin list, and the guard against mixing two specs.

Layout (stages add their own sub-directories)::

    <run-dir>/spec.resolved.toml   the spec with every default filled in
    <run-dir>/plugins.json         installed plugins and the components this spec uses

A recorded spec (or a stage's recorded table) is compared with the current one by
:func:`spec_difference`. A key the record lacks is no difference while its current value is its
default: such an option is newer than the record, and a new option's default keeps the behaviour
from before it, so runs made by an older version stay resumable and their finished stages reusable.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import attrs

from contrastive import atomic
from contrastive.errors import FileSystemError, RunDirectoryClash
from contrastive.spec.loader import LoadedSpec, to_dict
from contrastive.spec.structure import ComponentSpec
from contrastive.spec.toml_writer import dumps
from contrastive.version import __version__

#: :func:`contrastive.atomic.write_text`, under the name engine and runner import it by.
write_text_atomic = atomic.write_text

SPEC_FILE = "spec.resolved.toml"
PLUGINS_FILE = "plugins.json"
#: Tables that may differ when a run directory is reused: they change how, not what, a run computes
#: (``bench`` only configures the label-efficiency protocol, which leaves it out of its runs).
_IGNORED_IN_CLASH = ("runtime", "bench")


def default_run_dir(loaded: LoadedSpec) -> Path:
    """``runs/<experiment name>`` under the current directory."""
    return Path("runs") / loaded.spec.experiment.name


def resolved_text(loaded: LoadedSpec) -> str:
    """The resolved spec as TOML, with a header naming its source."""
    header = (
        f"Resolved by contrastive {__version__} from {loaded.path}"
        + (f" with --set {' '.join(loaded.overrides)}" if loaded.overrides else "")
        + "\nEvery default is filled in; `contrastive run` on this file reproduces the run."
    )
    return dumps(to_dict(loaded.spec), header=header)


def plugins_record(loaded: LoadedSpec) -> dict[str, Any]:
    """Installed plugins with versions, and which component of which plugin each spec key uses."""
    used = []
    for key, chosen in _components(loaded.spec, ""):
        category = _category_of(loaded, key)
        entry = loaded.registry.get(category, chosen.name)
        used.append({"key": key, **entry.as_record()})
    return {
        "contrastive": __version__,
        "plugins": [
            {
                "name": p.name,
                "module": p.module,
                "distribution": p.distribution,
                "version": p.version,
                "disabled": p.disabled,
            }
            for p in loaded.registry.plugins
        ],
        "components": used,
    }


def _components(obj: Any, prefix: str) -> list[tuple[str, ComponentSpec]]:
    found: list[tuple[str, ComponentSpec]] = []
    if not attrs.has(type(obj)):
        return found
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        if isinstance(value, ComponentSpec):
            found.append((prefix + field.name, value))
        elif field.metadata.get("many"):  # an array of component tables: key.0, key.1, ...
            found.extend((f"{prefix}{field.name}.{i}", item) for i, item in enumerate(value))
        elif value is not None and "section" in field.metadata:
            found.extend(_components(value, prefix + field.name + "."))
    return found


def _category_of(loaded: LoadedSpec, dotted: str) -> str:
    cls: Any = type(loaded.spec)
    parts = dotted.split(".")
    if parts[-1].isdigit():  # an element of an array of component tables
        parts.pop()
    for part in parts[:-1]:
        cls = attrs.fields_dict(cls)[part].metadata["section"]
    return str(attrs.fields_dict(cls)[parts[-1]].metadata["category"])


def check_run_dir(loaded: LoadedSpec, run_dir: Path | None = None, *, force: bool = False) -> Path:
    """The run directory, after checking (writing nothing) that :func:`prepare` may use it.

    Raises:
        FileSystemError: The path is a file, or lies under a file or a folder that cannot be written.
        RunDirectoryClash: The directory holds a run of a different spec and ``force`` is False.
    """
    directory = default_run_dir(loaded) if run_dir is None else run_dir
    _check_writable(directory)
    spec_path = directory / SPEC_FILE
    if spec_path.exists() and not force:
        difference = spec_difference(
            tomllib.loads(spec_path.read_text()),
            tomllib.loads(resolved_text(loaded)),
            spec_defaults(loaded.spec),
            ignored=_IGNORED_IN_CLASH,
        )
        if difference:
            raise RunDirectoryClash(str(directory), difference)
    return directory


def _check_writable(directory: Path) -> None:
    """A folder that exists or can be made, and can be written (by this user, as far as ``access`` knows)."""
    if directory.exists() and not directory.is_dir():
        raise FileSystemError(f"run directory {directory} is a file, not a folder; choose another --run-dir")
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise FileSystemError(f"cannot create run directory {directory}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FileSystemError(f"cannot write run directory {directory}: {existing} is not writable")


def prepare(loaded: LoadedSpec, run_dir: Path | None = None, *, force: bool = False) -> Path:
    """Create (or reuse) the run directory and write the resolved spec and plugin list.

    Raises:
        FileSystemError: The run directory cannot be made or written.
        RunDirectoryClash: The directory holds a run of a different spec and ``force`` is False.
    """
    directory = check_run_dir(loaded, run_dir, force=force)
    spec_path = directory / SPEC_FILE
    text = resolved_text(loaded)
    directory.mkdir(parents=True, exist_ok=True)
    write_text_atomic(spec_path, text)
    write_text_atomic(directory / PLUGINS_FILE, json.dumps(plugins_record(loaded), indent=2) + "\n")
    return directory


def spec_defaults(value: Any) -> Any:
    """The declared defaults of a spec object, shaped like :func:`contrastive.spec.loader.to_dict`.

    Every table and component of ``value`` maps its keys that have a default to that default
    (components: their options'); nested tables and components are followed as ``value`` holds them.
    """
    if isinstance(value, ComponentSpec):
        return spec_defaults(value.options)
    out: dict[str, Any] = {}
    for field in attrs.fields(type(value)):
        item = getattr(value, field.name)
        if isinstance(item, ComponentSpec) or attrs.has(type(item)):
            out[field.name] = spec_defaults(item)
        elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            if not field.default.takes_self:
                out[field.name] = to_dict(field.default.factory())
        elif field.default is not attrs.NOTHING:
            out[field.name] = to_dict(field.default)
    return out


def spec_difference(
    old: dict[str, Any],
    new: dict[str, Any],
    defaults: dict[str, Any],
    *,
    ignored: tuple[str, ...] = (),
    prefix: str = "",
) -> str:
    """The first key where a recorded spec (or table) ``old`` and the current ``new`` differ.

    Args:
        old: The record, as read back from TOML or JSON.
        new: The current spec or table, as :func:`contrastive.spec.loader.to_dict` gives it.
        defaults: :func:`spec_defaults` of the current spec or table.
        ignored: Top-level keys not compared.
        prefix: Dotted prefix of the keys (for the message).

    Returns:
        ``"dotted.key: OLD before, NEW now"``, or ``""`` when they match. A key missing from
        ``old`` whose value in ``new`` is its default matches (the option is newer than the record).
    """
    for key in sorted(set(old) | set(new)):
        if key in ignored:
            continue
        dotted = prefix + key
        a, b = old.get(key), new.get(key)
        default = defaults.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = spec_difference(a, b, default if isinstance(default, dict) else {}, prefix=dotted + ".")
            if found:
                return found
        elif key not in old and key in defaults and b == default:
            continue
        elif a != b:
            return f"{dotted}: {a!r} before, {b!r} now"
    return ""
