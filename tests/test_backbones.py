"""The ``timm`` and ``torchvision`` encoders (plugins/backbones.py): pooled features of any network,
batch norms converted to the spec's normalization, validation, weights files, and all three stages.

The timm tests use timm's own tiny ``test_*`` models and skip when timm is not installed (tox's
``py`` environment installs it); ``test_missing_timm_*`` simulates its absence.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from contrastive.bench.label_efficiency import ARMS, QUICK_OVERRIDES
from contrastive.cli import cli
from contrastive.errors import MissingExtraError, RunError, SpecError
from contrastive.export import export
from contrastive.interfaces import LossOutput, encoder_torchvision_model
from contrastive.linear_eval import EvalRequest, evaluate_stage
from contrastive.registry import Registry, load_registry
from contrastive.runner import run
from contrastive.spec.loader import load
from contrastive_plugins.backbones import NormAct, TimmOptions, build_timm, convert_batch_norms
from contrastive_plugins.losses import NTXentLoss
from contrastive_plugins.normalizations import BatchNorm, GlobalBatchNorm
from tests._multiprocess import run_distributed
from tests.tiny_specs import (
    DIGITS_SPEC,
    TINY_DIGITS_OVERRIDES,
    load_state_dict,
    tiny_pretrain_spec,
    write_spec,
)

pytest_plugins = ["tests.stage_fixtures"]  # its fixtures: digits_data, digits_env

TIMM_SPEC = DIGITS_SPEC.parent / "digits_1pct_timm.toml"
HAS_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(
    not HAS_TIMM, reason="timm is not installed (pip install 'contrastive[timm]')"
)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def _batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def _problems(exc: pytest.ExceptionInfo[SpecError]) -> list[str]:
    return [str(p) for p in exc.value.problems]


# -- features and feature_dim ---------------------------------------------------------------------


@needs_timm
@pytest.mark.parametrize(
    ("model", "options"),
    [
        ("test_resnet", {}),  # plain BatchNorm2d
        ("test_efficientnet", {}),  # timm's BatchNormAct2d
        ("test_convnext", {}),  # LayerNorm only: ConvNeXt
        ("test_vit", {"image_size": 32}),  # LayerNorm only, fixed input size: ViT
    ],
)
def test_timm_encoder_outputs_pooled_features_of_its_width(
    registry: Registry, model: str, options: dict[str, Any]
) -> None:
    import timm

    encoder = registry.build(
        "encoders", "timm", model=model, norm_layer=registry.build("normalizations", "global_bn"), **options
    )
    with_classifier = timm.create_model(model, pretrained=False, num_classes=7, **_timm_size(options))
    assert encoder.feature_dim == with_classifier.get_classifier().in_features
    out = encoder(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, encoder.feature_dim) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)


def _timm_size(options: dict[str, Any]) -> dict[str, Any]:
    return {"img_size": options["image_size"]} if "image_size" in options else {}


@pytest.mark.parametrize(
    ("model", "feature_dim"), [("mobilenet_v3_small", 1024), ("shufflenet_v2_x0_5", 1024), ("resnet18", 512)]
)
def test_torchvision_encoder_outputs_what_its_last_linear_layer_read(
    registry: Registry, model: str, feature_dim: int
) -> None:
    encoder = registry.build(
        "encoders", "torchvision", model=model, norm_layer=registry.build("normalizations", "global_bn")
    )
    assert encoder.feature_dim == feature_dim
    assert not [m for m in encoder.modules() if isinstance(m, nn.Linear) and m.out_features == 1000]
    encoder.eval()
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, feature_dim) and torch.isfinite(out).all()


def test_torchvision_vit_takes_the_image_size(registry: Registry) -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    encoder = registry.build("encoders", "torchvision", model="vit_b_32", image_size=64)
    assert isinstance(encoder, VisionTransformer) and encoder.image_size == 64
    assert encoder.feature_dim == 768
    with torch.no_grad():
        assert encoder.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 768)


# -- batch-norm conversion ----------------------------------------------------------------------


def _randomise_batch_norms(network: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in _batch_norms(network):
            assert isinstance(bn, _BatchNorm)
            bn.weight.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=generator))
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)


def _native_and_built(
    registry: Registry, tmp_path: Path, family: str, model: str, native: nn.Module, **options: Any
) -> nn.Module:
    """Save ``native``'s randomised weights and build the encoder from them."""
    _randomise_batch_norms(native)
    path = tmp_path / f"{model}.pt"
    torch.save({"state_dict": native.state_dict()}, path)  # a training checkpoint's layout
    return registry.build("encoders", family, model=model, weights=str(path), **options)


