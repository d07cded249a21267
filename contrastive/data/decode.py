"""Image bytes to ``uint8 [3, H, W]`` RGB tensors.

Two decoders:

- ``torchvision`` (default): ``torchvision.io.decode_image`` (libjpeg-turbo for JPEG, also PNG,
  WebP, GIF; grayscale and CMYK converted to RGB), falling back to PIL for formats it does not
  read (BMP, TIFF, ...). Measured faster on ImageNet-size JPEGs than PIL, see
  ``benchmarks/data_pipeline.py --decoders``.
- ``pil``: PIL with JPEG draft mode: the decoder scales a JPEG down by 1/2, 1/4 or 1/8 while both
  sides stay at least ``draft`` pixels (the view size), which saves time on large photos; the
  image is returned as a channels-last view.
"""

from __future__ import annotations

import io
import warnings
from typing import Literal

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image  # imported once here, before workers fork

Decoder = Literal["torchvision", "pil"]
DECODERS: tuple[Decoder, ...] = ("torchvision", "pil")


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


def decode_torchvision(data: bytes) -> torch.Tensor:
    """Decode with ``torchvision.io.decode_image``; formats it cannot read go through PIL.

    Returns:
        ``uint8 [3, H, W]``.

    Raises:
        Exception: The bytes are not a readable image.
    """
    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
            warnings.simplefilter("ignore", DeprecationWarning)
            image: torch.Tensor = decode_image(tensor, mode=ImageReadMode.RGB)
        if image.dtype != torch.uint8:  # 16-bit PNG
            image = image.to(torch.int32).div(257, rounding_mode="floor").to(torch.uint8)
    except RuntimeError:
        if data[:3] == b"\xff\xd8\xff" or data[:8] == b"\x89PNG\r\n\x1a\n":
            raise  # a format torchvision reads: the bytes are bad, PIL will not do better
        return decode_pil(data)
    return image


def decode(data: bytes, decoder: Decoder = "torchvision", draft: int = 0) -> torch.Tensor:
    """Decode image bytes with the chosen decoder.

    Args:
        data: Encoded image.
        decoder: ``"torchvision"`` or ``"pil"``.
        draft: For ``pil``: smallest side the JPEG draft may reduce to (0: no draft).

    Returns:
        ``uint8 [3, H, W]`` RGB.
    """
    if decoder == "pil":
        return decode_pil(data, draft)
    return decode_torchvision(data)
