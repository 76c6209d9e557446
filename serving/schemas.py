"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from model.calibration import Label
from model.card import Variant


class PredictionOut(BaseModel):
    id: str
    label: Label
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


class FeedbackStatusOut(BaseModel):
    id: str
    status: Literal["queued", "quarantined", "accepted", "rejected"]
    reason: str
    claimed_label: Literal["ai", "real"]
    created_at: datetime
    dataset_versions: list[str] = Field([], description="feedback dataset versions that include it")
    model_versions: list[str] = Field([], description="model versions trained on those")


class HistoryItemOut(BaseModel):
    id: str
    label: Label
    probability: float
    model_version: str
    filename: str | None
    at: float = Field(description="unix time")
    feedback_id: str | None = Field(description="the report filed on it, if any")
    image_available: bool = Field(description="its image (thumbnail, heatmap, annotated) is still kept")


class BatchItemError(BaseModel):
    filename: str | None
    status: int = Field(description="the HTTP status this file alone would have got")
    error: str


class BatchOut(BaseModel):
    model_version: str
    results: list[PredictionOut | BatchItemError] = Field(description="one per file, in the order sent")
    latency_ms: float


class ShadowOut(BaseModel):
    alias: str
    version: str
    share: float = Field(description="share of predictions also scored by this model (never returned)")


class AdminOut(BaseModel):
    changed: bool = Field(description="a different model went live")
    version: str | None = Field(description="the version now serving here")
    alias_version: str | None = Field(None, description="where the alias points after the operation")
    last_error: str | None


class ModelOut(BaseModel):
    version: str
    variant: Variant
    alias: str
    loaded_at: float
    swaps: int
    refused: int
    last_error: str | None
    metadata: dict[str, Any] = Field(
        description="the version's model card: datasets and lineage, initial weights, gate verdict, metrics"
    )
    plots: dict[str, str] = Field(
        default_factory=dict, description="the version's plots (training curves, ROC, ...): name -> URL path"
    )
    shadow: ShadowOut | None = None


class Health(BaseModel):
    status: str
    model_version: str | None
    build: str = Field("dev", description="the code this replica runs (AIDETECT_BUILD: the image's git sha)")
