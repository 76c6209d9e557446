"""The one preprocessing function, shared by training and serving.

Decode, apply EXIF orientation, convert to RGB, then fit the image to the model's input as uint8,
the way the model's card says (``fit``):

- ``"resize"``: the whole image resized to the input size (a thumbnail: fine for 32-px CIFAKE,
  but it erases the pixel-level traces of a 512-px image);
- ``"mosaic"``: the input is a 2x2 mosaic of tiles of half its side, cut at native resolution
  from the four corners' side of the image (evenly spaced crops); the network scores each tile and
  averages. An image whose short side is under a tile is first scaled up so that it is one tile
  wide (CIFAKE's 32 px become one 224-px tile, repeated), never shrunk.

Normalisation is not here: it lives inside the network (and so inside the ONNX graph).

What ``decode_image`` refuses (``InvalidImage``, whose message the HTTP layer shows the user):
empty or unreadable bytes, formats outside ``ACCEPTED_FORMATS``, truncated or corrupt files,
more than ``MAX_PIXELS`` pixels (checked on the declared size, before any pixel is allocated),
animations (more than one frame), and images under ``MIN_SIDE`` pixels on either side.

How it converts to 8-bit RGB: transparency is composited on white; CMYK, grayscale and palette
images go through Pillow's conversion; 16-bit and 32-bit images are scaled, never clipped:
``I;16*`` by 255/65535 (i.e. divided by 257); ``I`` the same when its values fit 0..65535;
``F`` by 255 when its values fit 0..1; anything else is stretched linearly from its own
min..max to 0..255 (NaN and infinities count as 0).
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse decompression bombs: a 20-MB JPEG can otherwise expand to gigabytes of pixels.
MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Pillow warns between MAX_PIXELS and twice that, and raises above; decode_image refuses both itself.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Smaller than this on either side carries too little signal to judge (and is usually an icon or a pixel).
MIN_SIDE = 16

# Still-image formats we read. Anything else (EPS, which runs Ghostscript, PSD, ICO, ...) is refused
# unparsed. "JPEG" includes MPO, the multi-picture JPEG many phones write: its first picture is the photo.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
# Formats whose extra frames are an animation (refused) rather than pages or previews (first one used).
_ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP", "AVIF"})

_HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# What a malformed file can make Pillow's decoders raise.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, ZeroDivisionError)


class InvalidImage(ValueError):
    """The bytes are not an image we can use; the message says why."""


def decode_image(data: bytes) -> Image.Image:
    """Bytes -> an upright RGB PIL image, ``.format`` set to the source format.

    Raises InvalidImage with a readable reason (see the module docstring for the rules).
    """
    if not data:
        raise InvalidImage("empty file")
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        _check_header(image)
        image.load()
    except InvalidImage:
        raise
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{found.group(1)} pixels" if found else "too many pixels"
        raise InvalidImage(f"image too large: {size} (limit {MAX_PIXELS} pixels)") from None
    except UnidentifiedImageError:
        accepted = ", ".join(ACCEPTED_FORMATS)
        raise InvalidImage(f"not a recognised image format (accepted: {accepted})") from None
    except _DECODE_ERRORS as exc:
        raise InvalidImage(f"corrupt or truncated image: {exc}") from None
    source_format = image.format
    with contextlib.suppress(*_DECODE_ERRORS):  # a malformed EXIF block: the pixels are fine, keep them as stored
        ImageOps.exif_transpose(image, in_place=True)
    try:
        image = _to_rgb(image)
    except ValueError as exc:
        raise InvalidImage(f"unsupported colour mode {image.mode}: {exc}") from None
    image.format = source_format  # converting drops it; callers name files by it
    return image


def _check_header(image: Image.Image) -> None:
    """Refusals decided from the header alone, before the pixels are decoded."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise InvalidImage(f"image too large: {width}x{height} pixels (limit {MAX_PIXELS} pixels)")
    if image.format in _ANIMATED_FORMATS and getattr(image, "is_animated", False):
        frames = getattr(image, "n_frames", "several")
        raise InvalidImage(
            f"animated images are not supported ({frames} frames): upload a single frame as a still image"
        )
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InvalidImage(f"image too small: {width}x{height} pixels (minimum {MIN_SIDE}x{MIN_SIDE})")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_MODES:
        return _high_bit_to_l(image).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _high_bit_to_l(image: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float grayscale image -> 8-bit "L", its value range scaled, not clipped."""
    if image.mode.startswith("I;16"):
        values = np.asarray(image).astype(np.uint32)
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
    pixels = np.asarray(image, dtype=np.float64)
    pixels = np.nan_to_num(pixels, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if image.mode == "I" and low >= 0 and high <= 65535:
        scaled = pixels / 257
    elif image.mode == "F" and low >= 0 and high <= 1:
        scaled = pixels * 255
    elif high > low:
        scaled = (pixels - low) * (255 / (high - low))
    else:
        scaled = np.full_like(pixels, min(max(low, 0.0), 255.0))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


FITS = ("resize", "mosaic")
MOSAIC_GRID = 2  # tiles per side of a "mosaic" input


def to_model_input(image: Image.Image, size: int, fit: str = "resize") -> np.ndarray:
    """An RGB image -> ``(size, size, 3)`` uint8: resized (bicubic), or a mosaic of native crops."""
    if fit == "mosaic":
        tile = size // MOSAIC_GRID
        grid = MOSAIC_GRID
        crops = native_crops(image, tile, grid).reshape(grid, grid, tile, tile, 3)
        return np.ascontiguousarray(crops.transpose(0, 2, 1, 3, 4).reshape(grid * tile, grid * tile, 3))
    if fit != "resize":
        raise ValueError(f"unknown input fit {fit!r}; known: {', '.join(FITS)}")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def mosaic_tiles(pixels: np.ndarray, grid: int = MOSAIC_GRID) -> np.ndarray:
    """(n, g*t, g*t, 3) mosaics -> (n*g*g, t, t, 3) tiles, as the graph's MosaicTiles cuts them."""
    n, side = pixels.shape[0], pixels.shape[1]
    t = side // grid
    return pixels.reshape(n, grid, t, grid, t, 3).transpose(0, 1, 3, 2, 4, 5).reshape(-1, t, t, 3)


def repeated_tile(pixels: np.ndarray, grid: int = MOSAIC_GRID) -> np.ndarray:
    """Per mosaic of ``pixels``, whether all its tiles are the same one (a thumbnail's mosaic)."""
    tiles = mosaic_tiles(pixels, grid).reshape(len(pixels), grid * grid, -1)
    return np.asarray((tiles == tiles[:, :1]).all(axis=(1, 2)))


def _at_least(image: Image.Image, tile: int) -> Image.Image:
    """Scaled up (bicubic) so that the short side is ``tile``; images already that large are untouched."""
    width, height = image.size
    short = min(width, height)
    if short >= tile:
        return image
    scale = tile / short
    size = (max(tile, round(width * scale)), max(tile, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def native_crops(image: Image.Image, tile: int, grid: int) -> np.ndarray:
    """``grid x grid`` evenly spaced ``tile``-px crops at native resolution, row by row: (grid², tile, tile, 3).

    The first and last crops touch the image's edges; a side only one tile long gives the same crop.
    """
    pixels = np.asarray(_at_least(image, tile), dtype=np.uint8)
    height, width = pixels.shape[:2]
    ys = np.linspace(0, height - tile, grid).round().astype(int)
    xs = np.linspace(0, width - tile, grid).round().astype(int)
    return np.stack([pixels[y : y + tile, x : x + tile] for y in ys for x in xs])


def training_crops(image: Image.Image, tile: int, grid: int = 3) -> np.ndarray:
    """The distinct native crops an image contributes to training: a ``grid x grid`` spread, or one."""
    scaled = _at_least(image, tile)
    if scaled.size == (tile, tile):
        return np.asarray(scaled, dtype=np.uint8)[None]
    return native_crops(scaled, tile, grid)


def preprocess(data: bytes, size: int, fit: str = "resize") -> np.ndarray:
    """Image bytes -> ``(size, size, 3)`` uint8 model input."""
    return to_model_input(decode_image(data), size, fit)