@needs_timm
@pytest.mark.parametrize("model", ["test_resnet", "test_efficientnet"])
def test_timm_batch_norms_become_the_spec_normalization_with_their_state(
    registry: Registry, tmp_path: Path, model: str
) -> None:
    import timm

    native = timm.create_model(model, pretrained=False, num_classes=5)  # weights with a classifier
    count = len(_batch_norms(native))
    norm = registry.build("normalizations", "global_bn", eps=1e-3, momentum=0.3)
    encoder = _native_and_built(registry, tmp_path, "timm", model, native, norm_layer=norm)
    converted = _batch_norms(encoder)
    assert len(converted) == count and all(type(m) is GlobalBatchNorm for m in converted)
    assert all((m.eps, m.momentum) == (1e-3, 0.3) for m in converted)  # the spec's settings
    if model == "test_efficientnet":  # batch norm + activation in one timm layer
        wrapped = [m for m in encoder.modules() if isinstance(m, NormAct)]
        assert len(wrapped) == count and any(not isinstance(m.act, nn.Identity) for m in wrapped)

    # The network's own settings kept: the encoder computes exactly what timm's network does.
    kept = registry.build(
        "encoders",
        "timm",
        model=model,
        weights=str(tmp_path / f"{model}.pt"),
        keep_bn_settings=True,
        norm_layer=norm,
    )
    assert [(m.eps, m.momentum) for m in _batch_norms(kept)] == [
        (m.eps, m.momentum) for m in _batch_norms(native)
    ]
    native.reset_classifier(0)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(kept.eval()(x), native.eval()(x), rtol=1e-5, atol=1e-5)


def test_torchvision_batch_norms_are_converted_and_it_loads_a_torchvision_state_dict(
    registry: Registry, tmp_path: Path
) -> None:
    import torchvision

    native = torchvision.models.mobilenet_v3_small(weights=None, num_classes=10)
    count = len(_batch_norms(native))
    encoder = _native_and_built(
        registry,
        tmp_path,
        "torchvision",
        "mobilenet_v3_small",
        native,
        keep_bn_settings=True,
        norm_layer=registry.build("normalizations", "batch_norm"),
    )
    converted = _batch_norms(encoder)
    assert len(converted) == count and all(type(m) is BatchNorm for m in converted)
    assert {(m.eps, m.momentum) for m in converted} == {(0.001, 0.01)}  # torchvision's MobileNetV3
    native.classifier[3] = nn.Identity()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(x), native.eval()(x), rtol=1e-5, atol=1e-5)
    # The converted encoder's keys are torchvision's: its weights load back into torchvision.
    fresh = torchvision.models.mobilenet_v3_small(weights=None)
    missing, unexpected = fresh.load_state_dict(encoder.state_dict(), strict=False)
    assert set(missing) == {"classifier.3.weight", "classifier.3.bias"} and not unexpected


@needs_timm
def test_normalization_none_removes_batch_norm_and_keeps_activations(registry: Registry) -> None:
    encoder = registry.build(
        "encoders", "timm", model="test_efficientnet", norm_layer=registry.build("normalizations", "none")
    )
    assert not _batch_norms(encoder)
    wrapped = [m for m in encoder.modules() if isinstance(m, NormAct)]
    assert wrapped and all(isinstance(m.norm, nn.Identity) for m in wrapped)
    assert any(not isinstance(m.act, nn.Identity) for m in wrapped)
    assert torch.isfinite(encoder(torch.randn(2, 3, 32, 32))).all()


@needs_timm
@pytest.mark.parametrize("model", ["test_convnext", "test_vit"])
def test_networks_without_batch_norm_keep_their_own_norms_under_any_normalization(
    registry: Registry, model: str
) -> None:
    for normalization in ("global_bn", "batch_norm", "none"):
        norm = registry.build("normalizations", normalization)
        encoder = registry.build("encoders", "timm", model=model, image_size=32, norm_layer=norm)
        assert not _batch_norms(encoder)
        assert any(isinstance(m, nn.LayerNorm) or "LayerNorm" in type(m).__name__ for m in encoder.modules())


