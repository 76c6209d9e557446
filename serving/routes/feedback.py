"""User feedback: ``POST /v1/feedback`` (claim the right label) and ``GET /v1/feedback/{id}`` (its status).

A report is persisted by ``feedback.submit`` (the store, or this replica's outbox while the
store is down); what is believed of it comes from ``feedback.policy`` via ``feedback.status``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, File, Form, HTTPException, Request, Response, UploadFile, status
from fastapi.exceptions import RequestValidationError

from feedback.records import FeedbackRecord
from feedback.status import report_status
from feedback.store import get_feedback
from feedback.submit import FeedbackLost, submit
from model.preprocess import InvalidImage, decode_image
from serving.deps import StateDep, browser, client_fingerprint
from serving.errors import PROBLEM
from serving.recent import RecentPrediction
from serving.schemas import FeedbackOut, FeedbackStatusOut
from serving.shared import find, link_feedback
from serving.state import ServingState
from serving.uploads import BadUpload, infer, read_upload, rejected
from storage import StoreError
from storage.layout import image_extension, image_key

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])
log = logging.getLogger("aidetect.serving")


@dataclass(frozen=True)
class _Reported:
    """The image a report is about, and what a model said of it (nothing if no model was live)."""

    data: bytes
    ext: str
    predicted: str | None = None
    score: float | None = None
    version: str | None = None


def _same_origin_only(request: Request, allowed: list[str]) -> None:
    """Refuse feedback posted from another site's page (browsers send Origin on cross-site POSTs),
    unless that site is one of ``AIDETECT_CORS_ORIGINS``."""
    origin = request.headers.get("origin")
    if origin and origin in allowed:
        return
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"feedback from another site ({origin}) is not accepted")


def _within_rate_limit(state: ServingState, client: str) -> None:
    wait = state.feedback_limiter.take(client)
    if wait > 0:
        state.metrics.feedback.labels("rate_limited").inc()
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many feedback reports from this client; try again in {wait:.0f} s",
            headers={"Retry-After": str(max(1, round(wait)))},
        )


def _no_image() -> RequestValidationError:
    """A 422 in the shape of FastAPI's own (the documented ``HTTPValidationError``): one error, on ``file``."""
    return RequestValidationError(
        [{"type": "missing", "loc": ("body", "file"), "msg": "send a prediction_id or the image file", "input": None}]
    )


async def _recent(state: ServingState, prediction_id: str | None, file: UploadFile | None) -> RecentPrediction | None:
    """The earlier prediction the report names, if any replica still has it; 404 or 422 when
    there is neither that nor an uploaded image (503 when only the unreachable store could tell)."""
    known = None
    if prediction_id:
        try:
            known = await find(state, prediction_id)
        except StoreError:
            if file is None:
                raise
            log.warning("prediction %s: the store is unreachable, the report uses the uploaded image", prediction_id)
    if prediction_id and known is None and file is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"prediction {prediction_id!r} is unknown or expired; upload the image"
        )
    if known is None and file is None:
        raise _no_image()
    return known


async def _uploaded(state: ServingState, file: UploadFile) -> _Reported:
    """The uploaded image, with what the live model says of it (if one is loaded)."""
    try:
        data = await read_upload(file, state.settings.max_upload_bytes)
        live = state.holder.current
        if live is None:
            image = await asyncio.to_thread(decode_image, data)
            return _Reported(data, image_extension(image.format))
        image, _, raw, _ = await infer(state, live, data)
        predicted, score = live.verdict(raw)
        return _Reported(data, image_extension(image.format), predicted, score, live.version)
    except BadUpload as exc:
        raise rejected(state, exc) from None
    except InvalidImage as exc:
        raise rejected(state, BadUpload(400, "unreadable", f"cannot read the image: {exc}")) from None


