"""This browser's past predictions: ``GET`` and ``DELETE /v1/history`` (by its cookie)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from serving.deps import StateDep, browser
from serving.schemas import HistoryItemOut

router = APIRouter(prefix="/v1/history", tags=["history"])


@router.get("", response_model=list[HistoryItemOut])
async def history(request: Request, response: Response, state: StateDep) -> list[HistoryItemOut]:
    """This browser's past predictions, newest first (kept by this replica, up to 50)."""
    items = state.history.list(browser(request, response))
    return [
        HistoryItemOut(
            id=i.prediction_id,
            label=i.label,
            probability=i.probability,
            model_version=i.model_version,
            filename=i.filename,
            at=i.at,
            feedback_id=i.feedback_id,
            image_available=state.recent.get(i.prediction_id) is not None,
        )
        for i in items
    ]


@router.delete("")
async def clear_history(request: Request, response: Response, state: StateDep) -> dict[str, int]:
    """Forget this browser's history."""
    return {"cleared": state.history.clear(browser(request, response))}
