"""Where things live in the object store (see design.md, "Object store layout")."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

from storage.base import ObjectStore

IMAGES = "images/"
DATASETS = "datasets/"
FEEDBACK = "feedback/"
FEEDBACK_INDEX = "feedback-index/"  # feedback-index/<image sha256>/<feedback id> (empty): the reports of an image
FEEDBACK_REVIEWS = "feedback-reviews/"  # feedback-reviews/<feedback id>/<time>.json: append-only decisions
PREDICTIONS = "predictions/"
MODELS = "models/"
ALIASES = "registry/aliases/"
EVENTS = "registry/events/"
DRIFT_REPORTS = "reports/drift/"
DRIFT_LATEST = DRIFT_REPORTS + "latest.json"  # a copy of the newest summary.json (serving exports it)
LOCKS = "locks/"  # leases that keep one run of a flow at a time (locks/<name>.json)
FEATURES = "features/"  # features/<extractor>/<shard>.npz: frozen-backbone tile features by image (model.multiscale)
TRAINING = "training/"  # training/<run>/: a train-model run's output for the retrain that asked for it

_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_version_id(now: datetime | None = None) -> str:
    """A time-sortable, collision-resistant id: ``20261125T123456123456Z-1a2b3c``."""
    now = now or utcnow()
    return f"{now:%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"


def image_extension(pil_format: str | None) -> str:
    return _EXTENSIONS.get((pil_format or "").upper(), "bin")


def image_key(sha256: str, ext: str) -> str:
    return f"{IMAGES}{sha256}.{ext}"


def put_image(store: ObjectStore, data: bytes, ext: str) -> tuple[str, str]:
    """Store image bytes content-addressed; returns (sha256, key). Idempotent."""
    sha = hashlib.sha256(data).hexdigest()
    key = image_key(sha, ext)
    if not store.exists(key):
        store.put(key, data)
    return sha, key


def dataset_prefix(name: str, version: str) -> str:
    return f"{DATASETS}{name}/{version}/"


def feedback_key(created_at: datetime, feedback_id: str) -> str:
    return f"{FEEDBACK}{created_at:%Y/%m/%d}/{feedback_id}.json"


def feedback_index_prefix(sha256: str) -> str:
    return f"{FEEDBACK_INDEX}{sha256}/"


def feedback_index_key(sha256: str, feedback_id: str) -> str:
    return f"{feedback_index_prefix(sha256)}{feedback_id}"


def review_prefix(feedback_id: str) -> str:
    return f"{FEEDBACK_REVIEWS}{feedback_id}/"


def review_key(feedback_id: str, at: datetime) -> str:
    return f"{review_prefix(feedback_id)}{at:%Y%m%dT%H%M%S%fZ}.json"


def prediction_log_hour_prefix(hour: datetime) -> str:
    """``predictions/<yyyy>/<mm>/<dd>/<hh>/``: the files of batches that began in that hour (UTC)."""
    return f"{PREDICTIONS}{hour:%Y/%m/%d/%H}/"


def prediction_log_key(when: datetime, batch_id: str) -> str:
    """The file of a prediction-log batch whose first record was made at ``when``."""
    return f"{prediction_log_hour_prefix(when)}{batch_id}.parquet"


def parse_prediction_log_key(key: str) -> tuple[datetime, str]:
    """(hour, batch id) of a ``prediction_log_key``; ValueError for any other key."""
    parts = key[len(PREDICTIONS) :].split("/") if key.startswith(PREDICTIONS) else []
    if len(parts) != 5 or not parts[4].endswith(".parquet"):
        raise ValueError(f"not a prediction-log key: {key!r}")
    hour = datetime.strptime("/".join(parts[:4]), "%Y/%m/%d/%H").replace(tzinfo=UTC)
    return hour, parts[4][: -len(".parquet")]


def model_prefix(version: str) -> str:
    return f"{MODELS}{version}/"


def alias_key(alias: str) -> str:
    return f"{ALIASES}{alias}.json"


def event_key(now: datetime, event_id: str) -> str:
    return f"{EVENTS}{now:%Y%m%dT%H%M%S%fZ}-{event_id}.json"


def lock_key(name: str) -> str:
    return f"{LOCKS}{name}.json"


def training_prefix(run_id: str) -> str:
    return f"{TRAINING}{run_id}/"


def features_prefix(extractor: str) -> str:
    return f"{FEATURES}{extractor}/"


def drift_report_prefix(run_id: str) -> str:
    """``reports/drift/<run_id>/``: one drift report (``report.html``, ``summary.json``)."""
    return f"{DRIFT_REPORTS}{run_id}/"
