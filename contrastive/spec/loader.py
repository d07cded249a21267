"""Read a TOML spec: ``extends`` chains, ``--set`` overrides, ``${VAR}`` values, one error report.

Every problem found anywhere (TOML syntax, unknown keys, wrong types, out-of-range values, unknown
components, missing variables) is collected and raised together as one
:class:`contrastive.errors.SpecError`, each located as ``FILE: dotted.key: problem``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from contrastive.errors import Problem, SpecError
from contrastive.registry import Registry, load_registry
from contrastive.spec.schema import Spec, cross_checks
from contrastive.spec.structure import ComponentSpec, Context, component_fields, structure

OVERRIDE_SOURCE = "--set"
#: Most files an ``extends`` chain may hold (the named spec and its bases).
MAX_EXTENDS = 32
_TOML_POSITION = re.compile(r"^(?P<msg>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$")
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


@attrs.frozen
class LoadedSpec:
    """A validated spec with where it came from.

    Attributes:
        path: The spec file named on the command line.
        spec: The structured spec, every default filled in.
        files: Every file read, the named one first, then its ``extends`` chain.
        overrides: The ``--set`` overrides applied, as given.
        registry: The plugin registry the components were resolved against.
    """

    path: Path
    spec: Spec
    files: tuple[Path, ...]
    overrides: tuple[str, ...]
    registry: Registry = attrs.field(eq=False, repr=False)


@attrs.define
class _Tables:
    """The merged raw tables and, for every dotted key, the source that set it last.

    ``components`` maps the dotted key of every component table to its default component name:
    a source that chooses another component there starts that table afresh (the options other
    sources gave belong to the component they chose).
    """

    data: dict[str, Any] = attrs.Factory(dict)
    origins: dict[str, str] = attrs.Factory(dict)
    files: list[Path] = attrs.Factory(list)
    components: dict[str, str | None] = attrs.Factory(lambda: component_fields(Spec))

    def locate(self, key: str, default: str) -> str:
        """The source to blame for ``key``: the one that set it or its nearest table; a problem
        of a table as a whole (its keys together) is blamed on ``--set`` when it set any of them."""
        if key and isinstance(self._node(key), dict) and self._overridden_within(key):
            return OVERRIDE_SOURCE
        parts = key.split(".")
        for end in range(len(parts), 0, -1):
            found = self.origins.get(".".join(parts[:end]))
            if found is not None:
                return found
        return default

    def _node(self, key: str) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def _overridden_within(self, key: str) -> bool:
        return any(k.startswith(key + ".") and s == OVERRIDE_SOURCE for k, s in self.origins.items())

    def switches_component(self, dotted: str, current: Any, name: Any) -> bool:
        """Whether setting ``name`` in the table at ``dotted`` chooses another component."""
        if dotted not in self.components or not isinstance(current, dict) or not isinstance(name, str):
            return False
        before = current.get("name", self.components[dotted])
        return isinstance(before, str) and before != name

    def start_over(self, table: dict[str, Any], dotted: str, source: str) -> None:
        """Drop the keys of a component table that sources other than ``source`` set."""
        for key in list(table):
            full = f"{dotted}.{key}"
            if self.origins.get(full) != source:
                del table[key]
                for stale in [k for k in self.origins if k == full or k.startswith(full + ".")]:
                    del self.origins[stale]


def load(
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedSpec:
    """Read, merge, override, expand and validate a spec.

    Args:
        path: The spec file.
        overrides: ``dotted.key=value`` strings; values are TOML (``0.2``, ``true``, ``"x"``,
            ``[1, 2]``) and fall back to a plain string.
        registry: Plugin registry; default: every installed plugin.
        environ: Variables for ``${VAR}`` / ``${VAR:-default}``; default: the process environment.

    Returns:
        The validated spec.

    Raises:
        SpecError: Every problem at once.
    """
    path = Path(path)
    problems: list[Problem] = []
    tables = _Tables()
    _read_chain(path, tables, problems, chain=())
    _apply_overrides(overrides, tables, problems)
    _expand_variables(tables.data, "", tables, problems, os.environ if environ is None else environ)
    if problems:  # structuring a broken tree would only repeat these problems
        raise SpecError(problems)
    registry = load_registry() if registry is None else registry
    ctx = Context(registry=registry, locate=lambda key: tables.locate(key, str(path)))
    spec = structure(Spec, tables.data, prefix="", ctx=ctx)
    if spec is not None and not spec.stages():
        ctx.add("", "no stage to run: add a [pretrain], [finetune] or [distill] table")
    if spec is not None:
        for key, message in cross_checks(spec):
            ctx.add(key, message)
    if ctx.problems:
        raise SpecError(ctx.problems)
    return LoadedSpec(
        path=path, spec=spec, files=tuple(tables.files), overrides=tuple(overrides), registry=registry
    )


def _read_toml(path: Path, problems: list[Problem], via: Path | None = None) -> dict[str, Any] | None:
    """Parse ``path``; a base that cannot be read is reported at the ``extends`` key of ``via``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if via is not None:
            problems.append(Problem(str(via), "extends", f"no such spec file: {path}"))
        else:
            problems.append(Problem(str(path), "", "no such spec file"))
        return None
    except (OSError, UnicodeDecodeError) as exc:
        if via is not None:
            problems.append(Problem(str(via), "extends", f"cannot read spec file {path}: {exc}"))
        else:
            problems.append(Problem(str(path), "", f"cannot read spec file: {exc}"))
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_POSITION.match(str(exc))
        if match:
            where = f"{path}:{match['line']}:{match['col']}"
            problems.append(Problem(where, "", f"invalid TOML: {match['msg']}"))
        else:
            problems.append(Problem(str(path), "", f"invalid TOML: {exc}"))
        return None
    except ValueError as exc:  # an integer with more digits than Python converts from text
        problems.append(Problem(str(path), "", f"invalid TOML: {str(exc).split(';')[0]}"))
        return None