@router.post(
    "",
    response_model=FeedbackOut,
    status_code=status.HTTP_201_CREATED,
    responses={202: {"model": FeedbackOut}, 400: PROBLEM, 404: PROBLEM, 413: PROBLEM, 429: PROBLEM, 503: PROBLEM},
)
async def submit_feedback(
    request: Request,
    response: Response,
    state: StateDep,
    label: Annotated[Literal["ai", "real"], Form(description="the right label for the image")],
    prediction_id: Annotated[str | None, Form(max_length=64)] = None,
    file: Annotated[UploadFile | None, File(description="the image (if no prediction id)")] = None,
    note: Annotated[str | None, Form(max_length=2000)] = None,
    generator: Annotated[str | None, Form(max_length=200)] = None,
) -> FeedbackOut:
    """Claim the right label for an earlier prediction (by id) or for an uploaded image.

    201: stored, in quarantine until independent clients agree or a reviewer accepts it.
    202: the store is down; kept in this replica's outbox and sent when it is back.
    422: neither a known ``prediction_id`` nor a ``file``, as a validation error on ``file``.
    429: this client sent too many reports; retry after the seconds in ``Retry-After``.
    """
    _same_origin_only(request, state.settings.cors_origins)
    client = client_fingerprint(request)
    _within_rate_limit(state, client)
    known = await _recent(state, prediction_id, file)
    if known is not None:
        about = _Reported(known.image, known.image_ext, known.label, known.probability, known.model_version)
    elif file is not None:  # always, after _recent; for the type checker
        about = await _uploaded(state, file)
    else:
        raise _no_image()
    sha = hashlib.sha256(about.data).hexdigest()
    record = FeedbackRecord(
        image_sha256=sha,
        image_key=image_key(sha, about.ext),
        claimed_label=label,
        prediction_id=prediction_id if known else None,
        predicted_label=about.predicted,
        predicted_score=about.score,
        model_version=about.version,
        client=client,
        note=note,
        generator=generator,
    )
    try:
        outcome = await asyncio.to_thread(submit, record, about.data, about.ext, state.store, state.outbox)
    except FeedbackLost as exc:
        state.metrics.feedback.labels("lost").inc()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    response.status_code = status.HTTP_201_CREATED if outcome == "quarantined" else status.HTTP_202_ACCEPTED
    state.metrics.feedback.labels(outcome).inc()
    if known is not None and prediction_id:
        await link_feedback(state, browser(request, response), prediction_id, record.id)
    return FeedbackOut(
        id=record.id,
        status=outcome,
        claimed_label=record.claimed_label,
        predicted_label=record.predicted_label,
        model_version=record.model_version,
        misclassified=record.misclassified,
    )


@router.get("/{feedback_id}", response_model=FeedbackStatusOut, responses={404: PROBLEM})
async def feedback_status(state: StateDep, feedback_id: str) -> FeedbackStatusOut:
    """Was my report accepted, and which model version learnt from it?

    ``queued``: accepted by this replica while the store was down, not yet sent;
    ``quarantined``: waiting for agreement from other clients or a reviewer; ``accepted``;
    ``rejected`` (the reason says why).
    """
    queued = await asyncio.to_thread(state.outbox.get, feedback_id)
    if queued is not None:
        return FeedbackStatusOut(
            id=feedback_id,
            status="queued",
            reason="the store is unavailable; it will be sent when it is back",
            claimed_label=queued.claimed_label,
            created_at=queued.created_at,
        )
    try:
        record = await asyncio.to_thread(get_feedback, state.store, feedback_id)
        if record is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no feedback report {feedback_id!r}")
        found = await asyncio.to_thread(report_status, state.store, record, state.feedback_policy)
    except StoreError:  # NotFound is also a KeyError: the store's errors are the app's 503, not unreadable data
        raise
    except (ValueError, TypeError, KeyError) as exc:  # a record or review in the store that does not parse
        log.exception("feedback %s: unreadable data in the store", feedback_id)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"feedback data for {feedback_id!r} is unreadable: {exc}"
        ) from None
    return FeedbackStatusOut(
        id=feedback_id,
        status=found.status,  # type: ignore[arg-type]
        reason=found.reason,
        claimed_label=record.claimed_label,
        created_at=record.created_at,
        dataset_versions=found.dataset_versions,
        model_versions=found.model_versions,
    )
