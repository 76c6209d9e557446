"""The feedback record: what a user claimed about an image, and what the model had said."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from storage.layout import utcnow

Label = Literal["ai", "real"]


class FeedbackRecord(BaseModel):
    id: str = Field("", description="<yyyymmdd><12 hex>: the date locates the record in the store")
    image_sha256: str
    image_key: str
    claimed_label: Label
    prediction_id: str | None = None
    predicted_label: str | None = None
    predicted_score: float | None = None
    model_version: str | None = None
    client: str = Field(description="hashed client fingerprint, never the raw address")
    note: str | None = Field(None, max_length=2000)
    generator: str | None = Field(None, max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
    # As submitted; what is believed (quarantined, accepted, rejected) comes from feedback.policy.
    status: Literal["new", "quarantined", "accepted", "rejected"] = "quarantined"

    @model_validator(mode="after")
    def _dated_id(self) -> FeedbackRecord:
        if not self.id:
            self.id = f"{self.created_at:%Y%m%d}{secrets.token_hex(6)}"
        return self

    @property
    def misclassified(self) -> bool:
        """The model said the other class (a missing prediction counts as a miss)."""
        return self.predicted_label != self.claimed_label


def hash_client(raw: str, salt: str = "aidetect") -> str:
    """A stable, non-reversible fingerprint of a client (address, user agent...)."""
    return hashlib.sha256(f"{salt}:{raw}".encode()).hexdigest()[:16]
