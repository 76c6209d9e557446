"""Feedback in the object store: the image content-addressed, the record as JSON.

``feedback/<yyyy>/<mm>/<dd>/<id>.json`` holds a record (ids start with their date, so a record
is found from its id alone); ``feedback-index/<image sha256>/<id>`` (empty) lists the reports of
one image, so a report's status does not need a scan of all feedback.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from datetime import datetime

from feedback.records import FeedbackRecord
from storage import NotFound, ObjectStore, PreconditionFailed
from storage.layout import FEEDBACK, feedback_index_key, feedback_index_prefix, feedback_key

_DATED_ID = re.compile(r"(\d{8})[0-9a-f]{12}")


def save_feedback(store: ObjectStore, record: FeedbackRecord) -> str:
    """Write one record (its image must already be stored), create-only; returns its key.

    Idempotent: saving a record that is already there (a retried outbox flush) is a no-op.
    """
    key = feedback_key(record.created_at, record.id)
    with contextlib.suppress(PreconditionFailed):
        store.put(key, record.model_dump_json(indent=2).encode(), if_none_match=True)
    with contextlib.suppress(PreconditionFailed):
        store.put(feedback_index_key(record.image_sha256, record.id), b"", if_none_match=True)
    return key


def is_feedback_id(text: str) -> bool:
    return _DATED_ID.fullmatch(text) is not None


def key_for_id(feedback_id: str) -> str | None:
    match = _DATED_ID.fullmatch(feedback_id)
    if not match:
        return None
    try:
        day = datetime.strptime(match.group(1), "%Y%m%d")
    except ValueError:
        return None
    return feedback_key(day, feedback_id)


def get_feedback(store: ObjectStore, feedback_id: str) -> FeedbackRecord | None:
    key = key_for_id(feedback_id)
    if key is None:
        return None
    try:
        return FeedbackRecord.model_validate_json(store.get(key))
    except NotFound:
        return None


def reports_of_image(store: ObjectStore, sha256: str) -> list[FeedbackRecord]:
    """Every report about one image (from the index)."""
    records = []
    for key in store.list(feedback_index_prefix(sha256)):
        record = get_feedback(store, key.rsplit("/", 1)[1])
        if record is not None:
            records.append(record)
    return records


def iter_feedback(store: ObjectStore) -> Iterator[FeedbackRecord]:
    """Every feedback record, oldest first."""
    for key in store.list(FEEDBACK):
        if key.endswith(".json"):
            yield FeedbackRecord.model_validate_json(store.get(key))
