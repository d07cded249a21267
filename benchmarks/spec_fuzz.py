"""Bad-spec fuzzing: mutated real specs must all be rejected cleanly (exit 2, no traceback, no files).

Every generated spec starts from one of the shipped specs in ``specs/`` and is made invalid by one
mutation of a known kind (:data:`KINDS`): a value of the wrong type, an unknown or misspelled key,
a value outside its documented range, NaN or infinity, an integer beyond TOML's 64-bit range, an
empty table that must not be empty, broken TOML, a cyclic ``extends`` chain, an unset ``${VAR}``,
or bytes that are not UTF-8 text. The mutations are chosen through the spec schema
(:mod:`contrastive.spec.schema` and the components' options classes), so each one surely breaks
the spec: the unmutated specs, written by the same code (:func:`control_specs`), are valid.

Each spec is then checked the way a user would meet it, through the command line in-process:
``contrastive run SPEC --dry-run --run-dir RUN_DIR`` must exit 2 (a spec error) without a
traceback and without writing a file.

Run: ``python benchmarks/spec_fuzz.py --count 1000 --seed 0 [--json PATH]``; prints one summary
row (trials, rejected with exit 2, tracebacks, files written, seconds, first failure) and exits 1
when any spec was not rejected cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import functools
import json
import os
import re
import shutil
import sys
import tempfile
import time
import tomllib
import traceback
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from random import Random
from typing import Any, Literal

import attrs
from click.testing import CliRunner

from contrastive.cli import cli
from contrastive.registry import Registry, load_registry
from contrastive.spec.schema import Spec
from contrastive.spec.structure import component_fields

#: The shipped specs every bad spec is made from.
SPECS = Path(__file__).resolve().parent.parent / "specs"

#: Every kind of mutation, generated in turn (so equally often).
KINDS = (
    "wrong_type",
    "unknown_key",
    "misspelled_key",
    "out_of_range",
    "nan_inf",
    "huge_int",
    "empty_table",
    "broken_toml",
    "cyclic_extends",
    "unset_var",
    "binary_garbage",
)

#: Prefix of the environment variables the ``unset_var`` mutation uses; :func:`check` unsets them.
UNSET_PREFIX = "CONTRASTIVE_FUZZ_UNSET_"

#: The exit code of a spec error.
SPEC_ERROR_EXIT = 2

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_HEADER_LINE = re.compile(r"^\s*\[")
_ASSIGNMENT_LINE = re.compile(r"^\s*[A-Za-z0-9_.\"-]+\s*=\s*\S")
_STRING_VALUE = re.compile(r'=\s*"[^"\n]*"')
_EXTENDS_LINE = re.compile(r"^extends\s*=.*$", re.MULTILINE)


@dataclass(frozen=True)
class BadSpec:
    """One generated bad spec.

    Attributes:
        kind: The mutation kind, one of :data:`KINDS`.
        path: The spec file to check (its ``extends`` bases lie beside it).
        description: Which spec was mutated and how, in one line.
    """

    kind: str
    path: Path
    description: str


@dataclass(frozen=True)
class Outcome:
    """What the command line did with one spec.

    Attributes:
        exit_code: The exit code of ``contrastive run SPEC --dry-run``.
        traceback: Whether a traceback was printed or an exception escaped the command.
        files_written: Paths that appeared in the run directory's folder or beside the spec.
        output: What the command printed (and the escaped exception's traceback, if any).
    """

    exit_code: int
    traceback: bool
    files_written: tuple[str, ...]
    output: str

    @property
    def rejected(self) -> bool:
        """Rejected cleanly: exit 2, no traceback, nothing written."""
        return self.exit_code == SPEC_ERROR_EXIT and not self.traceback and not self.files_written


@dataclass(frozen=True)
class _Raw:
    """TOML text written as it is (``nan``, ``-inf``, ``1e400``, ``0xffff_ffff_ffff_ffff_ff``)."""

    text: str


@dataclass(frozen=True)
class _Table:
    """A table the schema structures: its dotted path, attrs class and component category."""

    path: tuple[str, ...]
    cls: type
    category: str | None = None


@dataclass(frozen=True)
class _Leaf:
    """One value option of a table that a spec structures (given in the spec or not)."""

    table: _Table
    key: str
    tp: Any
    meta: Mapping[str, Any]


@dataclass
class _Base:
    """A shipped spec: its own text and data, the files it extends and the merged tables."""

    path: Path
    text: str
    data: dict[str, Any]
    chain: tuple[Path, ...]
    merged: dict[str, Any]
    tables: list[_Table] = field(default_factory=list)
    leaves: list[_Leaf] = field(default_factory=list)


@functools.cache
def _variables_in_specs() -> dict[str, str]:
    """A placeholder value for every ``${VAR}`` the shipped specs use (they are valid with them)."""
    names = sorted({m for p in SPECS.glob("*.toml") for m in _VARIABLE.findall(p.read_text("utf-8"))})
    return {name: f"/nonexistent/contrastive-fuzz/{name.lower()}" for name in names}


def check(spec_path: Path, run_dir: Path, *, environ: Mapping[str, str] | None = None) -> Outcome:
    """Run ``contrastive run SPEC --dry-run --run-dir RUN_DIR`` in-process, as a user would.

    The command runs in ``run_dir``'s parent folder (made if absent), with the
    variables the shipped specs use set to placeholders, ``CONTRASTIVE_DATA`` inside that folder and
    every ``CONTRASTIVE_FUZZ_UNSET_*`` variable unset.

    Args:
        spec_path: The spec file.
        run_dir: The run directory to pass; its parent is the working directory.
        environ: Further variables to set for the command.

    Returns:
        The exit code, whether a traceback was shown, and any file that appeared in the working
        directory or beside the spec.
    """
    sandbox = run_dir.parent
    sandbox.mkdir(parents=True, exist_ok=True)
    watched = _outermost([sandbox, spec_path.parent])
    before = {folder: _listing(folder) for folder in watched}
    env: dict[str, str | None] = {name: None for name in os.environ if name.startswith(UNSET_PREFIX)}
    env.update(_variables_in_specs())
    env["CONTRASTIVE_DATA"] = str(sandbox / "data")
    env.update(environ or {})
    args = ["run", str(spec_path), "--dry-run", "--run-dir", str(run_dir)]
    with contextlib.chdir(sandbox):
        result = CliRunner().invoke(cli, args, env=env, prog_name="contrastive")
    output = result.output
    escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
    if escaped and result.exc_info is not None:
        output += "".join(traceback.format_exception(*result.exc_info))
    written = sorted(str(folder / p) for folder in watched for p in _listing(folder) - before[folder])
    return Outcome(
        exit_code=result.exit_code,
        traceback=escaped or "Traceback" in output,
        files_written=tuple(written),
        output=output,
    )


def _outermost(folders: Sequence[Path]) -> list[Path]:
    """The folders that lie in none of the others (each once)."""
    kept: list[Path] = []
    for folder in sorted(folders, key=lambda f: len(f.resolve().parts)):
        if not any(folder.resolve().is_relative_to(k.resolve()) for k in kept):
            kept.append(folder)
    return kept


def _listing(folder: Path) -> set[str]:
    """Every file and folder under ``folder``, relative to it."""
    found: set[str] = set()
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            found.add(os.path.relpath(os.path.join(root, name), folder))
    return found


# ---------------------------------------------------------------------------------------------
# The shipped specs and their schema


def _load_bases(registry: Registry) -> list[_Base]:
    """Every shipped spec, with its extends chain, merged tables, tables and value options."""
    components = component_fields(Spec)
    bases = []
    for path in sorted(SPECS.glob("*.toml")):
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
        chain: list[Path] = []
        layers = [data]
        current = data
        while isinstance(current.get("extends"), str):
            parent = (chain[-1] if chain else path).parent / current["extends"]
            chain.append(parent)
            current = tomllib.loads(parent.read_text(encoding="utf-8"))
            layers.append(current)
        merged: dict[str, Any] = {}
        for layer in reversed(layers):
            merged = _merged(merged, {k: v for k, v in layer.items() if k != "extends"}, "", components)
        base = _Base(path=path, text=text, data=data, chain=tuple(chain), merged=merged)
        base.tables = _tables(merged, registry)
        base.leaves = [
            _Leaf(table, f.name, typing.get_type_hints(table.cls)[f.name], f.metadata)
            for table in base.tables
            for f in attrs.fields(table.cls)
            if "category" not in f.metadata and "section" not in f.metadata
        ]
        bases.append(base)
    return bases


def _merged(
    under: dict[str, Any], over: Mapping[str, Any], prefix: str, components: Mapping[str, str | None]
) -> dict[str, Any]:
    """``over`` deep-merged onto ``under``; a component table naming another component replaces it."""
    out = copy.deepcopy(under)
    for key, value in over.items():
        dotted = prefix + key
        below = out.get(key)
        if isinstance(value, dict) and isinstance(below, dict):
            before = below.get("name", components.get(dotted))
            if dotted in components and "name" in value and value["name"] != before:
                out[key] = copy.deepcopy(value)
            else:
                out[key] = _merged(below, value, dotted + ".", components)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _tables(merged: Mapping[str, Any], registry: Registry) -> list[_Table]:
    """Every table the schema structures for ``merged`` (absent optional stages excluded)."""
    found: list[_Table] = []

    def walk(cls: type, node: Mapping[str, Any], path: tuple[str, ...]) -> None:
        found.append(_Table(path, cls))
        for f in attrs.fields(cls):
            meta = f.metadata
            child = node.get(f.name)
            if "section" in meta:
                if isinstance(child, dict) or (child is None and not meta["optional"]):
                    walk(meta["section"], child or {}, (*path, f.name))
            elif "category" in meta and not meta.get("many"):
                if child is not None and not isinstance(child, dict):
                    continue
                name = (child or {}).get("name", meta["default_name"])
                if isinstance(name, str) and (meta["category"], name) in registry.entries:
                    options = registry.get(meta["category"], name).options
                    found.append(_Table((*path, f.name), options, meta["category"]))

    walk(Spec, merged, ())
    return found


def _fields(table: _Table) -> set[str]:
    """The keys a table takes (``name`` in a component table, ``extends`` at the top)."""
    names = {f.name for f in attrs.fields(table.cls)}
    if table.category is not None:
        names.add("name")
    if not table.path:
        names.add("extends")
    return names


def _accepts(tp: Any, value: Any) -> bool:
    """Whether a TOML value has a type the option type ``tp`` takes (ints widen to float)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return any(value == c and type(value) is type(c) for c in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arm, value) for arm in typing.get_args(tp) if arm is not type(None))
    if origin is tuple:
        return isinstance(value, list) and all(_accepts(typing.get_args(tp)[0], v) for v in value)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return False


