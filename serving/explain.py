"""Which regions drove a verdict: occlusion sensitivity, computed with the ONNX model alone.

Serving has no TensorFlow, so no gradients (Grad-CAM). Instead each cell of a ``grid`` x
``grid`` partition of the model input is covered in turn with the image's mean colour and the
covered copies are scored, ``CHUNK`` per model run: a cell matters for the verdict as much as
covering it moves P(ai) away from the verdict (towards "real" for an ``ai`` verdict, towards
"ai" for a ``real`` one). Cells are half-overlapping (stride = cell / 2) for a smoother map.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable

import numpy as np
from PIL import Image

from model.inference import OnnxModel

CHUNK = 8  # covered copies per model run
Runner = Callable[[Callable[[], np.ndarray]], Awaitable[np.ndarray]]  # runs a model call, e.g. MicroBatcher.run


def occluded_copies(pixels: np.ndarray, grid: int = 6) -> tuple[np.ndarray, list[tuple[int, int]], int]:
    """The image followed by one copy per covered cell: (batch, cell corners, cell size)."""
    size = pixels.shape[0]
    cell = max(1, size // grid)
    stride = max(1, cell // 2)
    starts = list(range(0, max(1, size - cell + 1), stride))
    fill = pixels.reshape(-1, 3).mean(axis=0).astype(np.uint8)
    batch = [pixels]
    boxes = []
    for y in starts:
        for x in starts:
            covered = pixels.copy()
            covered[y : y + cell, x : x + cell] = fill
            batch.append(covered)
            boxes.append((y, x))
    return np.stack(batch), boxes, cell


def combine(scores: np.ndarray, boxes: list[tuple[int, int]], cell: int, size: int, label: str) -> np.ndarray:
    """``(size, size)`` map in [0, 1] from the scores of ``occluded_copies``' batch."""
    base, covered_scores = float(scores[0]), scores[1:]
    support = base - covered_scores if label != "real" else covered_scores - base
    heat = np.zeros((size, size), np.float32)
    counts = np.zeros((size, size), np.float32)
    for (y, x), value in zip(boxes, support, strict=True):
        heat[y : y + cell, x : x + cell] += max(0.0, float(value))
        counts[y : y + cell, x : x + cell] += 1
    heat /= np.maximum(counts, 1)
    peak = float(heat.max())
    return heat / peak if peak > 0 else heat


async def occlusion_map(
    model: OnnxModel, pixels: np.ndarray, label: str, run: Runner, grid: int = 6, chunk: int = CHUNK
) -> np.ndarray:
    """``(size, size)`` float map in [0, 1]: how much each pixel's region supports ``label``.

    The covered copies are scored ``chunk`` at a time through ``run`` (serving passes the
    inference thread's ``MicroBatcher.run``, so the chunks take turns with live batches).
    """
    batch, boxes, cell = occluded_copies(pixels, grid)

    def scorer(part: np.ndarray) -> Callable[[], np.ndarray]:
        return lambda: model.predict(part)[0]

    scores = [await run(scorer(batch[start : start + chunk])) for start in range(0, len(batch), chunk)]
    return combine(np.concatenate(scores), boxes, cell, pixels.shape[0], label)


def overlay_png(image: Image.Image, heat: np.ndarray, max_side: int = 512) -> bytes:
    """The upright image (at most ``max_side`` px, small ones enlarged) under a translucent red ``heat``."""
    scale = min(1.0, max_side / max(image.size))
    if image.width < 256:  # enlarge small images (CIFAKE is 32 px) so the map is visible
        scale = 256 / image.width
    shown = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    mask = Image.fromarray((heat * 255).astype(np.uint8)).resize(shown.size, Image.Resampling.BILINEAR)
    red = Image.new("RGB", shown.size, (230, 20, 40))
    out = Image.composite(red, shown, mask.point(lambda v: int(v * 0.6)))
    buffer = io.BytesIO()
    out.save(buffer, format="PNG")
    return buffer.getvalue()


def shown_image(image: Image.Image, pixels: np.ndarray, fit: str) -> Image.Image:
    """What the heatmap lies over: the image, or for a mosaic input the mosaic of crops the model read."""
    return Image.fromarray(pixels) if fit == "mosaic" else image