def _read_chain(
    path: Path, tables: _Tables, problems: list[Problem], chain: tuple[Path, ...], via: Path | None = None
) -> None:
    """Merge ``path`` and, underneath it, whatever it ``extends`` (``via``: the file extending it)."""
    resolved = path.resolve()
    if len(chain) >= MAX_EXTENDS:
        message = f"extends chain is more than {MAX_EXTENDS} files deep (a cycle through different paths?)"
        problems.append(Problem(str(via or path), "extends", message))
        return
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        problems.append(Problem(str(via or path), "extends", f"extends itself in a cycle: {cycle}"))
        return
    data = _read_toml(path, problems, via)
    if data is None:
        return
    tables.files.append(path)
    base = data.pop("extends", None)
    if base is not None:
        if isinstance(base, str) and base:
            _read_chain(path.parent / base, tables, problems, (*chain, resolved), via=path)
        else:
            problems.append(Problem(str(path), "extends", "expected the path of a base spec (a string)"))
    _merge(tables, data, prefix="", source=str(path))


def _merge(tables: _Tables, data: Mapping[str, Any], *, prefix: str, source: str) -> None:
    """Deep-merge ``data`` over the tables, recording the source of every key it sets."""
    target = _table_at(tables.data, prefix)
    for key, value in data.items():
        dotted = prefix + key
        if isinstance(value, dict) and tables.switches_component(dotted, target.get(key), value.get("name")):
            tables.start_over(target[key], dotted, source)
        tables.origins[dotted] = source
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(tables, value, prefix=dotted + ".", source=source)
        else:
            target[key] = _copy(value)
            if isinstance(value, dict):
                _record_origins(tables, value, dotted + ".", source)


def _record_origins(tables: _Tables, data: Mapping[str, Any], prefix: str, source: str) -> None:
    for key, value in data.items():
        tables.origins[prefix + key] = source
        if isinstance(value, dict):
            _record_origins(tables, value, prefix + key + ".", source)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _table_at(data: dict[str, Any], prefix: str) -> dict[str, Any]:
    table = data
    for part in [p for p in prefix.split(".") if p]:
        table = table[part]
    return table


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b=value`` into the dotted key and the TOML-typed value.

    Raises:
        ValueError: No ``=``, or an empty or malformed key.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.strip() for part in key.split(".")):
        raise ValueError("expected KEY=VALUE with a dotted key, e.g. pretrain.epochs=100")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except ValueError:  # not TOML (TOMLDecodeError), or an integer too long to convert
        value = raw.strip()
    return ".".join(part.strip() for part in key.split(".")), value


def _apply_overrides(overrides: Iterable[str], tables: _Tables, problems: list[Problem]) -> None:
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ValueError as exc:
            problems.append(Problem(OVERRIDE_SOURCE, text, str(exc)))
            continue
        parts = key.split(".")
        table = tables.data
        for depth, part in enumerate(parts[:-1]):
            child = table.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                problems.append(Problem(OVERRIDE_SOURCE, key, f"{where} is a value, not a table"))
                break
            table = child
        else:
            parent = ".".join(parts[:-1])
            if parts[-1] == "name" and tables.switches_component(parent, table, value):
                tables.start_over(table, parent, OVERRIDE_SOURCE)
            table[parts[-1]] = value
            tables.origins[key] = OVERRIDE_SOURCE
            if isinstance(value, dict):
                _record_origins(tables, value, key + ".", OVERRIDE_SOURCE)


def _expand_variables(
    node: Any, prefix: str, tables: _Tables, problems: list[Problem], environ: Mapping[str, str]
) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string, in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            node[key] = _expand_variables(value, prefix + key + ".", tables, problems, environ)
        return node
    if isinstance(node, list):
        return [_expand_variables(v, prefix, tables, problems, environ) for v in node]
    if not isinstance(node, str):
        return node
    key = prefix.rstrip(".")

    def substitute(match: re.Match[str]) -> str:
        name, default = match["name"], match["default"]
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.append(
            Problem(
                tables.locate(key, ""),
                key,
                f"environment variable {name} is not set (use ${{{name}:-default}})",
            )
        )
        return match.group(0)

    return _VARIABLE.sub(substitute, node)


def to_dict(value: Any) -> Any:
    """Plain TOML-ready data for a spec object: tables as dicts, None dropped, tuples as lists."""
    if isinstance(value, ComponentSpec):
        return {"name": value.name, **to_dict(value.options)}
    if attrs.has(type(value)):
        out = {}
        for field in attrs.fields(type(value)):
            item = getattr(value, field.name)
            if item is not None:
                out[field.name] = to_dict(item)
        return out
    if isinstance(value, tuple | list):
        return [to_dict(v) for v in value]
    return value