def _scalar_type(tp: Any) -> Any:
    """The number/string/Literal type inside ``X | None`` or ``tuple[X, ...]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        return _scalar_type(arms[0]) if len(arms) == 1 else tp
    if origin is tuple:
        return _scalar_type(typing.get_args(tp)[0])
    return tp


def _is_tuple(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple


# ---------------------------------------------------------------------------------------------
# Writing TOML (our own writer: it must write what the library's writer refuses)


def _dumps(data: Mapping[str, Any]) -> str:
    """TOML text of nested dicts: plain keys first, then ``[a.b]`` tables (empty ones too)."""
    lines: list[str] = []
    _write_table(data, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _write_table(data: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    plain = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if path and (plain or not tables):
        lines.extend(["", f"[{'.'.join(_key(p) for p in path)}]"])
    for key, value in plain.items():
        lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in tables.items():
        _write_table(value, [*path, key], lines)


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _string(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _value(value: Any) -> str:
    if isinstance(value, _Raw):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def _is_valid_toml(raw: bytes) -> bool:
    """Whether ``raw`` is UTF-8 text that parses as TOML (the oracle of the text mutations)."""
    try:
        tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Cases


@dataclass
class _Ctx:
    """What every mutation needs: the random stream, the spec, the registry and the case folder."""

    rng: Random
    base: _Base
    registry: Registry
    folder: Path

    def write(self, content: str | bytes | Mapping[str, Any], *, flatten: bool = False) -> Path:
        """Write the mutated spec under the shipped spec's name, its extends bases beside it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if not flatten:
            for base in self.base.chain:
                shutil.copyfile(base, self.folder / base.name)
        path = self.folder / self.base.path.name
        if isinstance(content, Mapping):
            content = _dumps(content)
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return path

    def own(self) -> dict[str, Any]:
        """A copy of the spec file's own tables (with its ``extends``)."""
        return copy.deepcopy(self.base.data)

    @property
    def name(self) -> str:
        return self.base.path.stem


