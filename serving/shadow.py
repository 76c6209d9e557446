"""Shadow scoring: a share of predictions is scored by the shadow model too, off the request path.

The shadow's verdict goes into the prediction's log record and the agree/disagree counters of
/metrics, never to the client. Scores wait for the inference thread like live ones; beyond
``SHADOW_BACKLOG`` waiting they are dropped (counted), never queued without bound.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from model.preprocess import to_model_input
from serving.hotswap import LiveModel
from storage.predictions import PredictionRecord

if TYPE_CHECKING:
    from serving.state import ServingState

log = logging.getLogger("aidetect.serving")

SHADOW_BACKLOG = 64  # shadow scores waiting beyond this are dropped, never queued without bound


def shadow_for(state: ServingState) -> LiveModel | None:
    """The shadow model, if this prediction is one of the share it scores (``AIDETECT_SHADOW_SHARE``)."""
    shadow = state.shadow.current if state.shadow is not None else None
    if shadow is not None and state.rng.random() < state.settings.shadow_share:
        return shadow
    return None


async def shadow_score(
    state: ServingState, record: PredictionRecord, shadow: LiveModel, image: Image.Image, pixels: np.ndarray
) -> None:
    """Add the shadow's version, P(ai) and label to ``record``; count agree, disagree, dropped or failed."""
    if state.shadow_waiting >= SHADOW_BACKLOG:
        state.metrics.shadow.labels("dropped").inc()
        return
    state.shadow_waiting += 1
    try:
        live = state.holder.current
        if pixels.shape[0] != shadow.image_size or live is None or live.model.input_fit != shadow.model.input_fit:
            pixels = await asyncio.to_thread(to_model_input, image, shadow.image_size, shadow.model.input_fit)
        raw, _ = await state.batcher.score(shadow.model, pixels)
        label, p = shadow.verdict(raw)
        record.shadow_version, record.shadow_probability, record.shadow_label = shadow.version, p, label
        state.metrics.shadow.labels("agree" if label == record.label else "disagree").inc()
    except Exception:
        state.metrics.shadow.labels("failed").inc()
        log.exception("shadow scoring with %s failed", shadow.version)
    finally:
        state.shadow_waiting -= 1
