"""Feedback in the object store: the image content-addressed, the record as JSON."""

from __future__ import annotations

from collections.abc import Iterator

from feedback.records import FeedbackRecord
from storage import ObjectStore
from storage.layout import FEEDBACK, feedback_key


def save_feedback(store: ObjectStore, record: FeedbackRecord) -> str:
    """Write one record (its image must already be stored). Returns its key."""
    key = feedback_key(record.created_at, record.id)
    store.put(key, record.model_dump_json(indent=2).encode(), if_none_match=True)
    return key


def iter_feedback(store: ObjectStore) -> Iterator[FeedbackRecord]:
    """Every feedback record, oldest first."""
    for key in store.list(FEEDBACK):
        if key.endswith(".json"):
            yield FeedbackRecord.model_validate_json(store.get(key))