def _put(doc: dict[str, Any], path: Sequence[str], key: str, value: Any) -> None:
    """Set ``doc[path...][key]``, making the tables on the way."""
    node = doc
    for part in path:
        node = node.setdefault(part, {})
    node[key] = value


def _dotted(path: Sequence[str], key: str | None = None) -> str:
    return ".".join([*path, key] if key is not None else path) or "<top>"


_WRONG_VALUES: tuple[Any, ...] = (
    "fuzz",
    "",
    "1e-3",
    "true",
    7,
    -3,
    0,
    2.5,
    True,
    False,
    [1, 2],
    ["a", "b"],
    [[1], [2]],
    {"value": 1},
    {},
    datetime.date(2024, 1, 31),
    datetime.datetime(2024, 1, 31, 12, 30, tzinfo=datetime.UTC),
    datetime.time(12, 30),
)


def _wrong_type(ctx: _Ctx) -> str:
    rng, doc = ctx.rng, ctx.own()
    roll = rng.random()
    if roll < 0.15:  # a whole table given as a value
        table = rng.choice([t for t in ctx.base.tables if t.path])
        value = rng.choice(["table", 5, 0.5, True, [1, 2], [{"name": "x"}]])
        _put(doc, table.path[:-1], table.path[-1], value)
        ctx.write(doc)
        return f"{ctx.name}: table {_dotted(table.path)} given as {_value(value)}"
    if roll < 0.25:  # a component's name that is not a string
        table = rng.choice([t for t in ctx.base.tables if t.category is not None])
        value = rng.choice([5, True, 1.5, ["resnet"], {"name": "resnet"}])
        _put(doc, table.path, "name", value)
        ctx.write(doc)
        return f"{ctx.name}: {_dotted(table.path, 'name')} = {_value(value)} (a {table.category} name)"
    if roll < 0.3 and "extends" in doc:
        doc["extends"] = rng.choice([5, True, ["a.toml"], {"path": "a.toml"}, ""])
        ctx.write(doc)
        return f"{ctx.name}: extends = {_value(doc['extends'])}"
    leaf = rng.choice(ctx.base.leaves)
    candidates = [v for v in _WRONG_VALUES if not _accepts(leaf.tp, v)]
    current = _lookup(ctx.base.merged, leaf.table.path, leaf.key)
    if _scalar_type(leaf.tp) is int and isinstance(current, int) and not _is_tuple(leaf.tp):
        candidates.append(float(current))  # 50.0 for an integer option
    if _is_tuple(leaf.tp):
        candidates.extend([["x", 1.0], [True], [[0.5]]])
        candidates = [v for v in candidates if not _accepts(leaf.tp, v)]
    value = rng.choice(candidates)
    _put(doc, leaf.table.path, leaf.key, value)
    ctx.write(doc)
    return f"{ctx.name}: {_dotted(leaf.table.path, leaf.key)} = {_value(value)} (expects {leaf.tp})"


