"""Core never names a built-in component's option.

What core must know of a component is a capability of its options (``contrastive/interfaces.py``,
documented in ``contrastive/hookspecs.py``), so a third-party component with other option names
gets the same behaviour. This test reads every module under ``contrastive/`` and fails on
- any attribute read off a component's options object (``x.options.foo``, ``options.foo``),
- a built-in option's name as an attribute (``.num_layers``) or a string (``"labelled_weight"``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import attrs
import pytest

from contrastive.registry import load_registry
from tests.conftest import REPO

CORE = REPO / "contrastive"

#: Built-in option names that are also words of core's own, each with where core uses it.
SHARED_WORDS = {
    "lr": "torch's param-group key: the engine sets group['lr'] and logs it as a metric",
    "split": "str.split",
    "index": "torch.device.index, the shard index (contrastive.data.index, `contrastive shards index`)",
    "size": "Augmentation.size (a contract in interfaces.py), tar-member and image sizes",
    "mean": "the mean shard size of `contrastive shards` summaries",
    "normalize": "torch.nn.functional.normalize",
    "bias": "ParamRole.BIAS",
    "out_dim": "Head.out_dim (a contract in interfaces.py)",
    "urls": "contrastive.data's ShardDataSource, which the datasets plugin calls with its options",
    "shuffle_buffer": "contrastive.data's ShardDataSource, as above",
    "decoder": "contrastive.data's ShardDataSource, as above",
    "images": "Batch.images (a contract in interfaces.py)",
    "mode": "the open mode of tar files (contrastive.data.tario)",
    "experiment": "the spec's own [experiment] table",
    "std": "torch.Tensor.std (feature standardisation in linear evaluation)",
    "temperature": "the kNN classifier's own temperature (contrastive.evaluate, linear_eval's knn method)",
    "model": "StagePlan.model, the checkpoint's 'model' entry (contrastive.engine), the pretraining stage's "
    "model (contrastive.stages.pretrain)",
    "image_size": "a shard sample's image byte count (contrastive.data.shards)",
}

#: Folders of contrastive/ that are not core machinery, with why.
NOT_CORE = {
    "bench": "the label-efficiency benchmark drives the packaged digits spec with --set overrides "
    "of that spec's components, as a user would",
}


def builtin_option_names() -> set[str]:
    registry = load_registry(disabled=())
    return {
        field.name
        for entry in registry.components()
        if entry.plugin.distribution == "contrastive"
        for field in attrs.fields(entry.options)
    }


def _reads_options(node: ast.Attribute) -> bool:
    """``<anything>.options.<attr>`` or ``options.<attr>``."""
    value = node.value
    return (isinstance(value, ast.Attribute) and value.attr == "options") or (
        isinstance(value, ast.Name) and value.id == "options"
    )


def violations(source: str, names: set[str]) -> list[tuple[int, str]]:
    """``(line, what)`` for every read of an option by name in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _reads_options(node):
            found.append((node.lineno, f"reads .{node.attr} of a component's options"))
        elif isinstance(node, ast.Attribute) and node.attr in names:
            found.append((node.lineno, f"attribute .{node.attr} is a built-in component's option"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
            found.append((node.lineno, f"string {node.value!r} is a built-in component's option"))
    return found


def core_modules() -> list[Path]:
    return [path for path in sorted(CORE.rglob("*.py")) if path.relative_to(CORE).parts[0] not in NOT_CORE]


def test_core_names_no_builtin_option() -> None:
    names = builtin_option_names() - set(SHARED_WORDS)
    found = [
        f"{path.relative_to(REPO)}:{line}: {what}"
        for path in core_modules()
        for line, what in violations(path.read_text(encoding="utf-8"), names)
    ]
    assert not found, "core reads component options by name; make it a capability:\n" + "\n".join(found)


def test_the_shared_words_are_options_that_core_uses_as_its_own() -> None:
    """The exceptions stay few and true: each is a built-in option name that core really uses."""
    options = builtin_option_names()
    assert set(SHARED_WORDS) <= options
    text = "\n".join(path.read_text(encoding="utf-8") for path in core_modules())
    for word in SHARED_WORDS:
        assert f".{word}" in text or f'"{word}"' in text or f"'{word}'" in text, word


@pytest.mark.parametrize(
    "snippet",
    [
        "x = spec.loss.options.labelled_weight",
        'x = getattr(spec.pretrain.head.options, "num_layers", None)',
        'x = rec["options"].get("sk_ratio", 0)',
        "x = options.anything",
        "x = opts.width_multiplier",
    ],
)
def test_the_check_catches_what_it_should(snippet: str) -> None:
    assert violations(snippet, builtin_option_names() - set(SHARED_WORDS))
