"""Image statistics for drift monitoring: each one moves the way its name says, at bounded cost."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from model import features
from model.features import FEATURE_NAMES, image_statistics
from model.preprocess import decode_image


def photo_like(size: tuple[int, int] = (320, 240), seed: int = 0) -> Image.Image:
    """Smooth gradients plus edges and some noise: something a JPEG encoder and a blur both act on."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    red = 128 + 100 * np.sin(x / 17)
    green = 128 + 100 * np.cos(y / 11)
    blue = np.where((x // 40 + y // 40) % 2 == 0, 200.0, 40.0)
    pixels = np.stack([red, green, blue], axis=-1) + rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def stats(data: bytes) -> dict[str, float | int | str | None]:
    return image_statistics(decode_image(data), data)


def test_every_feature_and_the_format_are_reported() -> None:
    result = stats(encode(photo_like(), "JPEG", quality=80))
    assert set(result) == {*FEATURE_NAMES, "format"}
    assert result["width"] == 320 and result["height"] == 240
    assert result["format"] == "JPEG"


@pytest.mark.parametrize("quality", [10, 30, 50, 75, 90, 95])
def test_jpeg_quality_is_recovered_from_the_quantisation_tables(quality: int) -> None:
    estimate = stats(encode(photo_like(), "JPEG", quality=quality))["jpeg_quality"]
    assert isinstance(estimate, int)
    assert abs(estimate - quality) <= 2


def test_jpeg_quality_of_a_grayscale_jpeg_uses_its_one_table() -> None:
    assert stats(encode(photo_like().convert("L"), "JPEG", quality=60))["jpeg_quality"] == pytest.approx(60, abs=2)


def test_jpeg_quality_without_the_file_uses_the_image_tables_when_it_has_them() -> None:
    data = encode(photo_like(), "JPEG", quality=40)
    assert image_statistics(Image.open(io.BytesIO(data)))["jpeg_quality"] == pytest.approx(40, abs=2)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_non_jpeg_has_no_quality(fmt: str) -> None:
    result = stats(encode(photo_like(), fmt))
    assert result["jpeg_quality"] is None
    assert result["format"] == fmt


def test_blurred_image_is_less_sharp() -> None:
    image = photo_like()
    sharp = image_statistics(image)["sharpness"]
    blurred = image_statistics(image.filter(ImageFilter.GaussianBlur(2)))["sharpness"]
    assert isinstance(sharp, float) and isinstance(blurred, float)
    assert blurred < sharp / 2


def test_brighter_image_has_higher_brightness_and_flat_image_no_contrast() -> None:
    image = photo_like()
    dark = image_statistics(ImageEnhance.Brightness(image).enhance(0.6))["brightness"]
    normal = image_statistics(image)["brightness"]
    bright = image_statistics(ImageEnhance.Brightness(image).enhance(1.3))["brightness"]
    assert isinstance(normal, float) and isinstance(dark, float) and isinstance(bright, float)
    assert dark < normal < bright
    flat = image_statistics(Image.new("RGB", (64, 64), (90, 90, 90)))
    assert flat["brightness"] == pytest.approx(90)
    assert flat["contrast"] == pytest.approx(0)
    assert flat["sharpness"] == pytest.approx(0)


def test_grayscale_image_has_no_saturation() -> None:
    assert image_statistics(photo_like().convert("L").convert("RGB"))["saturation"] == pytest.approx(0, abs=1e-9)
    saturated = image_statistics(Image.new("RGB", (32, 32), (255, 0, 0)))["saturation"]
    assert saturated == pytest.approx(255)


def test_large_image_is_downsized_before_the_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []
    laplacian = features._laplacian_variance

    def spy(luma: Image.Image) -> float:
        seen.append(luma.size)
        return laplacian(luma)

    monkeypatch.setattr(features, "_laplacian_variance", spy)
    big = photo_like((400, 300)).resize((4000, 3000), Image.Resampling.NEAREST)
    result = image_statistics(big)
    assert result["width"] == 4000 and result["height"] == 3000
    assert seen == [(features.SHARPNESS_MAX_SIDE, features.SHARPNESS_MAX_SIDE * 3 // 4)]
    # Brightness on the downsized copy is still the image's brightness.
    assert result["brightness"] == pytest.approx(float(np.asarray(big.convert("L"), dtype=np.float64).mean()), abs=0.5)


def test_unreadable_data_gives_no_quality_rather_than_an_error() -> None:
    result = image_statistics(photo_like(), b"not an image")
    assert result["jpeg_quality"] is None
