"""Where things live in the object store (see design.md, "Object store layout")."""

from __future__ import annotations

import hashlib
import re
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
# Short-lived, so that any serving replica answers for a prediction another one made. Both are
# deleted AIDETECT_RECENT_RETENTION_HOURS after the prediction (serving.shared sweeps; in
# production an S3 lifecycle rule on these two prefixes does the same). A prediction id starts
# with its creation time, so these keys carry their time and list oldest first.
RECENT = "recent/"  # recent/<prediction id>/: prediction.json, image.<ext>, heatmap-<model version>.png
HISTORY = "history/"  # history/<sha256 of the browser cookie>/<prediction id>.json: a browser's past predictions

_PREDICTION_ID = re.compile(r"[0-9a-f]{11}[0-9a-f]{16}")  # creation time (ms, hex) + 64 random bits
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_PLOT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\.(png|svg)")  # a model version's plot (flows.validate.make_plots)
_REPORT_ID = re.compile(r"\d{8}T\d{12}Z-[0-9a-f]{6}")  # new_version_id's shape: a drift report's folder
PLOTS = "plots"  # models/<version>/plots/<name>: the pictures a version was judged by, registered with it
# what a drift report's folder holds: Evidently's page, the flow's summary, the flow's picture
DRIFT_REPORT_HTML, DRIFT_SUMMARY, DRIFT_PLOT = DRIFT_REPORT_FILES = ("report.html", "summary.json", "drift.png")

_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_version_id(now: datetime | None = None) -> str:
    """A time-sortable, collision-resistant id: ``20261125T123456123456Z-1a2b3c``."""
    now = now or utcnow()
    return f"{now:%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"


def new_prediction_id(now: datetime | None = None) -> str:
    """A prediction's id: its creation time in milliseconds (11 hex digits, so ids sort by time)
    and 64 random bits (the id is what lets a client fetch its image back)."""
    now = now or utcnow()
    return f"{int(now.timestamp() * 1000):011x}{secrets.token_hex(8)}"


def is_prediction_id(value: str) -> bool:
    """Whether ``value`` is an id ``new_prediction_id`` makes (the only ids that go into a key)."""
    return _PREDICTION_ID.fullmatch(value) is not None


def prediction_id_time(prediction_id: str) -> datetime:
    """When the prediction was made; ValueError for anything but a prediction id."""
    if not is_prediction_id(prediction_id):
        raise ValueError(f"not a prediction id: {prediction_id!r}")
    return datetime.fromtimestamp(int(prediction_id[:11], 16) / 1000, UTC)


def _checked_id(prediction_id: str) -> str:
    if not is_prediction_id(prediction_id):
        raise ValueError(f"not a prediction id: {prediction_id!r}")
    return prediction_id


def recent_prefix(prediction_id: str) -> str:
    return f"{RECENT}{_checked_id(prediction_id)}/"


def recent_record_key(prediction_id: str) -> str:
    return f"{recent_prefix(prediction_id)}prediction.json"


def recent_image_key(prediction_id: str, ext: str) -> str:
    if ext not in (*_EXTENSIONS.values(), "bin"):
        raise ValueError(f"not an image extension: {ext!r}")
    return f"{recent_prefix(prediction_id)}image.{ext}"


def recent_heatmap_key(prediction_id: str, model_version: str) -> str:
    if _VERSION.fullmatch(model_version) is None:
        raise ValueError(f"not a model version: {model_version!r}")
    return f"{recent_prefix(prediction_id)}heatmap-{model_version}.png"


def history_prefix(browser: str) -> str:
    """A browser's history, under the sha256 of its cookie (the cookie itself is never stored)."""
    return f"{HISTORY}{hashlib.sha256(browser.encode()).hexdigest()}/"


def history_key(browser: str, prediction_id: str) -> str:
    return f"{history_prefix(browser)}{_checked_id(prediction_id)}.json"


def parse_short_lived_key(key: str) -> str:
    """The prediction id a ``recent/`` or ``history/`` key belongs to; ValueError for any other key."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] + "/" == RECENT:
        return _checked_id(parts[1])
    if len(parts) == 3 and parts[0] + "/" == HISTORY and parts[2].endswith(".json"):
        return _checked_id(parts[2][: -len(".json")])
    raise ValueError(f"not a recent/ or history/ key: {key!r}")


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


def is_model_version(value: str) -> bool:
    """Whether ``value`` has a model version's shape (a safe single key part)."""
    return _VERSION.fullmatch(value) is not None


def is_plot_name(value: str) -> bool:
    """Whether ``value`` is a plot file name a version may hold (``roc.png``: lower case, PNG or SVG)."""
    return _PLOT_NAME.fullmatch(value) is not None


def model_plot_file(name: str) -> str:
    """A plot's file name within its version (``plots/<name>``, as ``ModelCard.files`` lists it)."""
    if not is_plot_name(name):
        raise ValueError(f"not a plot name: {name!r}")
    return f"{PLOTS}/{name}"


def model_plot_key(version: str, name: str) -> str:
    """``models/<version>/plots/<name>``."""
    if not is_model_version(version):
        raise ValueError(f"not a model version: {version!r}")
    return model_prefix(version) + model_plot_file(name)


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


def is_report_id(value: str) -> bool:
    """Whether ``value`` is a drift report's id (``new_version_id``'s shape)."""
    return _REPORT_ID.fullmatch(value) is not None


def drift_report_prefix(report_id: str) -> str:
    """``reports/drift/<report_id>/``: one drift report (``DRIFT_REPORT_FILES``)."""
    if not is_report_id(report_id):
        raise ValueError(f"not a drift report id: {report_id!r}")
    return f"{DRIFT_REPORTS}{report_id}/"


def drift_report_key(report_id: str, name: str) -> str:
    """``reports/drift/<report_id>/<name>``, ``name`` one of ``DRIFT_REPORT_FILES``."""
    if name not in DRIFT_REPORT_FILES:
        raise ValueError(f"a drift report holds {', '.join(DRIFT_REPORT_FILES)}, not {name!r}")
    return drift_report_prefix(report_id) + name


def parse_drift_report_key(key: str) -> tuple[str, str]:
    """(report id, file name) of a ``drift_report_key``; ValueError for any other key."""
    parts = key[len(DRIFT_REPORTS) :].split("/") if key.startswith(DRIFT_REPORTS) else []
    if len(parts) != 2 or not is_report_id(parts[0]) or parts[1] not in DRIFT_REPORT_FILES:
        raise ValueError(f"not a drift report key: {key!r}")
    return parts[0], parts[1]