def test_convert_batch_norms_replaces_nested_layers_in_place() -> None:
    network = nn.Sequential(
        nn.Conv2d(3, 4, 1),
        nn.BatchNorm2d(4),
        nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)),
        nn.LayerNorm(6),
    )
    calls: list[int] = []

    def factory(num_features: int) -> nn.Module:
        calls.append(num_features)
        return BatchNorm(num_features)

    assert convert_batch_norms(network, factory) == 2
    assert calls == [4, 6]
    assert type(network[1]) is BatchNorm and type(network[2][1]) is BatchNorm
    assert isinstance(network[3], nn.LayerNorm)


# -- validation, weights files, the missing extra -------------------------------------------------


@needs_timm
def test_unknown_model_names_are_spec_errors_with_close_matches() -> None:
    with pytest.raises(SpecError) as exc:
        load(DIGITS_SPEC, ["pretrain.encoder.name=timm", "pretrain.encoder.model=convnext_attto"])
    (problem,) = _problems(exc)
    assert problem.startswith("--set: pretrain.encoder: model: unknown timm model 'convnext_attto'")
    assert "did you mean 'convnext_atto'" in problem
    with pytest.raises(SpecError) as exc:
        load(DIGITS_SPEC, ["distill.encoder.name=torchvision", "distill.encoder.model=mobilenet_v3_smal"])
    (problem,) = _problems(exc)
    assert problem.startswith("--set: distill.encoder: model: unknown torchvision classification model")
    assert "did you mean 'mobilenet_v3_small'" in problem
    with pytest.raises(SpecError, match="squeezenet1_0 ends in a convolution"):
        load(DIGITS_SPEC, ["distill.encoder.name=torchvision", "distill.encoder.model=squeezenet1_0"])
    with pytest.raises(SpecError, match=r"pretrain.encoder.model: missing required key"):
        load(DIGITS_SPEC, ["pretrain.encoder.name=timm"])


