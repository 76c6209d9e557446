"""A feedback report persisted: to the object store, or to the local outbox while the store is down.

The one place that says what a report is in the store (its image, content-addressed, then its
record; see ``persist``) and what happens when the store cannot take it: the report waits in
the replica's outbox (``feedback.outbox``), which sends it with ``persist`` when the store is back.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

from feedback.records import FeedbackRecord
from feedback.store import save_feedback
from storage import ObjectStore, StoreError
from storage.layout import put_image

if TYPE_CHECKING:
    from feedback.outbox import Outbox

log = logging.getLogger("aidetect.feedback")

Outcome = Literal["quarantined", "queued"]


class FeedbackLost(Exception):
    """Neither the store nor the local outbox could take the report."""


def persist(store: ObjectStore, record: FeedbackRecord, image: bytes, ext: str) -> None:
    """Write one report: the image (content-addressed), then the record (create-only).

    Both writes are idempotent, so a report sent twice (an outbox resend after a crash) lands once.
    """
    put_image(store, image, ext)
    save_feedback(store, record)


def submit(record: FeedbackRecord, image: bytes, ext: str, store: ObjectStore, outbox: Outbox) -> Outcome:
    """Persist a report to the store, or queue it in the outbox if the store is unavailable.

    ``quarantined``: stored (waiting for agreement or a reviewer); ``queued``: in the outbox, to be
    sent when the store is back. Raises ``FeedbackLost`` if the outbox cannot take it either.
    """
    try:
        persist(store, record, image, ext)
    except StoreError as exc:  # keep it locally and send it when the store is back
        try:
            outbox.put(record, image, ext)
        except OSError as disk:
            raise FeedbackLost(f"feedback store unavailable ({exc}) and local outbox full ({disk})") from None
        log.warning("feedback %s queued in the outbox: %s", record.id, exc)
        return "queued"
    return "quarantined"
