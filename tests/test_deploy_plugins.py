"""Export and predict serve any plugin: a third-party encoder and head (tests/fake_plugins.py), a
torchvision ResNet-18 student, and a third-party evaluation view whose options share no name with
the built-ins' and which offers no ``preprocessing()`` capability. Core asks the augmentation
through :class:`contrastive.interfaces.Augmentation` alone, so the exports fold in its own
``on_device`` and ``predict`` rebuilds its own ``per_sample``."""

from __future__ import annotations

from pathlib import Path

import attrs
import torch
import torch.nn.functional as F

from contrastive import Component, hookimpl, option
from contrastive.export import export_model, read_onnx_metadata
from contrastive.predict import open_model, predict
from contrastive.registry import Registry, discover_entry_points, load_registry
from contrastive.runner import run
from contrastive.spec.loader import load
from tests import fake_plugins
from tests.conftest import entry_point
from tests.test_third_party_capabilities import OVERRIDES
from tests.tiny_specs import DIGITS_SPEC

#: Fixtures: digits_data, digits_env; tiny_run, digits_test (one tiny run for the session).
pytest_plugins = ["tests.stage_fixtures", "tests.deploy_fixtures"]


@attrs.frozen
class SquareViewOptions:
    """Options of ``square_view``: the whole image squashed to a square, shifted down."""

    side: int = option(8, "Side of the view.", min=1)
    shift: float = option(0.25, "Subtracted from the [0, 1] pixels on the device.")


class SquareView:
    """Resize the whole image (no crop) to ``side`` x ``side``; on the device ``x / 255 - shift``."""

    def __init__(self, options: SquareViewOptions) -> None:
        self.num_views = 1
        self.size = options.side
        self.shift = options.shift

    def per_sample(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        image = image.expand(3, -1, -1) if image.shape[0] == 1 else image
        resized = F.interpolate(image[None].float(), size=(self.size, self.size), mode="bilinear")
        return resized.round().clamp(0, 255).to(torch.uint8)

    def on_device(self, views: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return views.float() / 255.0 - self.shift


class SquareViews:
    @hookimpl
    def contrastive_register_augmentations(self) -> list[Component]:
        return [Component("square_view", SquareView, SquareViewOptions, summary="A squashed view (test).")]


def registry() -> Registry:
    plugins = [
        entry_point("thirdparty", fake_plugins.ThirdParty(), "contrastive-thirdparty", "0.1.0"),
        entry_point("views", SquareViews(), "contrastive-views", "0.1.0"),
    ]
    return load_registry([*discover_entry_points(), *plugins], disabled=())


VIEW_OVERRIDES = (
    *(o for o in OVERRIDES if not o.startswith(("finetune.eval_augmentation", "distill.eval_augmentation"))),
    "finetune.eval_augmentation.name=square_view",
    "finetune.eval_augmentation.shift=0.5",
    "distill.eval_augmentation.name=square_view",
)


def test_third_party_stages_export_and_predict_alike(
    digits_env: Path,
    digits_test: Path,
    tmp_path: Path,
) -> None:
    plugins = registry()
    run_dir = tmp_path / "run"
    run(load(DIGITS_SPEC, VIEW_OVERRIDES, registry=plugins), run_dir=run_dir)
    for stage in ("finetune", "distill"):  # tiny_cnn + stacked_mlp; torchvision's ResNet-18 student
        on_run = predict(open_model(run_dir / stage, plugins), [digits_test], top_k=2, batch_size=100)
        assert len(on_run.predictions) == 500
        for fmt in ("onnx", "torchscript"):
            out = tmp_path / f"{stage}.{fmt}"
            export_model(run_dir / stage, out, format=fmt, what="classifier", registry=plugins)
            on_export = predict(open_model(out, plugins), [digits_test], top_k=2, batch_size=64)
            for ours, theirs in zip(on_run.predictions, on_export.predictions, strict=True):
                tied = abs(ours.top[0][2] - ours.top[1][2]) <= 2e-6
                assert theirs.top[0][0] == ours.top[0][0] or tied, (stage, fmt, ours, theirs)
                assert abs(theirs.top[0][2] - ours.top[0][2]) <= 1e-5
        metadata = read_onnx_metadata((tmp_path / f"{stage}.onnx").read_bytes(), stage)
        assert metadata.preprocessing is None  # square_view gives no description
        assert metadata.augmentation["name"] == "square_view" and metadata.input_size == 8
        assert metadata.class_names == tuple(str(i) for i in range(10))
    # The folded on_device is the plugin's own: a view shifted by 0.5 in finetune, 0.25 in distill.
    scripted = torch.jit.load(str(tmp_path / "finetune.torchscript"))
    network = open_model(run_dir / "finetune", plugins)
    views = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    torch.testing.assert_close(scripted(views), network.logits(views), rtol=0, atol=1e-6)


def test_its_option_names_are_not_builtin() -> None:
    builtin = {
        field.name
        for entry in load_registry(disabled=()).components()
        for field in attrs.fields(entry.options)
    }
    assert not {"side", "shift"} & builtin