def _node(data: Mapping[str, Any], path: Sequence[str]) -> Mapping[str, Any]:
    """The table at ``path`` (empty when absent or not a table)."""
    node: Any = data
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def _short(text: str, limit: int = 60) -> str:
    """``text``, its middle elided when longer than ``limit``."""
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 4 :]} ({len(text)} chars)"


def _lookup(data: Mapping[str, Any], path: Sequence[str], key: str) -> Any:
    node: Any = data
    for part in [*path, key]:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


_FOREIGN_KEYS = (
    "learning_rate",
    "lr_schedule",
    "num_epochs",
    "gpus",
    "dropout",
    "weights",
    "comment",
    "version",
    "enabled",
    "model",
    "data",
    "evaluate",
    "linear_eval",
    "pretraining",
    "stage",
    "Name",
    "my key",
    "température",
    "x.y",
    "",
)


def _unknown_key(ctx: _Ctx) -> str:
    rng, doc = ctx.rng, ctx.own()
    table = rng.choice(ctx.base.tables)
    taken = _fields(table) | set(_node(ctx.base.merged, table.path))
    elsewhere = sorted({f.name for t in ctx.base.tables for f in attrs.fields(t.cls)})
    pool = [k for k in [*_FOREIGN_KEYS, *elsewhere] if k not in taken]
    key = rng.choice(pool) if rng.random() < 0.85 else f"zz_{rng.randrange(10**6)}"
    value = rng.choice([1, 0.5, "x", True, [1, 2], {"a": 1}, {}])
    _put(doc, table.path, key, value)
    ctx.write(doc)
    return f"{ctx.name}: unknown key {_dotted(table.path, repr(key))} = {_value(value)}"


def _misspellings(rng: Random, key: str) -> list[str]:
    """Typos of ``key``: swapped, dropped, doubled or replaced letters, dashes, capitals."""
    out = []
    for i in range(len(key) - 1):
        if key[i] != key[i + 1]:
            out.append(key[:i] + key[i + 1] + key[i] + key[i + 2 :])
    out += [key[:i] + key[i + 1 :] for i in range(len(key))]
    out += [key[:i] + key[i] + key[i:] for i in range(len(key))]
    out += [key[:i] + rng.choice("aeioustrn") + key[i + 1 :] for i in range(len(key))]
    out += [key.replace("_", "-"), key.capitalize(), key.upper(), key + "s", key.rstrip("s")]
    return [k for k in out if k and k != key]


def _misspelled_key(ctx: _Ctx) -> str:
    rng, doc = ctx.rng, ctx.own()
    by_path = {t.path: t for t in ctx.base.tables}
    spots = []  # (table, key) for every key of the file's own tables the schema knows
    stack: list[tuple[tuple[str, ...], Mapping[str, Any]]] = [((), doc)]
    while stack:
        path, node = stack.pop()
        table = by_path.get(path)
        if table is None:
            continue
        for key, value in node.items():
            spots.append((table, key))
            if isinstance(value, dict):
                stack.append(((*path, key), value))
    table, key = rng.choice(sorted(spots, key=lambda s: (s[0].path, s[1])))
    node = doc
    for part in table.path:
        node = node[part]
    taken = _fields(table) | set(node) | set(_node(ctx.base.merged, table.path))
    typo = rng.choice([k for k in _misspellings(rng, key) if k not in taken])
    node[typo] = node.pop(key)
    ctx.write(doc)
    return f"{ctx.name}: key {_dotted(table.path, key)} misspelled as {typo!r}"


def _below(rng: Random, low: float, exclusive: bool, integer: bool) -> list[Any]:
    if integer:
        values: list[Any] = [int(low) - rng.choice([1, 2, 10, 1000])]
        if exclusive:
            values.append(int(low))
        return values
    values = [low - rng.choice([1e-9, 0.001, 0.5, 1.0, 1e6])]
    if exclusive:
        values += [float(low), -float(low) if low == 0 else float(low)]  # 0.0 and -0.0
    return values


