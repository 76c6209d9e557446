"""This browser's past predictions: ``GET`` and ``DELETE /v1/history`` (by its cookie)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from serving import shared
from serving.deps import StateDep, browser
from serving.schemas import HistoryItemOut

router = APIRouter(prefix="/v1/history", tags=["history"])


@router.get("", response_model=list[HistoryItemOut])
async def history(request: Request, response: Response, state: StateDep) -> list[HistoryItemOut]:
    """This browser's past predictions, newest first (up to 50, for the retention period), from any replica."""
    items = await shared.history(state, browser(request, response))
    available = await shared.images_available(state, [i.prediction_id for i in items])
    return [
        HistoryItemOut(
            id=i.prediction_id,
            label=i.label,
            probability=i.probability,
            model_version=i.model_version,
            filename=i.filename,
            at=i.at,
            feedback_id=i.feedback_id,
            image_available=shown,
        )
        for i, shown in zip(items, available, strict=True)
    ]


@router.delete("")
async def clear_history(request: Request, response: Response, state: StateDep) -> dict[str, int]:
    """Forget this browser's history (on every replica: it is deleted from the store)."""
    return {"cleared": await shared.forget(state, browser(request, response))}
