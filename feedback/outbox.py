"""The local outbox: feedback accepted while the object store is down, sent when it is back.

Each report is two files in a local folder: ``<id>.img`` (the image) and ``<id>.json`` (the
record and the image's extension), each written to a temporary name and renamed; the JSON,
written last, is the commit point. ``flush`` sends the oldest first with ``feedback.submit.persist``: the
image (content-addressed, so a resend overwrites nothing) and then the record with a create-only
put (a resend after a crash is a no-op), and deletes the files only after both succeeded.
Each report reaches the store exactly once.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from feedback.records import FeedbackRecord
from feedback.store import is_feedback_id
from feedback.submit import persist
from storage import ObjectStore, StoreError

log = logging.getLogger("aidetect.feedback")


class Outbox:
    """Reports waiting in a local folder for the store (see ``feedback.submit``)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def put(self, record: FeedbackRecord, image: bytes, ext: str) -> None:
        _write(self.folder / f"{record.id}.img", image)
        _write(
            self.folder / f"{record.id}.json",
            json.dumps({"ext": ext, "record": record.model_dump(mode="json")}).encode(),
        )

    def get(self, feedback_id: str) -> FeedbackRecord | None:
        if not is_feedback_id(feedback_id):  # ids come from URLs: never build a path from anything else
            return None
        path = self.folder / f"{feedback_id}.json"
        try:
            return FeedbackRecord.model_validate(json.loads(path.read_text())["record"])
        except (OSError, ValueError, KeyError):
            return None

    def pending(self) -> int:
        return sum(1 for _ in self.folder.glob("*.json"))

    def flush(self, store: ObjectStore) -> int:
        """Send what waits, oldest first; stops at the first store error. Returns reports sent."""
        sent = 0
        with self._lock:
            entries = sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
            for entry in entries:
                try:
                    body = json.loads(entry.read_text())
                    record = FeedbackRecord.model_validate(body["record"])
                    image = (self.folder / f"{record.id}.img").read_bytes()
                except (OSError, ValueError, KeyError) as exc:  # never delete what cannot be read
                    log.error("outbox entry %s unreadable, left in place: %s", entry.name, exc)
                    continue
                try:
                    persist(store, record, image, body["ext"])
                except StoreError as exc:
                    log.warning("feedback outbox: store still unavailable (%s); %d waiting", exc, self.pending())
                    break
                entry.unlink()
                (self.folder / f"{record.id}.img").unlink(missing_ok=True)
                sent += 1
        if sent:
            log.info("feedback outbox: sent %d report(s)", sent)
        return sent


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)
