"""TorchCodec, the default decoder: its pixels against torchvision.io's on every kind of data we ship
or build (digits shards, CIFAR shards, JPEG photos of ImageNet size), no DeprecationWarning, and
the fallback to torchvision.io where TorchCodec cannot be loaded."""

from __future__ import annotations

import io
import logging
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contrastive.data import decode as decode_module
from contrastive.data.cifar import build_cifar
from contrastive.data.decode import decode_torchcodec, decode_torchvision, resolve_decoder
from contrastive.data.digits import ensure_digits
from contrastive.data.sources import webdataset_source
from tests.test_cifar import cifar10_files, write_folder
from tests.test_pipeline import TinyAugmentation, write_set

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
_LOADED = decode_module.torchcodec_decoders()
#: Where TorchCodec cannot be loaded (a wheel built for another torch) the fallback test below runs.
needs_torchcodec = pytest.mark.skipif(
    isinstance(_LOADED, str), reason=f"TorchCodec cannot be loaded: {_LOADED}"
)


def shard_images(folder: Path) -> list[bytes]:
    """The encoded image of every sample in every shard under ``folder``."""
    blobs = []
    for shard in sorted(folder.rglob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
                    handle = tar.extractfile(member)
                    assert handle is not None
                    blobs.append(handle.read())
    return blobs


def max_difference(blobs: list[bytes]) -> int:
    """Largest per-pixel difference between TorchCodec and torchvision.io over ``blobs`` (shapes equal)."""
    worst = 0
    for blob in blobs:
        new, old = decode_torchcodec(blob), decode_torchvision(blob)
        assert new.dtype == old.dtype == torch.uint8
        assert new.shape == old.shape
        worst = max(worst, int((new.int() - old.int()).abs().max()))
    return worst


def photo(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A photo-like RGB image: smooth colour gradients, a few hard-edged shapes, sensor noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    channels = [
        127 + 90 * np.sin(x / rng.uniform(30, 120) + phase[c]) * np.cos(y / rng.uniform(30, 120) - phase[c])
        for c in range(3)
    ]
    image = np.stack(channels, axis=-1)
    for _ in range(6):
        top, left = rng.integers(0, height - 40), rng.integers(0, width - 40)
        image[top : top + rng.integers(20, 160), left : left + rng.integers(20, 160)] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 6, size=image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", **options)
    return out.getvalue()


@needs_torchcodec
def test_digits_shards_decode_identically(tmp_path: Path) -> None:
    blobs = shard_images(ensure_digits(tmp_path / "digits"))
    assert len(blobs) == 1797
    assert max_difference(blobs) == 0


@needs_torchcodec
def test_cifar_builder_output_decodes_identically(tmp_path: Path) -> None:
    files, _ = cifar10_files()
    build_cifar(write_folder(tmp_path / "src", "cifar-10-batches-py", files), tmp_path / "out", maxcount=4)
    blobs = shard_images(tmp_path / "out")
    assert len(blobs) == 18
    assert max_difference(blobs) == 0


@needs_torchcodec
def test_imagenet_size_jpegs_within_one_grey_level() -> None:
    """Baseline and progressive JPEGs, 4:2:0 and 4:4:4 chroma, quality 75-95, greyscale and CMYK."""
    rng = np.random.default_rng(0)
    blobs = []
    for i, (height, width) in enumerate(
        ((375, 500), (500, 333), (480, 640), (333, 500), (256, 256), (817, 1023))
    ):
        image = photo(rng, height, width)
        blobs.append(jpeg(image, quality=75 + 4 * i, subsampling=2 if i % 2 else 0, progressive=i % 3 == 0))
    blobs.append(jpeg(photo(rng, 375, 500).convert("L"), quality=90))
    blobs.append(jpeg(photo(rng, 375, 500).convert("CMYK"), quality=90))
    assert max_difference(blobs) <= 1


@needs_torchcodec
def test_sixteen_bit_png_scales_like_torchvision() -> None:
    values = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    out = io.BytesIO()
    Image.fromarray(values).save(out, format="PNG")
    blob = out.getvalue()
    assert torch.equal(decode_torchcodec(blob), decode_torchvision(blob))


@needs_torchcodec
def test_other_formats_go_through_pil() -> None:
    out = io.BytesIO()
    Image.new("RGB", (7, 5), (10, 20, 30)).save(out, format="BMP")
    image = decode_torchcodec(out.getvalue())
    assert image.shape == (3, 5, 7)
    assert image[:, 0, 0].tolist() == [10, 20, 30]


@needs_torchcodec
def test_damaged_png_is_an_exception_not_a_crash() -> None:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out, format="PNG")
    data = bytearray(out.getvalue())
    data[60] ^= 0x10  # inside IDAT
    with pytest.raises(ValueError, match="damaged PNG"):
        decode_torchcodec(bytes(data))


@needs_torchcodec
def test_the_default_decoder_is_torchcodec_and_warns_nothing(tmp_path: Path) -> None:
    """Batches of JPEG shards under warnings-as-errors: torchvision.io's DeprecationWarning would fail it."""
    write_set(tmp_path / "jpeg", (3, 3))
    source = webdataset_source(str(tmp_path / "jpeg"))
    assert source.decoder == "torchcodec"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batches = list(
            source.eval_batches(
                augmentation=TinyAugmentation(), batch_size=6, rank=0, world_size=1, num_workers=0
            )
        )
    assert sum(len(b.labels) for b in batches) == 6


def test_without_torchcodec_the_source_falls_back_with_one_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(decode_module, "torchcodec_decoders", lambda: "ImportError: no torchcodec")
    with caplog.at_level(logging.WARNING, logger="contrastive.data.decode"):
        assert resolve_decoder("torchcodec") == "torchvision"
    assert [r.getMessage() for r in caplog.records] == [
        "TorchCodec cannot be loaded (ImportError: no torchcodec): decoding images with torchvision.io"
    ]
    assert resolve_decoder("pil") == "pil"
    with pytest.raises(ImportError, match="no torchcodec"):
        decode_torchcodec(b"\xff\xd8\xff")
