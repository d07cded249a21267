"""Image bytes to ``uint8 [3, H, W]`` RGB tensors.

Three decoders:

- ``torchcodec`` (default): TorchCodec's image decoders (``torchcodec.decoders.decode_jpeg`` /
  ``decode_png`` / ``decode_webp`` / ``decode_gif``: libjpeg-turbo, libpng, libwebp bundled in its
  wheel; no FFmpeg needed), the successor of ``torchvision.io``'s decoders, which torchvision 0.29
  deprecates. Other formats (BMP, TIFF, ...) go through PIL. Where TorchCodec cannot be loaded
  (no wheel for the platform, or one built for another torch), :func:`resolve_decoder` falls back
  to ``torchvision`` with one log line. Pixels equal ``torchvision``'s on the digits and CIFAR
  shards and differ by at most one grey level on JPEG photos (``tests/test_decode.py``).
- ``torchvision``: ``torchvision.io.decode_image`` (libjpeg-turbo for JPEG, also PNG,
  WebP, GIF; grayscale and CMYK converted to RGB), falling back to PIL for formats it does not
  read (BMP, TIFF, ...). Measured faster on ImageNet-size JPEGs than PIL, see
  ``benchmarks/data_pipeline.py --decoders``.
- ``pil``: PIL with JPEG draft mode: the decoder scales a JPEG down by 1/2, 1/4 or 1/8 while both
  sides stay at least ``draft`` pixels (the view size), which saves time on large photos; the
  image is returned as a channels-last view.
"""

from __future__ import annotations

import io
import logging
import warnings
import zlib
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image  # imported once here, before workers fork

Decoder = Literal["torchcodec", "torchvision", "pil"]
DECODERS: tuple[Decoder, ...] = ("torchcodec", "torchvision", "pil")

#: TorchCodec's decoder for each magic number it reads (filled by :func:`torchcodec_decoders`).
CodecTable = tuple[tuple[bytes, int, Callable[..., torch.Tensor]], ...]

_log = logging.getLogger(__name__)


def torchcodec_decoders() -> CodecTable | str:
    """TorchCodec's image decoders keyed by magic number, or why TorchCodec cannot be loaded.

    Returns:
        ``((magic, offset, decode), ...)``: ``data[offset:offset + len(magic)] == magic`` picks
        ``decode``; or the import error's text.
    """
    try:
        import torchcodec.decoders as codecs
    except Exception as error:  # any load failure (no wheel, one built for another torch) means fall back
        return f"{type(error).__name__}: {error}"
    # getattr: torchcodec.decoders re-exports these without __all__ (mypy's explicit-export rule)
    return (
        (b"\xff\xd8\xff", 0, getattr(codecs, "decode_jpeg")),  # noqa: B009
        (PNG_SIGNATURE, 0, getattr(codecs, "decode_png")),  # noqa: B009
        (b"WEBP", 8, getattr(codecs, "decode_webp")),  # noqa: B009
        (b"GIF8", 0, getattr(codecs, "decode_gif")),  # noqa: B009
    )


def resolve_decoder(decoder: Decoder) -> Decoder:
    """``decoder``, or ``torchvision`` (logged once per call) when ``torchcodec`` cannot be loaded."""
    if decoder != "torchcodec":
        return decoder
    loaded = torchcodec_decoders()
    if isinstance(loaded, str):
        _log.warning("TorchCodec cannot be loaded (%s): decoding images with torchvision.io", loaded)
        return "torchvision"
    return decoder


