"""Image statistics for drift monitoring and the prediction log: cheap, bounded, numpy + Pillow only.

Every statistic is computed on a downsized copy, so the cost does not grow with the upload:
brightness, contrast and saturation on a copy whose longer side is at most ``STATS_MAX_SIDE``,
sharpness on one at most ``SHARPNESS_MAX_SIDE``. Scales:

- ``width``, ``height``: the decoded, upright image, in pixels.
- ``brightness``: mean luma (ITU-R 601, Pillow's "L"), 0-255.
- ``contrast``: standard deviation of luma, 0-255 (0 for a flat image).
- ``saturation``: mean HSV saturation, 0-255 (0 for any gray image).
- ``sharpness``: variance of the 4-neighbour Laplacian of luma (0 for a flat image; higher is sharper).
- ``jpeg_quality``: the IJG quality 1-100 whose standard quantisation tables best match the file's,
  ``None`` when the file is not a JPEG or its tables cannot be read.
- ``format``: Pillow's name of the source format ("JPEG", "PNG", ...), or ``None`` when unknown.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from storage.predictions import IMAGE_STATISTICS

FEATURE_NAMES: tuple[str, ...] = IMAGE_STATISTICS  # plus "format", a string, reported beside them

STATS_MAX_SIDE = 512
SHARPNESS_MAX_SIDE = 256
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})

# The example tables of the JPEG standard (ITU T.81 Annex K), row-major as Pillow's ``.quantization``.
_IJG_LUMINANCE = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.int64,
).ravel()
_chrominance = np.full((8, 8), 99, dtype=np.int64)
_chrominance[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]
_IJG_CHROMINANCE = _chrominance.ravel()


def _ijg_tables(base: np.ndarray, limit: int) -> np.ndarray:
    """``(100, 64)``: libjpeg's ``jpeg_set_quality`` scaling of ``base`` for qualities 1..100."""
    quality = np.arange(1, 101)
    scale = np.where(quality < 50, 5000 // quality, 200 - 2 * quality)
    return np.clip((base[None, :] * scale[:, None] + 50) // 100, 1, limit)


# Baseline JPEGs (8-bit tables) clip at 255; 16-bit tables at 32767.
_TABLES = {limit: (_ijg_tables(_IJG_LUMINANCE, limit), _ijg_tables(_IJG_CHROMINANCE, limit)) for limit in (255, 32767)}


def image_statistics(image: Image.Image, data: bytes | None = None) -> dict[str, float | int | str | None]:
    """Statistics of a decoded upright image (``decode_image``'s output); ``data``, its file, gives JPEG quality.

    Without ``data`` the format and quantisation tables are taken from ``image`` itself when it still has them.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    width, height = rgb.size
    small = _shrink(rgb, STATS_MAX_SIDE)
    luma = small.convert("L")
    luma_values = np.asarray(luma, dtype=np.float64)
    saturation = np.asarray(small.convert("HSV"))[..., 1]
    source_format, tables = _format_and_tables(image, data)
    return {
        "width": width,
        "height": height,
        "brightness": float(luma_values.mean()) if luma_values.size else 0.0,
        "contrast": float(luma_values.std()) if luma_values.size else 0.0,
        "saturation": float(saturation.mean(dtype=np.float64)) if saturation.size else 0.0,
        "sharpness": _laplacian_variance(_shrink(luma, SHARPNESS_MAX_SIDE)),
        "jpeg_quality": estimate_jpeg_quality(tables) if source_format in _JPEG_FORMATS else None,
        "format": source_format,
    }


def estimate_jpeg_quality(tables: dict[int, list[int]] | None) -> int | None:
    """The IJG quality (1-100) whose scaled standard tables are nearest (L1) to ``tables``; None without tables.

    Exact for files written by libjpeg-based encoders (Pillow, most software); the nearest equivalent
    for encoders with their own tables (cameras, Photoshop).
    """
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    luminance = np.asarray(tables[0], dtype=np.int64)
    chrominance = np.asarray(tables[1], dtype=np.int64) if len(tables.get(1, ())) == 64 else None
    limit = 255 if luminance.max() <= 255 and (chrominance is None or chrominance.max() <= 255) else 32767
    reference_luminance, reference_chrominance = _TABLES[limit]
    error = np.abs(reference_luminance - luminance).sum(axis=1)
    if chrominance is not None:
        error = error + np.abs(reference_chrominance - chrominance).sum(axis=1)
    best = np.flatnonzero(error == error.min())
    return int(best[len(best) // 2]) + 1  # the middle of any run of equally good qualities


def _format_and_tables(image: Image.Image, data: bytes | None) -> tuple[str | None, dict[int, list[int]] | None]:
    if data is None:
        return image.format, getattr(image, "quantization", None)
    try:
        with Image.open(io.BytesIO(data)) as header:  # parses the header only; no pixels are decoded
            return header.format, getattr(header, "quantization", None)
    except Exception:  # statistics must never fail a request: the tables are then unknown
        return image.format, None


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    """A copy whose longer side is at most ``max_side`` (area-averaged), or ``image`` if already small enough."""
    width, height = image.size
    longest = max(width, height)
    if longest <= max_side:
        return image
    size = (max(1, round(width * max_side / longest)), max(1, round(height * max_side / longest)))
    return image.resize(size, Image.Resampling.BOX)


def _laplacian_variance(luma: Image.Image) -> float:
    pixels = np.asarray(luma, dtype=np.float32)
    if pixels.shape[0] < 3 or pixels.shape[1] < 3:
        return 0.0
    laplacian = pixels[:-2, 1:-1] + pixels[2:, 1:-1] + pixels[1:-1, :-2] + pixels[1:-1, 2:] - 4 * pixels[1:-1, 1:-1]
    return float(laplacian.var())
