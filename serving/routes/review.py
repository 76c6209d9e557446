"""Review over HTTP, behind ``AIDETECT_REVIEWER_TOKEN``: the page ``GET /review`` and its API.

``GET /v1/review/queue``: the reports awaiting review (``feedback.review_queue``), each with
what the model said then and what the live model says now, the other reports of its image, in
the order of ``review_priority`` (its rule, ``REVIEW_ORDER``, comes with the queue);
``GET /v1/review/reports/{id}/image``: a report's image; ``POST /v1/review``: accept or reject
one or many, appended to ``feedback-reviews/`` by ``feedback.reviews.save_review``, as
``aidetect feedback review accept|reject`` does (the latest decision wins).

The page itself is static (no secret in it): the reviewer types the token, the page keeps it in
sessionStorage and sends it as ``Authorization: Bearer``. Unset token: 403; wrong: 401.
"""

from __future__ import annotations

import asyncio
import mimetypes
import secrets
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse

from feedback.policy import decide
from feedback.review_queue import REVIEW_ORDER, Awaiting, LiveScore, review_priority
from feedback.reviews import load_reviews, save_review
from feedback.store import get_feedback, is_feedback_id, reports_of_image
from serving.deps import StateDep
from serving.errors import PROBLEM
from serving.hotswap import LiveModel
from serving.review_backlog import ReviewBacklog, load_queue
from serving.schemas import (
    ReviewDecisionIn,
    ReviewedOut,
    ReviewIn,
    ReviewItemOut,
    ReviewOtherOut,
    ReviewOut,
    ReviewQueueOut,
    ReviewScoreOut,
)
from serving.state import ServingState, now
from serving.uploads import BadUpload, infer
from storage import NotFound

PAGE = Path(__file__).resolve().parents[1] / "static" / "review.html"
SCORING_AT_ONCE = 8  # images of the queue decoded and scored at a time (the batcher groups them)
QUEUE_LIMIT = 500  # most items one queue answer holds


def require_reviewer(state: StateDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """A bearer token equal to ``AIDETECT_REVIEWER_TOKEN``: 403 while none is set, 401 without it."""
    token = state.settings.reviewer_token
    if token is None or not token.get_secret_value():
        raise HTTPException(status.HTTP_403_FORBIDDEN, "review is disabled on this server: set AIDETECT_REVIEWER_TOKEN")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
        message = "a reviewer token is required" if not given else "the reviewer token is wrong"
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"})


router = APIRouter(prefix="/v1/review", tags=["review"], dependencies=[Depends(require_reviewer)])
page_router = APIRouter()
AUTH_ERRORS: dict[int | str, dict[str, object]] = {401: PROBLEM, 403: PROBLEM, 503: PROBLEM}


@page_router.get("/review", include_in_schema=False)
async def review_page() -> FileResponse:
    return FileResponse(PAGE, headers={"Cache-Control": "no-store"})


def _backlog(request: Request) -> ReviewBacklog:
    return request.app.state.review_backlog  # type: ignore[no-any-return]


async def _score(state: ServingState, backlog: ReviewBacklog, live: LiveModel, item: Awaiting) -> LiveScore | None:
    """The live model's score of the item's image (once per model version and image)."""
    key = (live.version, item.record.image_sha256)
    if key in backlog.scores:
        return backlog.scores[key]
    try:
        data = await asyncio.to_thread(state.store.get, item.record.image_key)
        _, _, raw, _ = await infer(state, live, data)
    except (NotFound, BadUpload):  # gone or unreadable: not scored, and not retried on this version
        backlog.scores[key] = None
        return None
    except HTTPException:  # inference failed this time: not scored, tried again next time
        return None
    label, probability = live.verdict(raw)
    score = LiveScore(live.version, label, probability, live.card.threshold)
    backlog.scores[key] = score
    return score


async def _scores(state: ServingState, backlog: ReviewBacklog, queue: list[Awaiting]) -> dict[str, LiveScore | None]:
    """The live score of each image in ``queue`` (by sha256); empty while no model is loaded."""
    live = state.holder.current
    if live is None:
        return {}
    for key in [k for k in backlog.scores if k[0] != live.version]:
        del backlog.scores[key]
    images = {item.record.image_sha256: item for item in queue}
    gate = asyncio.Semaphore(SCORING_AT_ONCE)

    async def one(item: Awaiting) -> LiveScore | None:
        async with gate:
            return await _score(state, backlog, live, item)

    scored = await asyncio.gather(*(one(item) for item in images.values()))
    return dict(zip(images, scored, strict=True))


def _item(item: Awaiting, live: LiveScore | None, at: float) -> ReviewItemOut:
    record = item.record
    return ReviewItemOut(
        id=record.id,
        image_sha256=record.image_sha256,
        image_url=f"/v1/review/reports/{record.id}/image",
        claimed_label=record.claimed_label,
        client=record.client,
        note=record.note,
        generator=record.generator,
        created_at=record.created_at,
        age_seconds=max(0.0, at - record.created_at.timestamp()),
        status=item.statuses[record.id],
        reason=item.reason,
        conflict=item.conflict,
        then=ReviewScoreOut(
            label=record.predicted_label, probability=record.predicted_score, model_version=record.model_version
        ),
        now=None
        if live is None
        else ReviewScoreOut(label=live.label, probability=live.probability, model_version=live.version),
        other_reports=[
            ReviewOtherOut(
                id=r.id,
                client=r.client,
                claimed_label=r.claimed_label,
                status=item.statuses[r.id],
                created_at=r.created_at,
            )
            for r in item.same_image
        ],
    )


@router.get("/queue", response_model=ReviewQueueOut, responses=AUTH_ERRORS)
async def review_queue(
    request: Request,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=QUEUE_LIMIT, description="most items returned")] = 100,
) -> ReviewQueueOut:
    """The reports awaiting review, in review order (the rule is ``order``)."""
    backlog = _backlog(request)
    queue = await asyncio.to_thread(load_queue, state.store, state.feedback_policy)
    backlog.set(queue)  # the gauge follows what reviewers see
    scores = await _scores(state, backlog, queue)
    queue.sort(key=lambda item: review_priority(item.record, scores.get(item.record.image_sha256)))
    at = now().timestamp()
    live = state.holder.current
    return ReviewQueueOut(
        order=REVIEW_ORDER,
        total=len(queue),
        model_version=live.version if live else None,
        items=[_item(item, scores.get(item.record.image_sha256), at) for item in queue[:limit]],
    )


