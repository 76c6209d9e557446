"""The one preprocessing function, shared by training and serving.

Decode, apply EXIF orientation, convert to RGB, resize to the model's input size, as uint8.
Normalisation is not here: it lives inside the network (and so inside the ONNX graph).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse decompression bombs: a 20-MB JPEG can otherwise expand to gigabytes of pixels.
MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class InvalidImage(ValueError):
    """The bytes are not an image we can use; the message says why."""


def decode_image(data: bytes) -> Image.Image:
    """Bytes -> an upright RGB PIL image. Raises InvalidImage with a readable reason."""
    if not data:
        raise InvalidImage("empty file")
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise InvalidImage(f"image too large: {width}x{height} pixels (limit {MAX_PIXELS})")
        image.load()
    except InvalidImage:
        raise
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"image too large: {exc}") from None
    except UnidentifiedImageError:
        raise InvalidImage("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"corrupt or truncated image: {exc}") from None
    source_format = image.format
    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        image = image.convert("RGB")
    image.format = source_format  # transposing/converting drops it; callers name files by it
    return image


def to_model_input(image: Image.Image, size: int) -> np.ndarray:
    """An RGB image -> ``(size, size, 3)`` uint8, resized with bicubic filtering."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def preprocess(data: bytes, size: int) -> np.ndarray:
    """Image bytes -> ``(size, size, 3)`` uint8 model input."""
    return to_model_input(decode_image(data), size)
