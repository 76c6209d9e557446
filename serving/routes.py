"""HTTP routes: predict (one, batch), annotated image, feedback, model, admin, health, metrics."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import secrets
import time
from typing import Annotated, Literal
from urllib.parse import urlsplit

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Header, HTTPException, Request, Response, UploadFile, status
from fastapi.exceptions import RequestValidationError
from PIL import Image

from feedback.records import FeedbackRecord, hash_client
from feedback.status import report_status
from feedback.store import get_feedback, save_feedback
from model.preprocess import InvalidImage, decode_image, to_model_input
from model.registry import AliasConflict
from serving.annotate import annotate
from serving.batching import InferenceFailed
from serving.explain import occlusion_map, overlay_png, shown_image
from serving.history import COOKIE, HistoryItem
from serving.history import now as history_now
from serving.hotswap import LiveModel
from serving.recent import RecentPrediction
from serving.schemas import (
    AdminOut,
    BatchItemError,
    BatchOut,
    FeedbackOut,
    FeedbackStatusOut,
    Health,
    HistoryItemOut,
    ModelOut,
    PredictionOut,
    ShadowOut,
)
from serving.state import ServingState, in_loader, now
from storage import StoreError
from storage.layout import image_extension, image_key, put_image
from storage.predictions import PredictionRecord

router = APIRouter()
log = logging.getLogger("aidetect.serving")

PROBLEM = {"model": dict[str, str], "description": "a JSON body {detail: message}"}


def _state(request: Request) -> ServingState:
    return request.app.state.serving  # type: ignore[no-any-return]


StateDep = Annotated[ServingState, Depends(_state)]


def _live_model(state: StateDep) -> LiveModel:
    live = state.holder.current
    if live is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no model is loaded yet; try again shortly")
    return live


LiveModelDep = Annotated[LiveModel, Depends(_live_model)]


class BadUpload(Exception):
    def __init__(self, status_code: int, reason: str, message: str):
        super().__init__(message)
        self.status_code = status_code
        self.reason = reason


async def _read_upload(file: UploadFile, limit: int) -> bytes:
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise BadUpload(
            status.HTTP_413_CONTENT_TOO_LARGE, "too_large", f"file is larger than the {limit / 2**20:g} MB limit"
        )
    if not data:
        raise BadUpload(status.HTTP_400_BAD_REQUEST, "empty", "the uploaded file is empty")
    return data


def _prepare(data: bytes, size: int, fit: str) -> tuple[Image.Image, np.ndarray]:
    """Decode + orient + RGB + fit to the input (a worker thread, never the event loop)."""
    image = decode_image(data)
    return image, to_model_input(image, size, fit)


async def _infer(
    state: ServingState, live: LiveModel, data: bytes
) -> tuple[Image.Image, np.ndarray, float, np.ndarray]:
    """Decode in a worker thread, then score in a micro-batch: (image, pixels, raw score, embedding)."""
    state.batcher.decoding += 1
    try:
        image, pixels = await asyncio.to_thread(_prepare, data, live.image_size, live.model.input_fit)
    except InvalidImage as exc:
        raise BadUpload(status.HTTP_400_BAD_REQUEST, "unreadable", f"cannot read the image: {exc}") from None
    finally:
        state.batcher.decoding -= 1
    try:
        raw, embedding = await state.batcher.score(live.model, pixels)
    except InferenceFailed as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"inference failed: {exc}") from None
    return image, pixels, raw, embedding


async def _predict_one(state: ServingState, live: LiveModel, file: UploadFile) -> PredictionOut:
    started = time.perf_counter()
    data = await _read_upload(file, state.settings.max_upload_bytes)
    image, pixels, raw, embedding = await _infer(state, live, data)
    label, probability = live.verdict(raw)
    latency_ms = (time.perf_counter() - started) * 1000
    prediction_id = secrets.token_hex(8)
    ext = image_extension(image.format)
    state.recent.add(RecentPrediction(prediction_id, data, ext, label, probability, live.version))
    state.metrics.predictions.labels(label).inc()
    record = PredictionRecord(
        id=prediction_id,
        created_at=now(),
        model_version=live.version,
        variant=live.variant,
        probability=probability,
        raw_score=raw,
        label=label,
        latency_ms=latency_ms,
        bytes=len(data),
        image_sha256=hashlib.sha256(data).hexdigest(),
        embedding=embedding.astype(np.float16).tolist(),
    )
    state.log_prediction(record, image, data, pixels)
    return PredictionOut(
        id=prediction_id,
        label=label,  # type: ignore[arg-type]
        probability=probability,
        model_version=live.version,
        latency_ms=latency_ms,
    )


def _bad_upload(state: ServingState, exc: BadUpload) -> HTTPException:
    state.metrics.rejected_uploads.labels(exc.reason).inc()
    return HTTPException(exc.status_code, str(exc))


@router.post(
    "/v1/predict",
    response_model=PredictionOut,
    tags=["predict"],
    responses={400: PROBLEM, 413: PROBLEM, 503: PROBLEM},
)
async def predict(
    request: Request,
    response: Response,
    state: StateDep,
    live: LiveModelDep,
    file: Annotated[UploadFile, File(description="the image (multipart)")],
) -> PredictionOut:
    """Is this image AI-generated? The file's type is read from its bytes, not its declared content type.

    Browsers get a random ``aidetect_browser`` cookie; their predictions are listed by ``GET /v1/history``.
    """
    try:
        out = await _predict_one(state, live, file)
    except BadUpload as exc:
        raise _bad_upload(state, exc) from None
    browser = _browser(request, response)
    state.history.add(
        browser,
        HistoryItem(out.id, out.label, out.probability, out.model_version, file.filename, history_now()),
    )
    return out


def client_fingerprint(request: Request) -> str:
    """A hashed client address: what makes two reports independent, and what rate limits count.

    The address only: a user agent is whatever the client says it is. Behind a reverse proxy,
    run uvicorn with ``--proxy-headers --forwarded-allow-ips <proxy>`` so that this is the
    client's address, not the proxy's.
    """
    return hash_client(request.client.host if request.client else "unknown")


def _same_origin_only(request: Request, allowed: list[str]) -> None:
    """Refuse feedback posted from another site's page (browsers send Origin on cross-site POSTs),
    unless that site is one of ``AIDETECT_CORS_ORIGINS``."""
    origin = request.headers.get("origin")
    if origin and origin in allowed:
        return
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"feedback from another site ({origin}) is not accepted")


def _browser(request: Request, response: Response) -> str:
    """This browser's random id (set as a cookie on first use)."""
    browser = request.cookies.get(COOKIE, "")
    if not (len(browser) == 32 and all(c in "0123456789abcdef" for c in browser)):
        browser = secrets.token_hex(16)
        response.set_cookie(COOKIE, browser, max_age=365 * 24 * 3600, httponly=True, samesite="lax")
    return browser