def decode_pil(data: bytes, draft: int = 0) -> torch.Tensor:
    """Decode with PIL; JPEGs in draft mode so both sides stay >= ``draft`` (0: full size).

    Returns:
        ``uint8 [3, H, W]`` (a channels-last view).

    Raises:
        Exception: Whatever PIL raises on undecodable bytes.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if draft > 0 and image.format == "JPEG":
            image.draft("RGB", (draft, draft))
        rgb = image.convert("RGB")
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(data: bytes) -> None:
    """Check a PNG's chunks (lengths within the data, the CRC-32 of every critical chunk, an
    ``IEND``) before libpng reads it.

    torchvision 0.29's PNG decoder kills the process (SIGSEGV) when libpng reports an error while
    it reads the pixel rows, e.g. for one flipped bit in the compressed pixels; a damaged image must
    be an exception instead (a skipped sample). The CRCs find every such accidental change (bit
    flips, overwritten or cut-off data); a PNG crafted with valid CRCs is not checked further.

    Raises:
        ValueError: The PNG is cut short, or a critical chunk fails its CRC check.
    """
    view = memoryview(data)
    position = len(PNG_SIGNATURE)
    while True:
        if position + 12 > len(data):
            raise ValueError(f"damaged PNG: cut short at byte {position} of {len(data)} (no IEND chunk)")
        length = int.from_bytes(view[position : position + 4], "big")
        end = position + 8 + length
        if end + 4 > len(data):
            raise ValueError(f"damaged PNG: a chunk of {length} bytes at byte {position} runs past its end")
        kind = bytes(view[position + 4 : position + 8])
        critical = not kind[0] & 0x20  # IHDR, PLTE, IDAT, IEND; libpng only warns about the others
        if critical and zlib.crc32(view[position + 4 : end]) != int.from_bytes(view[end : end + 4], "big"):
            raise ValueError(
                f"damaged PNG: chunk {kind.decode('latin-1')!r} at byte {position} fails its CRC"
            )
        if kind == b"IEND":
            return
        position = end + 4


def decode_torchvision(data: bytes) -> torch.Tensor:
    """Decode with ``torchvision.io.decode_image``; formats it cannot read go through PIL.

    Returns:
        ``uint8 [3, H, W]``.

    Raises:
        Exception: The bytes are not a readable image (a PNG is checked by :func:`check_png` first).
    """
    if data[:8] == PNG_SIGNATURE:
        check_png(data)
    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
            warnings.simplefilter("ignore", DeprecationWarning)
            image: torch.Tensor = decode_image(tensor, mode=ImageReadMode.RGB)
        if image.dtype != torch.uint8:  # 16-bit PNG
            image = image.to(torch.int32).div(257, rounding_mode="floor").to(torch.uint8)
    except RuntimeError:
        if data[:3] == b"\xff\xd8\xff" or data[:8] == PNG_SIGNATURE:
            raise  # a format torchvision reads: the bytes are bad, PIL will not do better
        return decode_pil(data)
    return image


def decode_torchcodec(data: bytes, codecs: CodecTable | None = None) -> torch.Tensor:
    """Decode with TorchCodec (JPEG, PNG, WebP, GIF); other formats go through PIL.

    Args:
        data: Encoded image.
        codecs: :func:`torchcodec_decoders`' table (looked up when None).

    Returns:
        ``uint8 [3, H, W]`` (16-bit PNGs scaled by ``// 257``, as :func:`decode_torchvision` does).

    Raises:
        Exception: The bytes are not a readable image (a PNG is checked by :func:`check_png` first);
            ``ImportError`` when TorchCodec cannot be loaded.
    """
    table = torchcodec_decoders() if codecs is None else codecs
    if isinstance(table, str):
        raise ImportError(f"TorchCodec cannot be loaded: {table}")
    for magic, offset, codec in table:
        if data[offset : offset + len(magic)] == magic:
            if magic == PNG_SIGNATURE:
                check_png(data)
            image: torch.Tensor = codec(
                torch.frombuffer(bytearray(data), dtype=torch.uint8), mode="RGB", output_dtype="auto"
            )
            if image.dtype != torch.uint8:  # 16-bit PNG
                image = image.to(torch.int32).div(257, rounding_mode="floor").to(torch.uint8)
            return image
    return decode_pil(data)


def decode(data: bytes, decoder: Decoder = "torchcodec", draft: int = 0) -> torch.Tensor:
    """Decode image bytes with the chosen decoder.

    Args:
        data: Encoded image.
        decoder: ``"torchcodec"``, ``"torchvision"`` or ``"pil"``.
        draft: For ``pil``: smallest side the JPEG draft may reduce to (0: no draft).

    Returns:
        ``uint8 [3, H, W]`` RGB.
    """
    if decoder == "pil":
        return decode_pil(data, draft)
    if decoder == "torchcodec":
        return decode_torchcodec(data)
    return decode_torchvision(data)