def test_missing_timm_names_the_extra(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(SpecError) as exc:
        load(DIGITS_SPEC, ["pretrain.encoder.name=timm", "pretrain.encoder.model=resnet10t"])
    (problem,) = _problems(exc)
    assert problem.startswith("--set: pretrain.encoder: the timm encoder needs the timm package")
    assert "pip install 'contrastive[timm]'" in problem
    # A builder reached without validation says the same, as the plugin error it is.
    options = object.__new__(TimmOptions)
    with pytest.raises(MissingExtraError, match=r"pip install 'contrastive\[timm\]'") as raised:
        build_timm(options)
    assert raised.value.extra == "timm" and raised.value.exit_code == 3
    # The torchvision encoder needs nothing extra.
    assert registry.build("encoders", "torchvision", model="shufflenet_v2_x0_5").feature_dim == 1024


def test_weights_files_that_do_not_fit_are_run_errors(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="does not exist"):
        registry.build("encoders", "torchvision", model="shufflenet_v2_x0_5", weights=str(tmp_path / "no.pt"))
    import torchvision

    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(RunError, match="does not fit the network") as exc:
        registry.build("encoders", "torchvision", model="shufflenet_v2_x0_5", weights=str(path))
    assert "missing keys" in str(exc.value) and "unexpected keys" in str(exc.value)
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(RunError, match="cannot load checkpoint"):
        registry.build("encoders", "torchvision", model="shufflenet_v2_x0_5", weights=str(text))


@needs_timm
def test_timm_weights_load_from_safetensors_without_the_classifier(
    registry: Registry, tmp_path: Path
) -> None:
    import timm
    from safetensors.torch import save_file

    native = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    save_file(
        {"module." + k: v.contiguous() for k, v in native.state_dict().items()}, tmp_path / "w.safetensors"
    )
    encoder = registry.build("encoders", "timm", model="test_resnet", weights=str(tmp_path / "w.safetensors"))
    native.reset_classifier(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(x), native.eval()(x))


def test_torchvision_encoder_names_its_torchvision_builder(registry: Registry) -> None:
    options = registry.get("encoders", "torchvision").options(model="resnet18")
    assert encoder_torchvision_model(options) == "resnet18"


# -- all three stages, eval, export, resume -------------------------------------------------------

#: The tiny digits run with a timm teacher (timm's BatchNormAct2d under global_bn) and a torchvision
#: student of another family. The digits spec's resnet options are left behind: a new encoder
#: name starts from its own defaults.
PIPELINE = (
    *(o for o in TINY_DIGITS_OVERRIDES if ".encoder." not in o),
    "pretrain.encoder.name=timm",
    "pretrain.encoder.model=test_efficientnet",
    "distill.encoder.name=torchvision",
    "distill.encoder.model=resnet18",
)


@needs_timm
@pytest.mark.slow
def test_timm_teacher_torchvision_student_through_every_stage(digits_env: Path, tmp_path: Path) -> None:
    import torchvision

    run_dir = tmp_path / "run"
    outcome = run(load(DIGITS_SPEC, PIPELINE), run_dir=run_dir)
    results = outcome.results
    assert [results[s]["steps"] for s in ("pretrain", "finetune", "distill")] == [3, 2, 2]
    for stage in ("finetune", "distill"):
        assert 0.0 <= results[stage]["top1"] <= results[stage]["top5"] <= 1.0

    pretrained = load_state_dict(run_dir / "pretrain" / "final.pt")
    assert any(".norm.running_mean" in k for k in pretrained)  # converted BatchNormAct2d layers
    # Fine-tuning rebuilt the timm encoder from the record and kept head layer 1 (from_layer = 1).
    finetuned = load_state_dict(run_dir / "finetune" / "final.pt")
    assert {k for k in finetuned if k.startswith("encoder.")} == {
        k for k in pretrained if k.startswith("encoder.")
    }
    assert {k.split(".")[2] for k in finetuned if k.startswith("head.")} == {"0"}
    torch.testing.assert_close(
        finetuned["encoder.conv_stem.weight"].shape, pretrained["encoder.conv_stem.weight"].shape
    )

    # contrastive eval takes either family's stage unchanged.
    for stage in ("finetune", "distill"):
        record = evaluate_stage(
            EvalRequest(
                stage_dir=run_dir / stage,
                train="digits:train",
                test="digits:test",
                method="knn",
                device="cpu",
            )
        )
        assert record["feature_dim"] == (256 if stage == "finetune" else 512)
        assert 0.0 <= record["top1"] <= 1.0

    # export: the torchvision student loads into torchvision's ResNet-18; the timm teacher is no
    # torchvision network.
    for stage, expected in (("finetune", None), ("distill", "resnet18")):
        _, name = export(run_dir / stage, tmp_path / f"{stage}.pt")
        assert name == expected, stage
    student = torch.load(tmp_path / "distill.pt", map_location="cpu", weights_only=True)
    missing, unexpected = torchvision.models.resnet18(weights=None).load_state_dict(student, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected


@needs_timm
@pytest.mark.slow
def test_label_efficiency_protocol_takes_the_timm_spec_unchanged(digits_env: Path, tmp_path: Path) -> None:
    """The shipped timm spec through every arm of ``bench label-efficiency`` (a few steps each)."""
    tiny = [
        o
        for o in QUICK_OVERRIDES
        if not o.startswith("pretrain.encoder.")  # the resnet's base_width: the student keeps it
    ]
    args = ["bench", "label-efficiency", "--spec", str(TIMM_SPEC), "--labels-per-class", "1", "--seeds", "1"]
    args += ["--out", str(tmp_path / "out"), "--set", "pretrain.encoder.model=test_resnet"]
    for override in tiny:
        args += ["--set", override]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "out" / "label_efficiency.json").read_text())
    assert {row["arm"] for row in rows} == set(ARMS)
    assert all(0.0 <= row["top1"] <= 1.0 for row in rows)
    pretrained = load_state_dict(tmp_path / "out" / "seed0" / "pretrain" / "pretrain" / "final.pt")
    assert "encoder.conv1.0.weight" in pretrained  # timm's test_resnet deep stem


def _encoder_table(family: str) -> str:
    return {
        "timm": 'name = "timm"\nmodel = "test_efficientnet"',
        "torchvision": 'name = "torchvision"\nmodel = "shufflenet_v2_x0_5"',
    }[family]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["timm", "torchvision"])