def _unknown(feedback_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no feedback report {feedback_id!r}")


@router.get(
    "/reports/{report_id}/image",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}, "description": "the reported image"}, 404: PROBLEM, **AUTH_ERRORS},
)
async def review_image(state: StateDep, report_id: str) -> Response:
    """The image a report is about (as stored: content-addressed, so cached for good)."""
    if not is_feedback_id(report_id):
        raise _unknown(report_id)
    record = await asyncio.to_thread(get_feedback, state.store, report_id)
    if record is None:
        raise _unknown(report_id)
    try:
        data = await asyncio.to_thread(state.store.get, record.image_key)
    except NotFound:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"the image of report {report_id!r} is not in the store"
        ) from None
    media_type = mimetypes.guess_type(record.image_key)[0] or "application/octet-stream"
    headers = {
        "Cache-Control": "private, max-age=31536000, immutable",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "X-Content-Type-Options": "nosniff",
    }
    return Response(data, media_type=media_type, headers=headers)


def _check_batch(decisions: list[ReviewDecisionIn]) -> None:
    """One decision per report: a 422 in the shape of FastAPI's own (the documented ``HTTPValidationError``)."""
    seen: set[str] = set()
    for i, each in enumerate(decisions):
        if each.report_id in seen:
            raise RequestValidationError(
                [
                    {
                        "type": "value_error",
                        "loc": ("body", "decisions", i, "report_id"),
                        "msg": f"report {each.report_id!r} is decided twice in one request",
                        "input": each.report_id,
                    }
                ]
            )
        seen.add(each.report_id)


def _apply(state: ServingState, body: ReviewIn) -> tuple[list[ReviewedOut], list[Awaiting]]:
    """Check every id, then append one review each (a worker thread); the statuses after, and the queue."""
    store = state.store
    records = []
    for each in body.decisions:
        record = get_feedback(store, each.report_id) if is_feedback_id(each.report_id) else None
        if record is None:
            raise _unknown(each.report_id)
        records.append(record)
    for each in body.decisions:
        save_review(store, each.report_id, each.decision, body.reviewer, each.reason)
    reviewed = []
    for each, record in zip(body.decisions, records, strict=True):
        reports = {r.id: r for r in reports_of_image(store, record.image_sha256)}
        reports[record.id] = record
        decided = decide(list(reports.values()), load_reviews(store, list(reports)), state.feedback_policy)
        reviewed.append(ReviewedOut(report_id=record.id, decision=each.decision, status=decided[record.id].status))
    return reviewed, load_queue(store, state.feedback_policy)


@router.post(
    "", response_model=ReviewOut, responses={400: PROBLEM, 404: PROBLEM, **AUTH_ERRORS}
)  # 400: a body that is not JSON
async def review(request: Request, state: StateDep, body: ReviewIn) -> ReviewOut:
    """Accept or reject reports (the latest decision on a report wins; nothing is overwritten).

    Every id is checked before anything is written: one unknown id (404) or one id twice (422)
    and no decision of the request is kept.
    """
    _check_batch(body.decisions)
    reviewed, queue = await asyncio.to_thread(_apply, state, body)
    _backlog(request).set(queue)
    return ReviewOut(reviewer=body.reviewer, reviewed=reviewed, backlog=len(queue))
