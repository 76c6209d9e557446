"""A recent prediction's image, drawn: its heatmap, its thumbnail, its annotated copy (all PNG).

Under ``/v1/predictions/{prediction_id}/``, for predictions any replica made within
``AIDETECT_RECENT_RETENTION_HOURS`` (serving.shared); others are a 404.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

from fastapi import APIRouter, HTTPException, Response, status
from PIL import Image

from model.preprocess import decode_image
from serving.annotate import annotate
from serving.deps import LiveModelDep, StateDep
from serving.errors import PROBLEM
from serving.explain import occlusion_map, overlay_png, shown_image
from serving.recent import RecentPrediction
from serving.shared import find, keep_heatmap, stored_heatmap
from serving.state import ServingState
from serving.uploads import prepare

router = APIRouter(prefix="/v1/predictions", tags=["predict"])
PNG = {"content": {"image/png": {}}, "description": "PNG"}


async def _known(state: ServingState, prediction_id: str) -> RecentPrediction:
    known = await find(state, prediction_id)
    if known is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"prediction {prediction_id!r} is unknown or expired")
    return known


async def _drawn(
    state: ServingState, prediction_id: str, draw: Callable[[RecentPrediction], bytes], headers: dict[str, str]
) -> Response:
    """The PNG ``draw`` makes of a recent prediction (in a worker thread)."""
    known = await _known(state, prediction_id)
    return Response(await asyncio.to_thread(draw, known), media_type="image/png", headers=headers)


@router.get("/{prediction_id}/heatmap", response_class=Response, responses={200: PNG, 404: PROBLEM, 503: PROBLEM})
async def heatmap(state: StateDep, live: LiveModelDep, prediction_id: str) -> Response:
    """The regions that drove the verdict, in red over the image (occlusion sensitivity with the live model)."""
    drawn = await stored_heatmap(state, prediction_id, live.version)
    if drawn is not None:
        return Response(drawn, media_type="image/png", headers={"X-Model-Version": live.version})
    known = await _known(state, prediction_id)
    image, pixels = await asyncio.to_thread(prepare, known.image, live.image_size, live.model.input_fit)
    heat = await occlusion_map(live.model, pixels, known.label, state.batcher.run)  # takes turns with live batches
    png = await asyncio.to_thread(overlay_png, shown_image(image, pixels, live.model.input_fit), heat)
    await keep_heatmap(state, prediction_id, live.version, png)
    return Response(png, media_type="image/png", headers={"X-Model-Version": live.version})


@router.get("/{prediction_id}/thumbnail", response_class=Response, responses={200: PNG, 404: PROBLEM})
async def thumbnail(state: StateDep, prediction_id: str) -> Response:
    """A small PNG of a recent prediction's image (for the history list)."""
    return await _drawn(state, prediction_id, lambda known: _thumbnail(known.image), {})


def _thumbnail(data: bytes, side: int = 96) -> bytes:
    image = decode_image(data)
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@router.get("/{prediction_id}/annotated", response_class=Response, responses={200: PNG, 404: PROBLEM})
async def annotated(state: StateDep, prediction_id: str) -> Response:
    """The image of a recent prediction with the verdict and confidence drawn on it (PNG, a download)."""

    def draw(known: RecentPrediction) -> bytes:
        return annotate(known.image, known.label, known.probability, known.model_version)

    attachment = {"Content-Disposition": f'attachment; filename="aidetect-{prediction_id}.png"'}
    return await _drawn(state, prediction_id, draw, attachment)
