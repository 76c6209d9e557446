"""The latest drift report, as metrics: what monitor-drift found, for Prometheus and Grafana.

monitor-drift (flows/drift.py) writes each report's summary to ``reports/drift/<run>/`` and
copies it to ``reports/drift/latest.json``. Every serving replica reads that one object now
and then (``AIDETECT_DRIFT_POLL_SECONDS``; a conditional read: unchanged costs nothing) and
exports it on /metrics:

- ``aidetect_drift_detected``: 1 when the latest report found drift, else 0;
- ``aidetect_drift_severity{part}``: each part's score against its threshold, on one scale
  where 1 is the threshold and above 1 is drift: MMD / threshold for the embedding, and
  log(p) / log(threshold) for the two KS p-values (image statistics, predictions);
- ``aidetect_drift_window_end_timestamp_seconds``: the end of the window it compared, so a
  report that stops coming (the flow failing, too few predictions) shows and can alert;
- ``aidetect_drift_window_rows``: predictions in that window.

Nothing here imports the drift libraries: serving stays light.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from model.drift_scale import severity
from storage import NotFound, ObjectStore
from storage.layout import DRIFT_LATEST

log = logging.getLogger("aidetect.serving")


@dataclass(frozen=True)
class DriftReading:
    detected: bool
    model_version: str
    severity: dict[str, float]
    window_end: float  # unix seconds
    rows: int


def read_summary(summary: dict[str, Any]) -> DriftReading:
    """A monitor-drift summary -> the numbers exported; ValueError naming what is missing."""
    try:
        parts = {
            part: severity(part, float(values["score"]), float(values["threshold"]))
            for part, values in summary["parts"].items()
        }
        return DriftReading(
            detected=bool(summary["drift_detected"]),
            model_version=str(summary["model_version"]),
            severity=parts,
            window_end=datetime.fromisoformat(summary["window"]["end"]).timestamp(),
            rows=int(summary["rows"]["current"]),
        )
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"not a drift summary ({type(exc).__name__}: {exc})") from None


class DriftStatus:
    """The latest reading, refreshed from the store; read by the metrics collector."""

    def __init__(self) -> None:
        self.reading: DriftReading | None = None
        self.etag: str | None = None
        self.errors = 0

    def poll(self, store: ObjectStore) -> bool:
        """``refresh``, counting in ``errors`` whatever it raises (then raising it)."""
        try:
            return self.refresh(store)
        except Exception:
            self.errors += 1
            raise

    def refresh(self, store: ObjectStore) -> bool:
        """Read ``latest.json`` if it changed; True when the reading changed."""
        try:
            data, etag = store.get_with_etag(DRIFT_LATEST)
        except NotFound:
            return False  # no report yet: nothing exported
        if etag == self.etag:
            return False
        try:
            reading = read_summary(json.loads(data))
        except ValueError as exc:  # includes bad JSON; keep the last good reading
            self.errors += 1
            log.warning("%s: %s", DRIFT_LATEST, exc)
            self.etag = etag  # do not re-read the same bad object every poll
            return False
        self.reading, self.etag = reading, etag
        return True
