"""Training-time augmentation: shapes, determinism, the identity config, each transform alone, validation."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from model.augment import AugmentConfig, augment
from model.preprocess import to_model_input

OFF = AugmentConfig.none()


def make_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth colour gradient with mild noise: structure for the geometry, texture for JPEG and blur."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    gradient = np.stack(
        [255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1), 127 + 100 * np.sin((x + y) / 9)], axis=-1
    )
    noise = np.random.default_rng(seed).normal(0, 12, gradient.shape)
    return Image.fromarray(np.clip(gradient + noise, 0, 255).astype(np.uint8), "RGB")


def only(**changes: Any) -> AugmentConfig:
    """Every transform off except those named."""
    return dataclasses.replace(OFF, **changes)


def run(image: Image.Image, config: AugmentConfig, size: int = 32, seed: int = 0) -> np.ndarray:
    return augment(image, size, np.random.default_rng(seed), config)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


ALL_ON = AugmentConfig(
    flip_probability=1.0, blur_probability=1.0, jpeg_probability=1.0, rescale_probability=1.0, crop_scale=(0.5, 0.9)
)


@pytest.mark.parametrize(("width", "height"), [(32, 32), (200, 120), (120, 200), (7, 5), (1, 1)])
@pytest.mark.parametrize("size", [16, 32, 224])
@pytest.mark.parametrize("config", [AugmentConfig(), ALL_ON], ids=["default", "all-on"])
def test_shape_and_dtype(width: int, height: int, size: int, config: AugmentConfig) -> None:
    out = augment(make_image(width, height), size, np.random.default_rng(1), config)
    assert out.shape == (size, size, 3)
    assert out.dtype == np.uint8


def test_non_rgb_input_is_converted() -> None:
    out = run(make_image(40, 30).convert("L"), AugmentConfig())
    assert out.shape == (32, 32, 3)


@pytest.mark.parametrize("config", [AugmentConfig(), ALL_ON], ids=["default", "all-on"])
def test_same_seed_same_output_different_seed_different_output(config: AugmentConfig) -> None:
    image = make_image(200, 120)
    first = run(image, config, seed=7)
    assert np.array_equal(first, run(image, config, seed=7))
    others = [run(image, config, seed=seed) for seed in range(8, 12)]
    assert all(not np.array_equal(first, other) for other in others)


def test_default_argument_is_the_default_config() -> None:
    image = make_image(64, 48)
    assert np.array_equal(
        augment(image, 32, np.random.default_rng(3)), augment(image, 32, np.random.default_rng(3), AugmentConfig())
    )


@pytest.mark.parametrize(("width", "height", "size"), [(32, 32, 32), (200, 120, 32), (120, 200, 224), (5, 7, 16)])
def test_none_is_exactly_to_model_input(width: int, height: int, size: int) -> None:
    image = make_image(width, height)
    expected = to_model_input(image, size)
    for seed in range(5):
        assert np.array_equal(augment(image, size, np.random.default_rng(seed), OFF), expected)


@pytest.mark.parametrize(("width", "height", "size"), [(32, 32, 32), (200, 120, 32), (33, 47, 64)])
def test_forced_flip_is_the_mirror_of_the_identity(width: int, height: int, size: int) -> None:
    image = make_image(width, height)
    flipped = run(image, only(flip_probability=1.0), size=size)
    assert np.array_equal(flipped, np.fliplr(to_model_input(image, size)))
    assert not np.array_equal(flipped, to_model_input(image, size))


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("jpeg", only(jpeg_probability=1.0, jpeg_quality=(40, 40))),
        ("rescale", only(rescale_probability=1.0, rescale_factor=(0.5, 0.5))),
        ("crop", only(crop_scale=(0.6, 0.6))),
        ("rotation", only(rotation_degrees=15.0)),
        ("translate", only(translate=0.2)),
        ("zoom", only(zoom=(1.3, 1.3))),
        ("blur", only(blur_probability=1.0, blur_radius=(1.0, 1.0))),
        ("brightness", only(brightness=0.5)),
        ("contrast", only(contrast=0.5)),
        ("saturation", only(saturation=0.5)),
    ],
)
def test_each_transform_alone_changes_the_image(name: str, config: AugmentConfig) -> None:
    image = make_image(64, 48)
    identity = to_model_input(image, 64)
    assert mean_abs_diff(run(image, config, size=64), identity) > 0.5, name


def test_blur_removes_fine_detail() -> None:
    image = make_image(64, 64)
    identity = to_model_input(image, 64)
    blurred = run(image, only(blur_probability=1.0, blur_radius=(1.0, 1.0)), size=64)

    def roughness(a: np.ndarray) -> float:
        return float(np.abs(np.diff(a.astype(np.int16), axis=1)).mean())

    assert roughness(blurred) < 0.7 * roughness(identity)


def test_enhancement_moves_brightness_contrast_and_saturation() -> None:
    image = make_image(64, 64)
    identity = to_model_input(image, 64).astype(np.float64)
    seeds = range(20)
    means = [run(image, only(brightness=0.5), size=64, seed=s).mean() for s in seeds]
    stds = [run(image, only(contrast=0.5), size=64, seed=s).std() for s in seeds]
    spreads = [run(image, only(saturation=0.5), size=64, seed=s).astype(np.float64).std(axis=-1).mean() for s in seeds]
    # Factors in [0.5, 1.5] move each statistic both ways around the original.
    assert min(means) < identity.mean() - 5 < identity.mean() + 5 < max(means)
    assert min(stds) < identity.std() - 3 < identity.std() + 3 < max(stds)
    spread = identity.std(axis=-1).mean()
    assert min(spreads) < spread - 3 < spread + 3 < max(spreads)


def test_low_jpeg_quality_changes_pixels_more_than_quality_100() -> None:
    image = make_image(128, 96)
    identity = to_model_input(image, 64)
    low = mean_abs_diff(run(image, only(jpeg_probability=1.0, jpeg_quality=(10, 10)), size=64), identity)
    high = mean_abs_diff(run(image, only(jpeg_probability=1.0, jpeg_quality=(100, 100)), size=64), identity)
    assert low > 2 * high
    assert low > 1.0


def test_jpeg_quality_is_drawn_within_the_range() -> None:
    image = make_image(64, 48)
    identity = to_model_input(image, 64)
    config = only(jpeg_probability=1.0, jpeg_quality=(5, 95))
    diffs = [mean_abs_diff(run(image, config, size=64, seed=seed), identity) for seed in range(12)]
    assert len({round(d, 6) for d in diffs}) > 3  # several qualities, not one


@pytest.mark.parametrize("probability", [0.3, 0.5])
def test_probabilities_are_respected(probability: float) -> None:
    image = make_image(32, 32)
    identity = to_model_input(image, 32)
    config = only(flip_probability=probability)
    flips = sum(not np.array_equal(run(image, config, seed=seed), identity) for seed in range(400))
    assert abs(flips / 400 - probability) < 0.08


def test_affine_border_is_mirrored_not_black() -> None:
    grey = Image.new("RGB", (48, 48), (200, 180, 160))
    for config in (only(rotation_degrees=45.0), only(translate=0.4), only(zoom=(0.5, 0.5))):
        for seed in range(5):
            out = run(grey, config, size=48, seed=seed).astype(np.int16)
            assert np.abs(out - np.array([200, 180, 160])).max() <= 2


def test_zoom_out_and_rotation_keep_the_centre() -> None:
    # A bright centre square must stay at the centre: the transform pivots on the image centre.
    array = np.zeros((64, 64, 3), np.uint8)
    array[24:40, 24:40] = 255
    image = Image.fromarray(array)
    for config in (only(rotation_degrees=30.0), only(zoom=(0.8, 1.2))):
        for seed in range(5):
            out = run(image, config, size=64, seed=seed)
            assert out[30:34, 30:34].min() > 200


def test_crop_is_a_window_of_the_given_share_at_random_positions() -> None:
    # 64 x 64 cropped to half of each side is 32 x 32: with size 32 there is no resize, so the output is the window.
    image = make_image(64, 64)
    array = np.asarray(image)
    positions = set()
    for seed in range(10):
        out = run(image, only(crop_scale=(0.5, 0.5)), size=32, seed=seed)
        windows = [(top, left) for top in range(33) for left in range(33)]
        found = [(t, left) for t, left in windows if np.array_equal(array[t : t + 32, left : left + 32], out)]
        assert len(found) == 1
        positions.add(found[0])
    assert len({top for top, _ in positions}) > 3 and len({left for _, left in positions}) > 3


def test_to_dict_round_trips_through_json() -> None:
    config = AugmentConfig(crop_scale=(0.5, 0.8), jpeg_quality=(40, 90), flip_probability=0.25)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["jpeg_quality"] == [40, 90]
    assert AugmentConfig(**data) == config
    assert set(data) == {field.name for field in dataclasses.fields(AugmentConfig)}


def test_none_turns_every_transform_off() -> None:
    none = AugmentConfig.none()
    assert none.flip_probability == none.jpeg_probability == none.rescale_probability == none.blur_probability == 0
    assert none.rotation_degrees == none.translate == none.brightness == none.contrast == none.saturation == 0
    assert none.crop_scale == (1.0, 1.0) and none.zoom == (1.0, 1.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("crop_scale", (0.9, 0.5)),
        ("crop_scale", (0.0, 1.0)),
        ("crop_scale", (0.5, 1.2)),
        ("crop_scale", (0.5,)),
        ("flip_probability", 1.5),
        ("flip_probability", -0.1),
        ("rotation_degrees", -1.0),
        ("rotation_degrees", float("nan")),
        ("translate", 1.5),
        ("zoom", (1.2, 0.8)),
        ("zoom", (0.0, 1.0)),
        ("blur_probability", 2.0),
        ("blur_radius", (-1.0, 1.0)),
        ("blur_radius", (1.0, 0.5)),
        ("brightness", 1.5),
        ("contrast", -0.2),
        ("saturation", float("nan")),
        ("jpeg_probability", float("nan")),
        ("jpeg_quality", (0, 100)),
        ("jpeg_quality", (30, 101)),
        ("jpeg_quality", (90, 30)),
        ("jpeg_quality", (30.5, 90)),
        ("rescale_probability", 1.01),
        ("rescale_factor", (0.0, 1.0)),
        ("rescale_factor", (0.5, 2.0)),
        ("rescale_factor", (float("nan"), 1.0)),
    ],
)
def test_invalid_config_raises_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        AugmentConfig(**{field: value})


def test_importing_augment_imports_nothing_heavy() -> None:
    code = (
        "import sys, model.augment; "
        "heavy = {'tensorflow', 'keras', 'jax', 'torch', 'scipy', 'cv2'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
