"""Predictions: ``POST /v1/predict`` (one image) and ``POST /v1/predict/batch`` (several)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, HTTPException, Request, Response, UploadFile, status

from serving.deps import LiveModelDep, StateDep, browser
from serving.errors import PROBLEM
from serving.hotswap import LiveModel
from serving.recent import RecentPrediction
from serving.schemas import BatchItemError, BatchOut, PredictionOut
from serving.shared import remember
from serving.state import ServingState, now
from serving.uploads import BadUpload, infer, read_upload, rejected
from storage.layout import image_extension, new_prediction_id
from storage.predictions import PredictionRecord

router = APIRouter(prefix="/v1/predict", tags=["predict"])


async def _predict_one(
    state: ServingState, live: LiveModel, file: UploadFile, browser_id: str | None = None
) -> PredictionOut:
    started = time.perf_counter()
    data = await read_upload(file, state.settings.max_upload_bytes)
    image, pixels, raw, embedding = await infer(state, live, data)
    label, probability = live.verdict(raw)
    latency_ms = (time.perf_counter() - started) * 1000
    created_at = now()
    prediction_id = new_prediction_id(created_at)
    ext = image_extension(image.format)
    state.metrics.predictions.labels(label).inc()
    record = PredictionRecord(
        id=prediction_id,
        created_at=created_at,
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
    known = RecentPrediction(
        prediction_id, data, ext, label, probability, live.version, created_at.timestamp(), file.filename
    )
    await remember(state, known, browser_id)  # before answering: the next request may reach another replica
    return PredictionOut(
        id=prediction_id,
        label=label,
        probability=probability,
        model_version=live.version,
        latency_ms=latency_ms,
    )


@router.post("", response_model=PredictionOut, responses={400: PROBLEM, 413: PROBLEM, 503: PROBLEM})
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
        return await _predict_one(state, live, file, browser(request, response))
    except BadUpload as exc:
        raise rejected(state, exc) from None


@router.post("/batch", response_model=BatchOut, responses={400: PROBLEM, 503: PROBLEM})
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
            rejected(state, outcome)
            results.append(BatchItemError(filename=file.filename, status=outcome.status_code, error=str(outcome)))
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            results.append(outcome)
    return BatchOut(model_version=live.version, results=results, latency_ms=(time.perf_counter() - started) * 1000)