def _out_of_range_values(rng: Random, leaf: _Leaf, current: Any) -> list[Any]:
    """Values of the option's own type that its bounds, choices or Literal exclude."""
    tp, meta = _scalar_type(leaf.tp), leaf.meta
    values: list[Any] = []
    if typing.get_origin(tp) is Literal:
        choices = [str(c) for c in typing.get_args(tp)]
        values += [c.upper() for c in choices] + [c + "_x" for c in choices] + ["", " " + choices[0]]
        values += [c.replace("_", "-") for c in choices]
        values = [v for v in values if v not in choices]
    integer = tp is int
    if meta.get("choices") is not None:
        allowed: list[Any] = list(meta["choices"])
        if integer:
            values += [c + d for c in allowed for d in (-1, 1)] + [0, -allowed[0]]
        else:
            values += [str(c).upper() + "_" for c in allowed] + [""]
        values = [v for v in values if v not in allowed]
    if meta.get("min") is not None and tp in (int, float):
        values += _below(rng, meta["min"], bool(meta.get("min_exclusive")), integer)
    if meta.get("max") is not None and tp in (int, float):
        high = meta["max"]
        values += (
            [int(high) + rng.choice([1, 5, 100])] if integer else [high + 1e-9, high + 0.5, high * 10 + 1]
        )
    if _is_tuple(leaf.tp) and values:
        items = _items(leaf, current)
        items[rng.randrange(len(items))] = rng.choice(values)
        return [items]
    return values


def _items(leaf: _Leaf, current: Any) -> list[Any]:
    """The items of an array option: as the spec gives them, else its default (at least one)."""
    if isinstance(current, list) and current:
        return list(current)
    default = attrs.fields_dict(leaf.table.cls)[leaf.key].default
    return list(default) if isinstance(default, tuple) and default else [1.0]


def _out_of_range(ctx: _Ctx) -> str:
    rng, doc = ctx.rng, ctx.own()
    if rng.random() < 0.2:  # a component no plugin offers
        table = rng.choice([t for t in ctx.base.tables if t.category is not None])
        known = ctx.registry.names(table.category or "")
        name = _lookup(ctx.base.merged, table.path, "name") or "x"
        pool = [str(name) + "50", str(name).replace("_", "-") + "-", str(name).upper(), "adam", "vit_b16", ""]
        bad = rng.choice([n for n in pool if n not in known])
        _put(doc, table.path, "name", bad)
        ctx.write(doc)
        return f"{ctx.name}: {_dotted(table.path, 'name')} = {bad!r} (no such {table.category} component)"
    merged = ctx.base.merged
    choices = [
        (leaf, _out_of_range_values(rng, leaf, _lookup(merged, leaf.table.path, leaf.key)))
        for leaf in ctx.base.leaves
    ]
    leaf, values = rng.choice([(leaf, values) for leaf, values in choices if values])
    value = rng.choice(values)
    _put(doc, leaf.table.path, leaf.key, value)
    ctx.write(doc)
    bounds = {k: leaf.meta.get(k) for k in ("min", "max", "min_exclusive", "choices") if leaf.meta.get(k)}
    return f"{ctx.name}: {_dotted(leaf.table.path, leaf.key)} = {_value(value)} (out of {bounds or leaf.tp})"


_NON_FINITE = ("nan", "+nan", "-nan", "inf", "+inf", "-inf", "1e400", "-1e999")


def _nan_inf(ctx: _Ctx) -> str:
    rng, doc = ctx.rng, ctx.own()
    floats = [leaf for leaf in ctx.base.leaves if _scalar_type(leaf.tp) is float]
    ints = [leaf for leaf in ctx.base.leaves if _scalar_type(leaf.tp) is int]
    leaf = rng.choice(floats if rng.random() < 0.85 else ints)
    token = _Raw(rng.choice(_NON_FINITE))
    value: Any = token
    if _is_tuple(leaf.tp):
        items = _items(leaf, _lookup(ctx.base.merged, leaf.table.path, leaf.key))
        items[rng.randrange(len(items))] = token
        value = items
    _put(doc, leaf.table.path, leaf.key, value)
    ctx.write(doc)
    return f"{ctx.name}: {_dotted(leaf.table.path, leaf.key)} = {_value(value)} (expects {leaf.tp})"


_HUGE = (
    2**63,
    2**64,
    -(2**63) - 1,
    10**19,
    10**30,
    -(10**30),
    10**400,
    -(10**400),
    _Raw("0xffff_ffff_ffff_ffff_ff"),
    _Raw("9_223_372_036_854_775_808"),
    _Raw("9" * 5000),  # more digits than Python converts from text
    _Raw("0x" + "f" * 5000),  # parses, but too long to print in decimal
)


def _huge_int(ctx: _Ctx) -> str:
    rng, doc = ctx.rng, ctx.own()
    numeric = [leaf for leaf in ctx.base.leaves if _scalar_type(leaf.tp) in (int, float)]
    leaf = rng.choice(numeric)
    big: Any = rng.choice(_HUGE)
    value = big
    if _is_tuple(leaf.tp):
        items = _items(leaf, _lookup(ctx.base.merged, leaf.table.path, leaf.key))
        items[rng.randrange(len(items))] = big
        value = items
    _put(doc, leaf.table.path, leaf.key, value)
    ctx.write(doc)
    return f"{ctx.name}: {_dotted(leaf.table.path, leaf.key)} = {_short(_value(value))} (beyond 64 bits)"


