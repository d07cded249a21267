"""The ready specs that install with the package, found by name.

The repository's top-level ``specs/`` folder is their source of truth; the wheel installs it as
``contrastive/packaged_specs/`` (pyproject.toml maps it there; the name keeps the TOML files apart
from the code package :mod:`contrastive.spec`), so ``extends = "other.toml"`` keeps
resolving beside the file. In a checkout (an editable install) the folder is read where it is.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from contrastive.errors import Problem, SpecError

SUFFIX = ".toml"


def specs_folder() -> Path | None:
    """The folder of the packaged specs: ``contrastive/packaged_specs`` when installed, else the
    checkout's."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "packaged_specs"
    if installed.is_dir():
        return installed
    checkout = package.parent / "specs"
    if (package.parent / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    return None


def packaged_specs() -> dict[str, Path]:
    """Every packaged spec, by name (the file name without ``.toml``), sorted by name."""
    folder = specs_folder()
    if folder is None:
        return {}
    return {path.stem: path for path in sorted(folder.glob(f"*{SUFFIX}"))}


def packaged_spec(name: str) -> Path:
    """The packaged spec called ``name`` (with or without ``.toml``).

    Raises:
        SpecError: No packaged spec has that name; the message lists them.
    """
    specs = packaged_specs()
    found = specs.get(name.removesuffix(SUFFIX))
    if found is None:
        raise SpecError([Problem(name, "", f"no packaged spec of that name{_choices(name, specs)}")])
    return found


def find_spec(spec: str | Path) -> Path:
    """The spec file a command-line argument means: a local file wins, else a packaged spec's name.

    Args:
        spec: A path, or a packaged spec's name such as ``digits_1pct`` (``.toml`` optional).

    Raises:
        SpecError: Neither a file nor a packaged spec's name; the message lists the packaged names
            with the closest one.
    """
    path = Path(spec)
    if path.is_file():
        return path
    specs = packaged_specs()
    text = str(spec)
    name = text.removesuffix(SUFFIX)
    bare = path.name == text  # a name: no folder in it
    if bare and name in specs:
        return specs[name]
    what = "no such spec file, and no packaged spec of that name" if bare else "no such spec file"
    message = f"{what}{_choices(text, specs)}"
    raise SpecError([Problem(text, "", message)])


def summary(path: Path) -> str:
    """What a spec is, from its opening comment: the first sentence after the command line.

    Shipped specs open with the command that runs them (``# contrastive run ...``), a blank comment
    line and a paragraph saying what they are; this is that paragraph's first sentence (or clause).
    """
    lines: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.startswith("#"):
            break
        line = raw.lstrip("#").strip()
        if not line or line.startswith("contrastive "):
            if lines:
                break
            continue
        lines.append(line)
    return _first_sentence(" ".join(lines))


def _first_sentence(text: str) -> str:
    """``text`` up to its first ``. `` or ``; `` outside parentheses."""
    depth = 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(depth - 1, 0)
        elif char in ".;" and depth == 0 and text[i + 1 : i + 2] in (" ", ""):
            return text[:i]
    return text


def _choices(given: str, specs: dict[str, Path]) -> str:
    if not specs:
        return " (this installation has no packaged specs)"
    stem = Path(given).name.removesuffix(SUFFIX)
    close = difflib.get_close_matches(stem, list(specs), n=1, cutoff=0.6)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    return f"{hint}; packaged specs: {', '.join(specs)}"