def _known(state: ServingState, prediction_id: str) -> RecentPrediction:
    known = state.recent.get(prediction_id)
    if known is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"prediction {prediction_id!r} is unknown or expired")
    return known


@router.get(
    "/v1/predictions/{prediction_id}/heatmap",
    tags=["predict"],
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "PNG"}, 404: PROBLEM, 503: PROBLEM},
)
async def heatmap(state: StateDep, live: LiveModelDep, prediction_id: str) -> Response:
    """The regions that drove the verdict, in red over the image (occlusion sensitivity with the live model)."""
    known = _known(state, prediction_id)
    cached = state.heatmaps.get((prediction_id, live.version))
    if cached is not None:
        return Response(cached, media_type="image/png", headers={"X-Model-Version": live.version})
    image, pixels = await asyncio.to_thread(_prepare, known.image, live.image_size, live.model.input_fit)
    heat = await occlusion_map(live.model, pixels, known.label, state.batcher.run)  # takes turns with live batches
    png = await asyncio.to_thread(overlay_png, shown_image(image, pixels, live.model.input_fit), heat)
    state.heatmaps.put((prediction_id, live.version), png)
    return Response(png, media_type="image/png", headers={"X-Model-Version": live.version})


@router.get(
    "/v1/predictions/{prediction_id}/thumbnail",
    tags=["predict"],
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "PNG"}, 404: PROBLEM},
)
async def thumbnail(state: StateDep, prediction_id: str) -> Response:
    """A small PNG of a recent prediction's image (for the history list)."""
    known = _known(state, prediction_id)
    return Response(await asyncio.to_thread(_thumbnail, known.image), media_type="image/png")


def _thumbnail(data: bytes, side: int = 96) -> bytes:
    image = decode_image(data)
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@router.get("/v1/history", response_model=list[HistoryItemOut], tags=["history"])
async def history(request: Request, response: Response, state: StateDep) -> list[HistoryItemOut]:
    """This browser's past predictions, newest first (kept by this replica, up to 50)."""
    items = state.history.list(_browser(request, response))
    return [
        HistoryItemOut(
            id=i.prediction_id,
            label=i.label,  # type: ignore[arg-type]
            probability=i.probability,
            model_version=i.model_version,
            filename=i.filename,
            at=i.at,
            feedback_id=i.feedback_id,
            image_available=state.recent.get(i.prediction_id) is not None,
        )
        for i in items
    ]


