"""The one preprocessing function: what it accepts, what it refuses, and why."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from model.preprocess import MIN_SIDE, InvalidImage, decode_image, preprocess
from tests.helpers import image_bytes

# decode_image refuses these itself; Pillow's warning (silenced in production, re-enabled by pytest) is noise.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("RGB", "JPEG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("LA", "PNG"), ("RGB", "WEBP")],
)
def test_any_common_image_becomes_rgb_uint8(mode: str, fmt: str) -> None:
    out = preprocess(image_bytes((40, 24), mode=mode, fmt=fmt), 32)
    assert out.shape == (32, 32, 3)
    assert out.dtype == np.uint8


def test_transparent_pixels_are_composited_on_white() -> None:
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    assert (preprocess(buffer.getvalue(), 16) == 255).all()


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    upright = decode_image(buffer.getvalue())
    assert upright.size == (20, 40)
    top = np.asarray(upright)[4, 10]
    assert top[2] > 200 and top[0] < 50  # the blue half is now on top


def test_tiny_image_is_refused() -> None:
    with pytest.raises(InvalidImage, match=r"image too small: 1x1 pixels \(minimum 16x16\)"):
        preprocess(image_bytes((1, 1), fmt="PNG"), 32)


@pytest.mark.parametrize("size", [(MIN_SIDE - 1, 200), (200, MIN_SIDE - 1)])
def test_either_side_below_the_minimum_is_refused(size: tuple[int, int]) -> None:
    with pytest.raises(InvalidImage, match="too small"):
        decode_image(image_bytes(size, fmt="PNG"))
    assert decode_image(image_bytes((MIN_SIDE, MIN_SIDE), fmt="PNG")).size == (MIN_SIDE, MIN_SIDE)


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


def png_header_only(width: int, height: int) -> bytes:
    """A ~60-byte PNG that declares ``width`` x ``height`` pixels (its pixel data is a stub)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(100_000, 100_000), (8_000, 6_000), (1_000_000, 50)])
def test_huge_declared_size_is_refused_before_decoding(size: tuple[int, int]) -> None:
    data = png_header_only(*size)
    assert len(data) < 100
    # Decoding these pixels would need gigabytes, and the stub would fail as truncated: "too large" proves
    # the refusal came from the header.
    with pytest.raises(InvalidImage, match="image too large"):
        decode_image(data)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_images_are_refused(fmt: str) -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(InvalidImage, match="animated images are not supported.*upload a single frame"):
        decode_image(buffer.getvalue())


def test_a_single_frame_gif_is_accepted() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(buffer, format="GIF")
    assert decode_image(buffer.getvalue()).format == "GIF"


def test_formats_outside_the_accepted_list_are_refused() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, format="EPS")  # loading EPS would run Ghostscript
    with pytest.raises(InvalidImage, match="not a recognised image format"):
        decode_image(buffer.getvalue())


def solid(mode: str, colour: object, fmt: str, **info: object) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (32, 32), colour).save(buffer, format=fmt, **info)  # type: ignore[arg-type]
    return buffer.getvalue()


def palette_with_transparent_index() -> bytes:
    image = Image.new("P", (32, 32), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.paste(0, (0, 0, 16, 32))  # left half: index 0, declared transparent
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "left", "right"),
    [
        (solid("CMYK", (0, 255, 255, 0), "JPEG", quality=95), (255, 0, 0), (255, 0, 0)),  # pure red in CMYK
        (solid("L", 100, "JPEG", quality=95), (100, 100, 100), (100, 100, 100)),
        (solid("LA", (0, 0), "PNG"), (255, 255, 255), (255, 255, 255)),  # black, fully transparent
        (solid("LA", (60, 255), "PNG"), (60, 60, 60), (60, 60, 60)),
        (solid("RGBA", (0, 0, 255, 128), "PNG"), (127, 127, 255), (127, 127, 255)),  # half-transparent blue
        (palette_with_transparent_index(), (255, 255, 255), (10, 200, 30)),
    ],
    ids=["cmyk-jpeg", "grayscale", "la-transparent", "la-opaque", "rgba-half", "palette-transparency"],
)
def test_colour_modes_become_the_right_rgb(data: bytes, left: tuple[int, ...], right: tuple[int, ...]) -> None:
    image = decode_image(data)
    assert image.mode == "RGB"
    pixels = np.asarray(image).astype(int)
    assert np.abs(pixels[16, 4] - left).max() <= 3
    assert np.abs(pixels[16, 28] - right).max() <= 3


def gradient_16_bit() -> np.ndarray:
    return np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (32, 1))


@pytest.mark.parametrize(
    ("pixels", "fmt", "mode"),
    [
        (gradient_16_bit(), "PNG", "I;16"),
        (gradient_16_bit().astype(">u2"), "TIFF", "I;16B"),
        (gradient_16_bit().astype(np.int32), "TIFF", "I"),
        (gradient_16_bit().astype(np.float32) / 65535, "TIFF", "F"),
    ],
)
def test_high_bit_depth_gradient_is_scaled_to_8_bits_not_clipped(pixels: np.ndarray, fmt: str, mode: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == mode
    row = np.asarray(decode_image(buffer.getvalue()))[0].astype(int)  # (256, 3)
    assert (row[:, 0] == row[:, 1]).all() and (row[:, 0] == row[:, 2]).all()
    assert row[0, 0] == 0 and row[-1, 0] == 255
    assert (np.diff(row[:, 0]) >= 0).all()  # still a gradient, not all white past 255
    assert np.abs(row[:, 0] - np.arange(256)).max() <= 1