def _empty_table(ctx: _Ctx) -> str:
    """Empty a table that must not be empty; the spec is written whole (no extends) so it stays so."""
    rng = ctx.rng
    doc = copy.deepcopy(ctx.base.merged)
    stages = [s for s in ("pretrain", "finetune", "distill") if s in doc]
    roll = rng.random()
    if roll < 0.4:  # a component table without a default component: its name is required
        options = []
        for stage in stages:
            section = attrs.fields_dict(Spec)[stage].metadata["section"]
            options += [
                (stage, f.name)
                for f in attrs.fields(section)
                if "category" in f.metadata and f.metadata["default_name"] is None
            ]
        stage, key = rng.choice(options)
        inline = rng.random() < 0.3
        doc[stage][key] = _Raw("{}") if inline else {}
        ctx.write(doc, flatten=True)
        return f"{ctx.name}: [{stage}.{key}] empty{' (inline {})' if inline else ''}"
    if roll < 0.7:  # a stage with nothing in it: it has no dataset
        stage = rng.choice(stages)
        doc[stage] = {}
        ctx.write(doc, flatten=True)
        return f"{ctx.name}: [{stage}] empty"
    if roll < 0.85:  # a logger without a name
        doc.setdefault("runtime", {})["loggers"] = [{}] if rng.random() < 0.5 else [{"name": "jsonl"}, {}]
        ctx.write(doc, flatten=True)
        return f"{ctx.name}: [[runtime.loggers]] entry empty"
    kept = rng.choice([(), ("experiment",), ("experiment", "runtime")])
    for key in list(doc):
        if key in kept:
            doc[key] = {}
        else:
            del doc[key]
    ctx.write(_dumps(doc) if doc else rng.choice(["", "\n", "# nothing here\n"]), flatten=True)
    return f"{ctx.name}: every table removed but {', '.join(f'[{k}]' for k in kept) or 'none'} (left empty)"


_CORRUPTIONS: tuple[str, ...] = (
    "header_unclosed",
    "string_unclosed",
    "duplicate_key",
    "duplicate_table",
    "no_equals",
    "no_value",
    "array_unclosed",
    "bad_escape",
    "newline_in_string",
    "bad_number",
    "inline_table_newline",
    "trailing_garbage",
    "value_then_table",
    "non_ascii_bare_key",
    "truncated",
)


def _corrupt(rng: Random, text: str, how: str) -> str:
    lines = text.split("\n")
    headers = [i for i, line in enumerate(lines) if _HEADER_LINE.match(line)]
    assigns = [i for i, line in enumerate(lines) if _ASSIGNMENT_LINE.match(line)]
    strings = [i for i in assigns if _STRING_VALUE.search(lines[i])]
    i = rng.choice(assigns)
    line = lines[i]
    key, _, rest = line.partition("=")
    if how == "header_unclosed":
        h = rng.choice(headers)
        lines[h] = lines[h].replace("]", "", 1)
    elif how == "string_unclosed" and strings:
        s = rng.choice(strings)
        start = lines[s].index('"')
        end = lines[s].index('"', start + 1)
        lines[s] = lines[s][:end] + lines[s][end + 1 :]
    elif how == "duplicate_key":
        lines.insert(i + 1, line)
    elif how == "duplicate_table":
        h = rng.choice(headers)
        lines += ["", lines[h].split("#")[0].strip(), "zz_dup = 1"]
    elif how == "no_equals":
        lines[i] = key + " " + rest.strip()
    elif how == "no_value":
        lines[i] = key + "="
    elif how == "array_unclosed":
        lines[i] = key + "= [1, 2"
    elif how == "bad_escape" and strings:
        s = rng.choice(strings)
        lines[s] = lines[s].replace('"', '"\\q', 1)
    elif how == "newline_in_string" and strings:
        s = rng.choice(strings)
        at = lines[s].index('"') + 1
        lines[s] = lines[s][:at] + "\n" + lines[s][at:]
    elif how == "bad_number":
        lines[i] = (
            key
            + "= "
            + rng.choice(
                ["1.2.3", "01", "1__0", ".5", "5.", "1e", "+-1", "0b102", "TRUE", "2024-02-30", "nan0"]
            )
        )
    elif how == "inline_table_newline":
        lines[i] = key + "= { a = 1,\n b = 2 }"
    elif how == "trailing_garbage":
        lines[i] = line.split("#")[0].rstrip() + rng.choice([" 60", " x", " ]", ' "y"'])
    elif how == "value_then_table":  # a top-level value, then a table under the same key
        h = rng.choice(headers)
        name = lines[h].split("#")[0].strip().strip("[]").strip()
        lines.insert(0, f"{name.split('.')[0]} = 1")
    elif how == "non_ascii_bare_key":
        lines[i] = rng.choice(["é", "ü", "λ", "→"]) + line.lstrip()
    elif how == "truncated":
        cut = rng.randrange(1, len(text))
        return text[:cut]
    return "\n".join(lines)