@router.delete("/v1/history", tags=["history"])
async def clear_history(request: Request, response: Response, state: StateDep) -> dict[str, int]:
    """Forget this browser's history."""
    return {"cleared": state.history.clear(_browser(request, response))}


@router.post("/v1/predict/batch", response_model=BatchOut, tags=["predict"], responses={400: PROBLEM, 503: PROBLEM})
async def predict_batch(
    state: StateDep,
    live: LiveModelDep,
    files: Annotated[list[UploadFile], File(description="the images (repeat the `files` field)")],
) -> BatchOut:
    """Several images in one request; each gets a prediction or its own error, in order."""
    limit = state.settings.batch_max_files
    if len(files) > limit:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{len(files)} files sent; at most {limit} per batch")
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(_predict_one(state, live, f) for f in files), return_exceptions=True)
    results: list[PredictionOut | BatchItemError] = []
    for file, outcome in zip(files, outcomes, strict=True):
        if isinstance(outcome, BadUpload):
            _bad_upload(state, outcome)
            results.append(BatchItemError(filename=file.filename, status=outcome.status_code, error=str(outcome)))
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            results.append(outcome)
    return BatchOut(model_version=live.version, results=results, latency_ms=(time.perf_counter() - started) * 1000)


@router.get(
    "/v1/predictions/{prediction_id}/annotated",
    tags=["predict"],
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "PNG"}, 404: PROBLEM},
)
async def annotated(state: StateDep, prediction_id: str) -> Response:
    """The image of a recent prediction with the verdict and confidence drawn on it (PNG, a download)."""
    known = _known(state, prediction_id)
    png = await asyncio.to_thread(annotate, known.image, known.label, known.probability, known.model_version)
    filename = f"aidetect-{prediction_id}.png"
    return Response(png, media_type="image/png", headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _no_image() -> RequestValidationError:
    """A 422 in the shape of FastAPI's own (the documented ``HTTPValidationError``): one error, on ``file``."""
    return RequestValidationError(
        [{"type": "missing", "loc": ("body", "file"), "msg": "send a prediction_id or the image file", "input": None}]
    )


@router.post(
    "/v1/feedback",
    response_model=FeedbackOut,
    status_code=status.HTTP_201_CREATED,
    tags=["feedback"],
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
    fingerprint = client_fingerprint(request)
    wait = state.feedback_limiter.take(fingerprint)
    if wait > 0:
        state.metrics.feedback.labels("rate_limited").inc()
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many feedback reports from this client; try again in {wait:.0f} s",
            headers={"Retry-After": str(max(1, round(wait)))},
        )
    recent = state.recent
    known = recent.get(prediction_id) if prediction_id else None
    if prediction_id and known is None and file is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"prediction {prediction_id!r} is unknown or expired; upload the image"
        )
    if known is None and file is None:
        raise _no_image()
    predicted: str | None = None
    score: float | None = None
    version: str | None = None
    if known is not None:
        data, ext = known.image, known.image_ext
        predicted, score, version = known.label, known.probability, known.model_version
    else:
        if file is None:  # ruled out above; for the type checker
            raise _no_image()
        try:
            data = await _read_upload(file, state.settings.max_upload_bytes)
            live = state.holder.current
            if live is not None:  # record what the live model says about it
                image, _, raw, _ = await _infer(state, live, data)
                predicted, score = live.verdict(raw)
                version = live.version
            else:
                image = await asyncio.to_thread(decode_image, data)
            ext = image_extension(image.format)
        except BadUpload as exc:
            raise _bad_upload(state, exc) from None
        except InvalidImage as exc:
            raise _bad_upload(state, BadUpload(400, "unreadable", f"cannot read the image: {exc}")) from None
    client = fingerprint
    store = state.store
    sha = hashlib.sha256(data).hexdigest()
    record = FeedbackRecord(
        image_sha256=sha,
        image_key=image_key(sha, ext),
        claimed_label=label,
        prediction_id=prediction_id if known else None,
        predicted_label=predicted,
        predicted_score=score,
        model_version=version,
        client=client,
        note=note,
        generator=generator,
    )

    def persist() -> None:
        put_image(store, data, ext)
        save_feedback(store, record)

    status_text = "quarantined"
    try:
        await asyncio.to_thread(persist)
        response.status_code = status.HTTP_201_CREATED
    except StoreError as exc:  # keep it locally and send it when the store is back
        try:
            await asyncio.to_thread(state.outbox.put, record, data, ext)
        except OSError as disk:
            state.metrics.feedback.labels("lost").inc()
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"feedback store unavailable ({exc}) and local outbox full ({disk})",
            ) from None
        log.warning("feedback %s queued in the outbox: %s", record.id, exc)
        response.status_code = status.HTTP_202_ACCEPTED
        status_text = "queued"
    state.metrics.feedback.labels(status_text).inc()
    if known is not None and prediction_id:
        state.history.link_feedback(_browser(request, response), prediction_id, record.id)
    return FeedbackOut(
        id=record.id,
        status=status_text,
        claimed_label=record.claimed_label,
        predicted_label=record.predicted_label,
        model_version=record.model_version,
        misclassified=record.misclassified,
    )


