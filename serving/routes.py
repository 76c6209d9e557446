"""HTTP routes: predict, feedback, model, health."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile, status

from aidetect.settings import Settings
from feedback.records import FeedbackRecord, hash_client
from feedback.store import save_feedback
from model.calibration import apply_temperature, verdict
from model.preprocess import InvalidImage, decode_image, to_model_input
from serving.recent import RecentPrediction, RecentPredictions
from serving.runtime import LiveModel, ModelHolder
from serving.schemas import FeedbackOut, Health, ModelOut, PredictionOut
from storage import ObjectStore, StoreError
from storage.layout import image_extension, put_image

router = APIRouter()


def _holder(request: Request) -> ModelHolder:
    return request.app.state.holder  # type: ignore[no-any-return]


def _live_model(request: Request) -> LiveModel:
    live = _holder(request).current
    if live is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no model is loaded yet; try again shortly")
    return live


HolderDep = Annotated[ModelHolder, Depends(_holder)]
LiveModelDep = Annotated[LiveModel, Depends(_live_model)]


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _store(request: Request) -> ObjectStore:
    return request.app.state.store  # type: ignore[no-any-return]


def _recent(request: Request) -> RecentPredictions:
    return request.app.state.recent  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[ObjectStore, Depends(_store)]
RecentDep = Annotated[RecentPredictions, Depends(_recent)]


async def _read_upload(file: UploadFile, limit: int) -> bytes:
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"file is larger than the {limit // (1024 * 1024)} MB limit"
        )
    if not data:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the uploaded file is empty")
    return data


def _score(live: LiveModel, data: bytes) -> tuple[str, float, str]:
    """Decode + preprocess + run + calibrate: (verdict, P(ai), image format). Runs in a worker thread."""
    image = decode_image(data)
    pixels = to_model_input(image, live.image_size)
    scores, _ = live.model.predict(pixels[None])
    p = float(np.clip(apply_temperature(scores[0], live.temperature), 0.0, 1.0))
    return verdict(p, live.threshold, live.uncertain_band), p, image_extension(image.format)


async def _score_or_400(live: LiveModel, data: bytes) -> tuple[str, float, str]:
    try:
        return await asyncio.to_thread(_score, live, data)
    except InvalidImage as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"cannot read the image: {exc}") from None


@router.post("/v1/predict", response_model=PredictionOut, tags=["predict"])
async def predict(
    live: LiveModelDep,
    settings: SettingsDep,
    recent: RecentDep,
    file: Annotated[UploadFile, File(description="the image")],
) -> PredictionOut:
    started = time.perf_counter()
    data = await _read_upload(file, settings.max_upload_bytes)
    label, probability, ext = await _score_or_400(live, data)
    prediction_id = secrets.token_hex(8)
    recent.add(RecentPrediction(prediction_id, data, ext, label, probability, live.version))
    return PredictionOut(
        id=prediction_id,
        label=label,  # type: ignore[arg-type]
        probability=probability,
        model_version=live.version,
        latency_ms=(time.perf_counter() - started) * 1000,
    )


@router.post("/v1/feedback", response_model=FeedbackOut, status_code=status.HTTP_201_CREATED, tags=["feedback"])
async def submit_feedback(
    request: Request,
    holder: HolderDep,
    settings: SettingsDep,
    store: StoreDep,
    recent: RecentDep,
    label: Annotated[Literal["ai", "real"], Form(description="the right label for the image")],
    prediction_id: Annotated[str | None, Form(max_length=64)] = None,
    file: Annotated[UploadFile | None, File(description="the image (if no prediction id)")] = None,
    note: Annotated[str | None, Form(max_length=2000)] = None,
    generator: Annotated[str | None, Form(max_length=200)] = None,
) -> FeedbackOut:
    """Claim the right label for an earlier prediction (by id) or for an uploaded image."""
    known = recent.get(prediction_id) if prediction_id else None
    if prediction_id and known is None and file is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"prediction {prediction_id!r} is unknown or expired; upload the image"
        )
    if known is None and file is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "send a prediction_id or the image file")
    predicted: str | None = None
    score: float | None = None
    version: str | None = None
    if known is not None:
        data, ext = known.image, known.image_ext
        predicted, score, version = known.label, known.probability, known.model_version
    else:
        assert file is not None
        data = await _read_upload(file, settings.max_upload_bytes)
        live = holder.current
        if live is not None:  # record what the live model says about it
            predicted, score, ext = await _score_or_400(live, data)
            version = live.version
        else:
            try:
                ext = await asyncio.to_thread(lambda: image_extension(decode_image(data).format))
            except InvalidImage as exc:
                raise HTTPException(status.HTTP_400_BAD_REQUEST, f"cannot read the image: {exc}") from None
    client = request.client.host if request.client else "unknown"

    def persist() -> FeedbackRecord:
        sha, key = put_image(store, data, ext)
        record = FeedbackRecord(
            image_sha256=sha,
            image_key=key,
            claimed_label=label,
            prediction_id=prediction_id if known else None,
            predicted_label=predicted,
            predicted_score=score,
            model_version=version,
            client=hash_client(f"{client}|{request.headers.get('user-agent', '')}"),
            note=note,
            generator=generator,
        )
        save_feedback(store, record)
        return record

    try:
        record = await asyncio.to_thread(persist)
    except StoreError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"feedback store unavailable: {exc}") from None
    return FeedbackOut(
        id=record.id,
        status=record.status,
        claimed_label=record.claimed_label,
        predicted_label=record.predicted_label,
        model_version=record.model_version,
        misclassified=record.misclassified,
    )


@router.get("/v1/model", response_model=ModelOut, tags=["model"])
async def model_info(holder: HolderDep, live: LiveModelDep) -> ModelOut:
    return ModelOut(
        version=live.version,
        alias=holder.alias,
        loaded_at=live.loaded_at,
        swaps=holder.swaps,
        refused=holder.refused,
        last_error=holder.last_error,
        metadata=live.metadata,
    )


@router.get("/healthz", response_model=Health, tags=["health"])
async def healthz(holder: HolderDep) -> Health:
    live = holder.current
    return Health(status="ok", model_version=live.version if live else None)


@router.get("/readyz", response_model=Health, tags=["health"])
async def readyz(holder: HolderDep) -> Health:
    live = holder.current
    if live is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no model loaded")
    return Health(status="ready", model_version=live.version)