def _broken_toml(ctx: _Ctx) -> str:
    rng, text = ctx.rng, ctx.base.text
    for _ in range(50):
        how = rng.choice(_CORRUPTIONS)
        broken = _corrupt(rng, text, how)
        if not _is_valid_toml(broken.encode("utf-8")):
            ctx.write(broken)
            return f"{ctx.name}: TOML broken ({how})"
    ctx.write(text + "\n[[[\n")  # pragma: no cover - 50 misses in a row
    return f"{ctx.name}: TOML broken (unclosed header)"


def _with_extends(text: str, target: str) -> str:
    """``text`` extending ``target`` instead of what it extended."""
    line = f"extends = {_string(target)}"
    if _EXTENDS_LINE.search(text):
        return _EXTENDS_LINE.sub(lambda _: line, text, count=1)
    return f"{line}\n{text}"


def _cyclic_extends(ctx: _Ctx) -> str:
    rng, folder, name = ctx.rng, ctx.folder, ctx.base.path.name
    folder.mkdir(parents=True, exist_ok=True)
    roll = rng.random()
    if roll < 0.25:  # the spec extends itself
        target = rng.choice([name, f"./{name}", f"../{folder.name}/{name}", str(folder / name)])
        ctx.write(_with_extends(ctx.base.text, target))
        return f"{ctx.name}: extends itself as {target!r}"
    if roll < 0.45 and ctx.base.chain:  # its real base extends it back
        ctx.write(_with_extends(ctx.base.text, ctx.base.chain[0].name))
        top = ctx.base.chain[-1]
        (folder / top.name).write_text(_with_extends(top.read_text("utf-8"), name), encoding="utf-8")
        return f"{ctx.name}: its base {top.name} extends it back"
    long = rng.random() < 0.06
    length = rng.randrange(1050, 1300) if long else rng.randrange(2, 7)
    tail = 0 if long or rng.random() < 0.6 else rng.randrange(1, length)  # where the cycle closes
    nested = rng.random() < 0.5  # links spread over sibling folders (paths like sub1/../sub2/...)
    names = [name] + [f"sub{i % 3}/link_{i}.toml" if nested else f"link_{i}.toml" for i in range(1, length)]
    ctx.write(_with_extends(ctx.base.text, names[1]))
    for i in range(1, length):
        here = folder / names[i]
        here.parent.mkdir(exist_ok=True)
        nxt = names[i + 1] if i + 1 < length else names[tail]
        target = os.path.relpath(folder / nxt, here.parent)
        here.write_text(f'extends = {_string(target)}\n\n[experiment]\nname = "link_{i}"\n', encoding="utf-8")
    closes = "itself" if tail == 0 else names[tail]
    return f"{ctx.name}: extends chain of {length} files that loops back to {closes}"


def _unset_var(ctx: _Ctx) -> str:
    rng, doc = ctx.rng, ctx.own()
    var = UNSET_PREFIX + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(6))
    strings: list[tuple[list[Any] | dict[str, Any], Any, str]] = []
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        node, where = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            here = f"{where}.{key}".lstrip(".")
            if isinstance(value, dict | list):
                stack.append((value, here))
            elif isinstance(value, str) and here != "extends":
                strings.append((node, key, here))
    roll = rng.random()
    if roll < 0.55 and strings:
        node, key, where = rng.choice(sorted(strings, key=lambda s: s[2]))
        old = node[key]
        if _VARIABLE.search(old):  # rename the spec's own variable
            new = _VARIABLE.sub("${" + var, old, count=1)
        else:
            new = rng.choice(["${V}", "${V}/data", "prefix-${V}", old + "${V}"]).replace("V", var)
        node[key] = new
        ctx.write(doc)
        return f"{ctx.name}: {where} = {new!r} (unset)"
    leaf = rng.choice(ctx.base.leaves)
    value = "${" + var + "}"
    _put(doc, leaf.table.path, leaf.key, [value] if _is_tuple(leaf.tp) else value)
    ctx.write(doc)
    return f"{ctx.name}: {_dotted(leaf.table.path, leaf.key)} = {value!r} (unset, option of type {leaf.tp})"


_GARBAGE = (
    "insert_bytes",
    "random_file",
    "utf16",
    "latin1",
    "nul_bytes",
    "control_chars",
    "surrogate",
    "overlong",
    "truncated_multibyte",
)


