"""Robustness tiers: the test images as users' pipelines deliver them (re-compressed, resized)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from model.preprocess import decode_image, to_model_input

TIERS = ("clean", "jpeg_q50_75", "half_size")


def _jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(50, 76)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _half(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    return image.resize((max(1, width // 2), max(1, height // 2)), Image.Resampling.BILINEAR)


_TRANSFORMS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "clean": lambda image, rng: image,
    "jpeg_q50_75": _jpeg,
    "half_size": _half,
}


def tier_pixels(images: list[bytes], size: int, tier: str, seed: int = 0, fit: str = "resize") -> np.ndarray:
    """The images degraded as ``tier`` says, then through the shared preprocessing."""
    if tier not in _TRANSFORMS:
        raise ValueError(f"unknown robustness tier {tier!r}; known: {', '.join(TIERS)}")
    transform = _TRANSFORMS[tier]
    pixels = [
        to_model_input(transform(decode_image(data), np.random.default_rng((seed, i))), size, fit)
        for i, data in enumerate(images)
    ]
    return np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
