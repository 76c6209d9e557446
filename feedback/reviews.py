"""Reviewer decisions, append-only in the store: ``feedback-reviews/<feedback id>/<time>.json``.

The latest decision on a report wins; nothing is overwritten, so the history stays auditable.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from feedback.policy import Review
from storage import ObjectStore
from storage.layout import FEEDBACK_REVIEWS, review_key, review_prefix, utcnow


def save_review(store: ObjectStore, feedback_id: str, decision: str, reviewer: str, note: str | None = None) -> Review:
    if decision not in ("accept", "reject"):
        raise ValueError(f"a decision is accept or reject, got {decision!r}")
    now = utcnow()
    review = Review(feedback_id, decision, reviewer, now.isoformat(), note)  # type: ignore[arg-type]
    key = review_key(feedback_id, now)
    store.put(key, json.dumps(asdict(review)).encode(), if_none_match=True)
    return review


def load_reviews(store: ObjectStore, feedback_ids: list[str] | None = None) -> dict[str, Review]:
    """The latest decision per report id (of every report, or of ``feedback_ids``)."""
    latest: dict[str, Review] = {}
    prefixes = [FEEDBACK_REVIEWS] if feedback_ids is None else [review_prefix(i) for i in feedback_ids]
    keys = sorted(key for prefix in prefixes for key in store.list(prefix))
    for key in sorted(keys, key=lambda k: k.rsplit("/", 1)[1]):
        if key.endswith(".json"):
            review = Review(**json.loads(store.get(key)))
            latest[review.feedback_id] = review
    return latest