def _garble(rng: Random, text: str, how: str) -> bytes:
    raw = text.encode("utf-8")
    at = rng.randrange(len(raw) + 1)
    if how == "insert_bytes":
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) + b"\xff"
        return raw[:at] + blob + raw[at:]
    if how == "random_file":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096)))
    if how == "utf16":
        return text.encode(rng.choice(["utf-16", "utf-16-le", "utf-32"]))
    if how == "latin1":
        return (text + '\n[experiment]\nname = "résumé à côté"\n').encode("latin-1", errors="replace")
    if how == "nul_bytes":
        return raw[:at] + b"\x00" * rng.randrange(1, 8) + raw[at:]
    if how == "control_chars":
        line = text.split("\n")
        i = rng.randrange(len(line))
        line[i] = line[i] + rng.choice(["\x1b[31m", "\x07", "\x7f", "\x08", "\x0c"])
        return "\n".join(line).encode("utf-8")
    if how == "surrogate":
        return raw[:at] + b"\xed\xa0\x80" + raw[at:]
    if how == "overlong":
        return raw[:at] + b"\xc0\xaf" + raw[at:]
    return raw + "é".encode()[:1]  # truncated_multibyte


def _binary_garbage(ctx: _Ctx) -> str:
    rng = ctx.rng
    for _ in range(50):
        how = rng.choice(_GARBAGE)
        raw = _garble(rng, ctx.base.text, how)
        if not _is_valid_toml(raw):
            ctx.write(raw)
            return f"{ctx.name}: binary garbage ({how}, {len(raw)} bytes)"
    ctx.write(ctx.base.text.encode("utf-8") + b"\xff")  # pragma: no cover - 50 misses in a row
    return f"{ctx.name}: binary garbage (0xff appended)"


_MUTATIONS: dict[str, Callable[[_Ctx], str]] = {
    "wrong_type": _wrong_type,
    "unknown_key": _unknown_key,
    "misspelled_key": _misspelled_key,
    "out_of_range": _out_of_range,
    "nan_inf": _nan_inf,
    "huge_int": _huge_int,
    "empty_table": _empty_table,
    "broken_toml": _broken_toml,
    "cyclic_extends": _cyclic_extends,
    "unset_var": _unset_var,
    "binary_garbage": _binary_garbage,
}


def bad_specs(seed: int, count: int, workdir: Path) -> Iterator[BadSpec]:
    """Generate ``count`` bad specs under ``workdir``, the kinds in turn (each equally often).

    Spec ``i`` depends only on ``seed`` and ``i`` (a shorter run is a prefix of a longer one) and
    lies in its own folder ``workdir/NNNN-KIND/`` with the bases it extends.

    Args:
        seed: Seed of the mutations.
        count: How many specs.
        workdir: Where to write them (made if absent).

    Yields:
        Each bad spec as it is written.
    """
    registry = load_registry()
    bases = _load_bases(registry)
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        rng = Random(seed * 1_000_003 + index)
        base = rng.choice(bases)
        folder = workdir / f"{index:04d}-{kind}"
        ctx = _Ctx(rng=rng, base=base, registry=registry, folder=folder)
        description = _MUTATIONS[kind](ctx)
        yield BadSpec(kind=kind, path=folder / base.path.name, description=description)


def control_specs(workdir: Path) -> Iterator[Path]:
    """Each shipped spec rewritten unmutated by the generator's writer (these must be valid)."""
    registry = load_registry()
    for base in _load_bases(registry):
        ctx = _Ctx(rng=Random(0), base=base, registry=registry, folder=workdir / base.path.stem)
        yield ctx.write(ctx.own())


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """Generate and check bad specs; print one summary row; 0 when every one was rejected cleanly."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=1000, help="How many bad specs (default 1000).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the mutations (default 0).")
    parser.add_argument("--json", type=Path, help="Also write the summary and every failure here.")
    parser.add_argument("--workdir", type=Path, help="Keep the specs here (default: a temporary folder).")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="spec-fuzz-")))
        else:
            workdir = args.workdir
        failures: list[dict[str, Any]] = []
        counts = {"trials": 0, "rejected_exit_2": 0, "tracebacks": 0, "files_written": 0}
        per_kind: dict[str, int] = dict.fromkeys(KINDS, 0)
        for bad in bad_specs(args.seed, args.count, workdir / "specs"):
            outcome = check(bad.path, workdir / "sandbox" / bad.path.parent.name / "run")
            counts["trials"] += 1
            per_kind[bad.kind] += 1
            counts["rejected_exit_2"] += outcome.rejected
            counts["tracebacks"] += outcome.traceback
            counts["files_written"] += bool(outcome.files_written)
            if not outcome.rejected:
                failures.append({**asdict(bad), "path": str(bad.path), **asdict(outcome)})
    seconds = time.perf_counter() - started
    first = "-" if not failures else f"{failures[0]['kind']}: {failures[0]['description']}"
    first += f" -> exit {failures[0]['exit_code']}" if failures else ""
    header = (
        f"{'trials':>6}  {'rejected(exit 2)':>16}  {'tracebacks':>10}  {'files written':>13}  {'seconds':>7}"
    )
    print(f"{header}  first failure")
    row = (
        f"{counts['trials']:>6}  {counts['rejected_exit_2']:>16}  {counts['tracebacks']:>10}  "
        f"{counts['files_written']:>13}  {seconds:>7.1f}  {first}"
    )
    print(row)
    if args.json is not None:
        summary = {
            "seed": args.seed,
            **counts,
            "seconds": seconds,
            "per_kind": per_kind,
            "failures": failures,
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
