"""The one preprocessing function: what it accepts, what it refuses, and why."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model.preprocess import InvalidImage, decode_image, preprocess
from tests.helpers import image_bytes


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("RGB", "JPEG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("LA", "PNG"), ("RGB", "WEBP")],
)
def test_any_common_image_becomes_rgb_uint8(mode: str, fmt: str) -> None:
    out = preprocess(image_bytes((40, 24), mode=mode, fmt=fmt), 32)
    assert out.shape == (32, 32, 3)
    assert out.dtype == np.uint8


def test_transparent_pixels_are_composited_on_white() -> None:
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    assert (preprocess(buffer.getvalue(), 8) == 255).all()


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (20, 10), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 10))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    upright = decode_image(buffer.getvalue())
    assert upright.size == (10, 20)
    top = np.asarray(upright)[2, 5]
    assert top[2] > 200 and top[0] < 50  # the blue half is now on top


def test_tiny_image_is_upscaled() -> None:
    assert preprocess(image_bytes((1, 1), fmt="PNG"), 32).shape == (32, 32, 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is plain text, not a picture", "not a recognised image"),
        (image_bytes((64, 64))[:200], "corrupt or truncated"),
    ],
)
def test_bad_bytes_raise_invalid_image_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidImage, match=reason):
        preprocess(data, 32)


def test_decompression_bomb_is_refused() -> None:
    image = Image.new("L", (8000, 6000))  # 48 MP, above the limit, tiny as PNG
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    with pytest.raises(InvalidImage, match="too large"):
        preprocess(buffer.getvalue(), 32)


@pytest.mark.parametrize(("mode", "fmt"), [("RGB", "JPEG"), ("RGBA", "PNG"), ("L", "WEBP")])
def test_decoded_image_keeps_its_source_format(mode: str, fmt: str) -> None:
    assert decode_image(image_bytes(mode=mode, fmt=fmt)).format == fmt
