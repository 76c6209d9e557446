"""The occlusion heatmap marks the regions that drive a verdict."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model.inference import OnnxModel
from serving.explain import occlusion_map
from tests.serving.onnx_models import mean_brightness_model


async def _now(fn: Callable[[], np.ndarray]) -> np.ndarray:
    return fn()


def _heat(model: OnnxModel, pixels: np.ndarray, label: str) -> np.ndarray:
    return asyncio.run(occlusion_map(model, pixels, label, _now))


def test_the_region_that_raises_p_ai_is_hot_for_ai_and_cold_for_real(tmp_path: Path) -> None:
    model = OnnxModel(mean_brightness_model(tmp_path / "m.onnx"))  # P(ai) = mean brightness
    pixels = np.full((32, 32, 3), 40, np.uint8)
    pixels[:8, :8] = 255  # one bright corner
    heat = _heat(model, pixels, "ai")
    assert heat.shape == (32, 32) and heat.max() == 1.0
    assert heat[:6, :6].mean() > 0.5 and heat[20:, 20:].max() == 0.0
    # for a "real" verdict the bright corner argues against it: covering it helps "real"
    assert _heat(model, pixels, "real")[:6, :6].mean() == 0.0