@router.get("/v1/feedback/{feedback_id}", response_model=FeedbackStatusOut, tags=["feedback"], responses={404: PROBLEM})
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
    except StoreError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"feedback store unavailable: {exc}") from None
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


def _model_out(holder_alias: str, live: LiveModel, swaps: int, refused: int, last_error: str | None) -> ModelOut:
    return ModelOut(
        version=live.version,
        variant=live.variant,
        alias=holder_alias,
        loaded_at=live.loaded_at,
        swaps=swaps,
        refused=refused,
        last_error=last_error,
        metadata=live.card.model_dump(mode="json"),
    )


@router.get("/v1/model", response_model=ModelOut, tags=["model"], responses={503: PROBLEM})
async def model_info(state: StateDep, live: LiveModelDep) -> ModelOut:
    """The live model: version, variant, metadata (metrics, calibration, lineage), swap counters."""
    holder = state.holder
    out = _model_out(holder.alias, live, holder.swaps, holder.refused, holder.last_error)
    shadow = state.shadow.current if state.shadow is not None else None
    if shadow is not None and state.shadow is not None:
        out.shadow = ShadowOut(alias=state.shadow.alias, version=shadow.version, share=state.settings.shadow_share)
    return out


# admin --------------------------------------------------------------------------------------
def _require_admin(state: StateDep, authorization: Annotated[str | None, Header()] = None) -> None:
    token = state.settings.admin_token
    if token is None or not token.get_secret_value():
        raise HTTPException(status.HTTP_403_FORBIDDEN, "admin endpoints are disabled: set AIDETECT_ADMIN_TOKEN")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "a valid admin token is required", headers={"WWW-Authenticate": "Bearer"}
        )


AdminDep = Depends(_require_admin)


@router.post(
    "/v1/admin/reload",
    response_model=AdminOut,
    tags=["admin"],
    dependencies=[AdminDep],
    responses={401: PROBLEM, 403: PROBLEM, 503: PROBLEM},
)
async def admin_reload(state: StateDep) -> AdminOut:
    """Follow the alias now, retrying versions refused earlier."""
    try:
        changed = await in_loader(state, lambda: state.holder.refresh(force=True))
    except StoreError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"object store unavailable: {exc}") from None
    live = state.holder.current
    return AdminOut(changed=changed, version=live.version if live else None, last_error=state.holder.last_error)


@router.post(
    "/v1/admin/rollback",
    response_model=AdminOut,
    tags=["admin"],
    dependencies=[AdminDep],
    responses={401: PROBLEM, 403: PROBLEM, 409: PROBLEM, 503: PROBLEM},
)
async def admin_rollback(state: StateDep) -> AdminOut:
    """Point the alias back at its previous version (for every replica) and swap to it here."""
    holder = state.holder
    try:
        record = await asyncio.to_thread(holder.registry.rollback, holder.alias, reason="admin rollback via API")
        changed = await in_loader(state, holder.refresh)
    except (ValueError, AliasConflict) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except StoreError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"object store unavailable: {exc}") from None
    live = holder.current
    return AdminOut(
        changed=changed,
        version=live.version if live else None,
        alias_version=record.version,
        last_error=holder.last_error,
    )


# health -------------------------------------------------------------------------------------
def _not_draining(state: ServingState) -> None:
    if state.draining.is_set():
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "draining: this replica is shutting down and finishes the requests it has",
        )


@router.get("/healthz", response_model=Health, tags=["health"], responses={503: PROBLEM})
async def healthz(state: StateDep) -> Health:
    """The process is up (with or without a model); 503 while draining before a shutdown, so a
    load balancer stops sending new requests here (every other endpoint still answers)."""
    _not_draining(state)
    live = state.holder.current
    return Health(status="ok", model_version=live.version if live else None, build=state.settings.build)


@router.get("/readyz", response_model=Health, tags=["health"], responses={503: PROBLEM})
async def readyz(state: StateDep) -> Health:
    """Ready only with a model loaded, and not draining."""
    _not_draining(state)
    live = state.holder.current
    if live is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no model loaded")
    return Health(status="ready", model_version=live.version, build=state.settings.build)


@router.get(
    "/metrics",
    tags=["health"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics: request latency, predictions by label, live model, swaps, refusals, feedback, log."""
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
