"""Uploaded images: read within the size limit, decoded in a worker thread, scored in a micro-batch.

What goes wrong with an upload is a ``BadUpload`` (its status and the reason counted on
/metrics); the routes turn it into an HTTP error with ``rejected``.
"""

from __future__ import annotations

import asyncio

import numpy as np
from fastapi import HTTPException, UploadFile, status
from PIL import Image

from model.preprocess import InvalidImage, decode_image, to_model_input
from serving.batching import InferenceFailed
from serving.hotswap import LiveModel
from serving.state import ServingState


class BadUpload(Exception):
    """An upload refused with ``status_code``; ``reason`` (too_large, empty, unreadable) labels the metric."""

    def __init__(self, status_code: int, reason: str, message: str):
        super().__init__(message)
        self.status_code = status_code
        self.reason = reason


async def read_upload(file: UploadFile, limit: int) -> bytes:
    """The file's bytes; BadUpload if it is empty or larger than ``limit`` bytes."""
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise BadUpload(
            status.HTTP_413_CONTENT_TOO_LARGE, "too_large", f"file is larger than the {limit / 2**20:g} MB limit"
        )
    if not data:
        raise BadUpload(status.HTTP_400_BAD_REQUEST, "empty", "the uploaded file is empty")
    return data


def prepare(data: bytes, size: int, fit: str) -> tuple[Image.Image, np.ndarray]:
    """Decode + orient + RGB + fit to the input (a worker thread, never the event loop)."""
    image = decode_image(data)
    return image, to_model_input(image, size, fit)


async def infer(state: ServingState, live: LiveModel, data: bytes) -> tuple[Image.Image, np.ndarray, float, np.ndarray]:
    """Decode in a worker thread, then score in a micro-batch: (image, pixels, raw score, embedding)."""
    state.batcher.decoding += 1
    try:
        image, pixels = await asyncio.to_thread(prepare, data, live.image_size, live.model.input_fit)
    except InvalidImage as exc:
        raise BadUpload(status.HTTP_400_BAD_REQUEST, "unreadable", f"cannot read the image: {exc}") from None
    finally:
        state.batcher.decoding -= 1
    try:
        raw, embedding = await state.batcher.score(live.model, pixels)
    except InferenceFailed as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"inference failed: {exc}") from None
    return image, pixels, raw, embedding


def rejected(state: ServingState, exc: BadUpload) -> HTTPException:
    """Count a refused upload (``aidetect_rejected_uploads_total{reason}``); the HTTP error to raise."""
    state.metrics.rejected_uploads.labels(exc.reason).inc()
    return HTTPException(exc.status_code, str(exc))
