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


# --- review (/v1/review/*, serving.routes.review) ---

REVIEW_BATCH_MAX = 100  # most decisions in one POST /v1/review


class ReviewScoreOut(BaseModel):
    label: str | None = Field(description="the verdict: ai, real or uncertain")
    probability: float | None = Field(description="calibrated P(ai)")
    model_version: str | None


class ReviewOtherOut(BaseModel):
    id: str
    client: str = Field(description="hashed client fingerprint")
    claimed_label: Literal["ai", "real"]
    status: str
    created_at: datetime


class ReviewItemOut(BaseModel):
    id: str
    image_sha256: str
    image_url: str = Field(description="the image, behind the same reviewer token")
    claimed_label: Literal["ai", "real"]
    client: str = Field(description="hashed client fingerprint of who claimed it")
    note: str | None
    generator: str | None
    created_at: datetime
    age_seconds: float
    status: str = Field(description="quarantined, or rejected while its image's clients disagree")
    reason: str
    conflict: bool = Field(description="clients disagree about this image")
    then: ReviewScoreOut = Field(description="what the model said when the report was made")
    now: ReviewScoreOut | None = Field(description="what the live model says of the image now (none: not scored)")
    other_reports: list[ReviewOtherOut] = Field(description="the other reports of the same image")


class ReviewQueueOut(BaseModel):
    order: str = Field(description="the rule the items are ordered by")
    total: int = Field(description="reports awaiting review (the items are the first `limit` of them)")
    model_version: str | None = Field(description="the live model that scored `now`")
    items: list[ReviewItemOut]


class ReviewDecisionIn(BaseModel):
    report_id: str = Field(min_length=1, max_length=64)
    decision: Literal["accept", "reject"]
    reason: str | None = Field(None, max_length=2000, description="kept with the decision")


class ReviewIn(BaseModel):
    decisions: list[ReviewDecisionIn] = Field(min_length=1, max_length=REVIEW_BATCH_MAX)
    reviewer: str = Field(
        "web", min_length=1, max_length=64, pattern=r"^[\w.@ -]+$", description="who decides (kept with each review)"
    )


class ReviewedOut(BaseModel):
    report_id: str
    decision: Literal["accept", "reject"]
    status: str = Field(description="the report's status after the decision")


class ReviewOut(BaseModel):
    reviewer: str
    reviewed: list[ReviewedOut]
    backlog: int = Field(description="reports still awaiting review")
