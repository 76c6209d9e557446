"""Training-time image augmentation, outside the exported network.

Only numpy and Pillow: the augmented pixels must go through the same ``to_model_input`` as serving,
so the network never sees a resize that serving does not do. Every random choice is drawn from the
``rng`` passed in, so a seeded ``numpy.random.Generator`` reproduces the same images.

The first two steps (JPEG re-compression, down/up-scaling) imitate what happens to images on the
web; a detector that keys on pristine pixel statistics would otherwise fail on re-shared images.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from model.preprocess import to_model_input

_RESCALE_FILTERS = (
    Image.Resampling.NEAREST,
    Image.Resampling.BOX,
    Image.Resampling.BILINEAR,
    Image.Resampling.HAMMING,
    Image.Resampling.BICUBIC,
    Image.Resampling.LANCZOS,
)
_RANGE_FIELDS = ("crop_scale", "zoom", "blur_radius", "jpeg_quality", "rescale_factor")
_PROBABILITY_FIELDS = ("flip_probability", "blur_probability", "jpeg_probability", "rescale_probability")
# Bicubic sampling reads up to two pixels beyond a sample point: pad that much more than the corners need.
_AFFINE_MARGIN = 2


@dataclass(frozen=True)
class AugmentConfig:
    """What ``augment`` may do; ``AugmentConfig.none()`` does nothing but the final resize.

    ``flip_probability`` (instead of an on/off flag) lets a test force the flip; 0.5 is the usual value.
    Ranges are ``(low, high)`` and drawn uniformly; equal ends fix the value.
    """

    crop_scale: tuple[float, float] = (0.75, 1.0)  # share of each side kept by the random crop
    flip_probability: float = 0.5  # horizontal flip
    rotation_degrees: float = 10.0  # uniform in [-r, r]
    translate: float = 0.1  # share of the side, each axis, uniform in [-t, t]
    zoom: tuple[float, float] = (0.9, 1.1)  # > 1 magnifies
    blur_probability: float = 0.1  # subtle Gaussian blur
    blur_radius: tuple[float, float] = (0.2, 1.0)
    brightness: float = 0.1  # enhancement factor in [1 - b, 1 + b]
    contrast: float = 0.1
    saturation: float = 0.1
    jpeg_probability: float = 0.5  # JPEG re-compression
    jpeg_quality: tuple[int, int] = (30, 100)
    rescale_probability: float = 0.3  # down- then up-scaling
    rescale_factor: tuple[float, float] = (0.5, 1.0)

    def __post_init__(self) -> None:
        # Configs come back from JSON metadata with lists for tuples; store tuples so equality holds.
        for name in _RANGE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
                raise ValueError(f"{name} must be a (low, high) pair, got {value!r}")
            object.__setattr__(self, name, tuple(value))
            low, high = value
            if not low <= high:  # written so that NaN fails too
                raise ValueError(f"{name} must be ordered (low <= high), got {value!r}")
        for name in _PROBABILITY_FIELDS:
            _check(name, 0.0 <= getattr(self, name) <= 1.0, "must be a probability in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            _check(name, 0.0 <= getattr(self, name) <= 1.0, "must be in [0, 1] (the factor 1 - x must stay >= 0)")
        _check("rotation_degrees", 0.0 <= self.rotation_degrees <= 180.0, "must be in [0, 180]")
        _check("translate", 0.0 <= self.translate <= 1.0, "must be a share of the side in [0, 1]")
        _check("crop_scale", self.crop_scale[0] > 0.0 and self.crop_scale[1] <= 1.0, "must lie in (0, 1]")
        _check("zoom", self.zoom[0] > 0.0 and math.isfinite(self.zoom[1]), "must be positive and finite")
        _check("blur_radius", self.blur_radius[0] >= 0.0 and math.isfinite(self.blur_radius[1]), "must be >= 0")
        _check(
            "jpeg_quality",
            all(isinstance(q, int | np.integer) and not isinstance(q, bool) for q in self.jpeg_quality),
            "must be integers",
        )
        _check("jpeg_quality", self.jpeg_quality[0] >= 1 and self.jpeg_quality[1] <= 100, "must lie in 1..100")
        _check("rescale_factor", self.rescale_factor[0] > 0.0 and self.rescale_factor[1] <= 1.0, "must lie in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists), ready for JSON; ``AugmentConfig(**d)`` rebuilds it."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def none(cls) -> AugmentConfig:
        """Every transform off: ``augment`` then equals ``to_model_input``."""
        off: dict[str, Any] = {name: 0.0 for name in _PROBABILITY_FIELDS}
        off.update(rotation_degrees=0.0, translate=0.0, brightness=0.0, contrast=0.0, saturation=0.0)
        off.update(crop_scale=(1.0, 1.0), zoom=(1.0, 1.0))
        return cls(**off)


def _check(name: str, ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"{name} {message}")


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return low if low == high else float(rng.uniform(low, high))


def _chance(rng: np.random.Generator, probability: float) -> bool:
    return probability > 0.0 and bool(rng.random() < probability)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as reopened:
        return reopened.convert("RGB")


def _rescale(image: Image.Image, factor: float, resample: Image.Resampling) -> Image.Image:
    width, height = image.size
    small = image.resize((max(1, round(width * factor)), max(1, round(height * factor))), resample)
    return small.resize((width, height), resample)


def _crop(image: Image.Image, scale: float, rng: np.random.Generator) -> Image.Image:
    # One scale for both sides keeps the aspect ratio, so the final square resize distorts as serving's does.
    width, height = image.size
    crop_w, crop_h = max(1, round(width * scale)), max(1, round(height * scale))
    if (crop_w, crop_h) == (width, height):
        return image
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    return image.crop((left, top, left + crop_w, top + crop_h))


def _affine(image: Image.Image, degrees: float, shift: tuple[float, float], zoom: float) -> Image.Image:
    """Rotate by ``degrees`` about the centre, scale by ``zoom``, shift by ``shift`` pixels; mirror the borders."""
    width, height = image.size
    cx, cy = width / 2, height / 2
    theta = math.radians(degrees)
    cos, sin = math.cos(theta) / zoom, math.sin(theta) / zoom
    # Pillow wants the inverse map, output -> input: in = R(-theta) (out - centre - shift) / zoom + centre.
    ox, oy = cx + shift[0], cy + shift[1]
    a, b, c = cos, sin, cx - cos * ox - sin * oy
    d, e, f = -sin, cos, cy + sin * ox - cos * oy
    corners = [(a * x + b * y + c, d * x + e * y + f) for x in (0, width) for y in (0, height)]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    # A black (or any constant) border is a shortcut a detector can learn; mirrored pixels are not.
    pad_left = max(0, math.ceil(_AFFINE_MARGIN - min(xs)))
    pad_right = max(0, math.ceil(max(xs) - width + _AFFINE_MARGIN))
    pad_top = max(0, math.ceil(_AFFINE_MARGIN - min(ys)))
    pad_bottom = max(0, math.ceil(max(ys) - height + _AFFINE_MARGIN))
    if pad_left or pad_right or pad_top or pad_bottom:
        pixels = np.asarray(image)
        padded = np.pad(pixels, ((pad_top, pad_bottom), (pad_left, pad_right), (0, 0)), mode="symmetric")
        image = Image.fromarray(padded)
        c, f = c + pad_left, f + pad_top
    return image.transform((width, height), Image.Transform.AFFINE, (a, b, c, d, e, f), Image.Resampling.BICUBIC)


def augment(
    image: Image.Image, size: int, rng: np.random.Generator, config: AugmentConfig = AugmentConfig()
) -> np.ndarray:
    """An upright RGB PIL image -> augmented ``(size, size, 3)`` uint8 array; ``rng`` is the only randomness."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if _chance(rng, config.jpeg_probability):
        image = _jpeg(image, int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1)))
    if _chance(rng, config.rescale_probability):
        factor = _uniform(rng, *config.rescale_factor)
        image = _rescale(image, factor, _RESCALE_FILTERS[int(rng.integers(len(_RESCALE_FILTERS)))])
    image = _crop(image, _uniform(rng, *config.crop_scale), rng)
    degrees = _uniform(rng, -config.rotation_degrees, config.rotation_degrees)
    shift = (
        _uniform(rng, -config.translate, config.translate) * image.width,
        _uniform(rng, -config.translate, config.translate) * image.height,
    )
    zoom = _uniform(rng, *config.zoom)
    if degrees != 0.0 or shift != (0.0, 0.0) or zoom != 1.0:
        image = _affine(image, degrees, shift, zoom)
    if _chance(rng, config.flip_probability):
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if _chance(rng, config.blur_probability):
        image = image.filter(ImageFilter.GaussianBlur(_uniform(rng, *config.blur_radius)))
    for enhancer, amount in (
        (ImageEnhance.Brightness, config.brightness),
        (ImageEnhance.Contrast, config.contrast),
        (ImageEnhance.Color, config.saturation),
    ):
        if amount > 0.0:
            image = enhancer(image).enhance(_uniform(rng, 1.0 - amount, 1.0 + amount))
    return to_model_input(image, size)