def test_a_stopped_run_resumes_to_the_weights_of_an_uninterrupted_one(
    digits_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, family: str
) -> None:
    if family == "timm" and not HAS_TIMM:
        pytest.skip("timm is not installed")
    text = tiny_pretrain_spec(batch_size=32, max_steps=5, checkpoint_every=1, deterministic=True)
    text = text.replace(
        'name = "resnet"\ndepth = 18\ncifar_stem = true\nbase_width = 4', _encoder_table(family)
    )
    text = text.replace("size = 8", "size = 16")
    spec = write_spec(tmp_path / "tiny.toml", text)
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    run(load(spec), run_dir=whole)

    forward = NTXentLoss.forward
    calls = itertools.count(1)

    def poisoned(self: NTXentLoss, z1: torch.Tensor, z2: torch.Tensor) -> LossOutput:
        out = forward(self, z1, z2)
        return LossOutput(out.loss * float("nan"), out.metrics) if next(calls) == 4 else out

    monkeypatch.setattr(NTXentLoss, "forward", poisoned)
    with pytest.raises(RunError, match="not finite at step 4"):
        run(load(spec), run_dir=stopped)
    monkeypatch.setattr(NTXentLoss, "forward", forward)
    run(load(spec), run_dir=stopped)  # resumes from the checkpoint of step 3

    ours, theirs = (
        load_state_dict(stopped / "pretrain" / "final.pt"),
        load_state_dict(whole / "pretrain" / "final.pt"),
    )
    assert ours.keys() == theirs.keys()
    assert any(k.startswith("encoder.") for k in ours)
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6, msg=key)


# -- global batch norm on two ranks ---------------------------------------------------------------

#: (family, model) of the two-rank test: timm's BatchNormAct2d layers and torchvision's BatchNorm2d.
TWO_RANK_MODELS = [("timm", "test_efficientnet"), ("torchvision", "shufflenet_v2_x0_5")]


def _two_rank_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, 64, 64, generator=generator), torch.randn(8, 1, generator=generator)


def _global_bn_step(
    rank: int, world: int, family: str, model: str, state: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """One training forward/backward of this rank's 4 rows under global_bn; gradients summed."""
    import torch.distributed as dist

    registry = load_registry()
    encoder = registry.build(
        "encoders", family, model=model, norm_layer=registry.build("normalizations", "global_bn")
    )
    encoder.load_state_dict(state)
    converted = [m for m in encoder.modules() if isinstance(m, GlobalBatchNorm)]
    images, weights = _two_rank_inputs()
    rows = slice(4 * rank, 4 * rank + 4)
    out = encoder.train()(images[rows])
    (out * weights[rows]).sum().backward()
    grads = {}
    for name, param in encoder.named_parameters():
        assert param.grad is not None, name
        grad = param.grad.clone()
        dist.all_reduce(grad)
        grads[name] = grad
    return {
        "shared": all(m.shared for m in converted) and len(converted) > 0,
        "out": out.detach(),
        "grads": grads,
        "state": {k: v.clone() for k, v in encoder.state_dict().items()},
    }


@pytest.mark.slow
@pytest.mark.parametrize(("family", "model"), TWO_RANK_MODELS)
def test_converted_batch_norms_share_statistics_across_two_ranks(family: str, model: str) -> None:
    if family == "timm" and not HAS_TIMM:
        pytest.skip("timm is not installed")
    registry = load_registry()
    torch.manual_seed(0)
    reference = registry.build(
        "encoders", family, model=model, norm_layer=registry.build("normalizations", "batch_norm")
    )
    start = {k: v.clone() for k, v in reference.state_dict().items()}
    images, weights = _two_rank_inputs()
    out = reference.train()(images)
    (out * weights).sum().backward()

    ranks = run_distributed(_global_bn_step, family, model, start, timeout=300)
    assert all(r["shared"] for r in ranks)
    # Outputs, gradients and running statistics equal one process's batch norm on all 8 rows (the
    # gradients to within float error of the largest one: the shift of a batch norm that another
    # normalises right after has a zero gradient in exact arithmetic, float noise in both runs).
    torch.testing.assert_close(torch.cat([r["out"] for r in ranks]), out.detach(), rtol=1e-4, atol=1e-4)
    scale = max(float(p.grad.abs().max()) for p in reference.parameters() if p.grad is not None)
    for name, param in reference.named_parameters():
        assert param.grad is not None
        for r in ranks:
            torch.testing.assert_close(r["grads"][name], param.grad, rtol=1e-3, atol=1e-5 * scale)
    for key, value in reference.state_dict().items():
        if "running" in key:
            for r in ranks:
                torch.testing.assert_close(r["state"][key], value, rtol=1e-4, atol=1e-5, msg=key)
