"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class PredictionOut(BaseModel):
    id: str
    label: Literal["ai", "real", "uncertain"]
    probability: float = Field(description="P(image is AI-generated)")
    model_version: str
    latency_ms: float


class FeedbackOut(BaseModel):
    id: str
    status: str
    claimed_label: Literal["ai", "real"]
    predicted_label: str | None
    model_version: str | None
    misclassified: bool


class ModelOut(BaseModel):
    version: str
    alias: str
    loaded_at: float
    swaps: int
    refused: int
    last_error: str | None
    metadata: dict[str, Any]


class Health(BaseModel):
    status: str
    model_version: str | None
