"""The prediction log's contract: its schema, its record, its files, and the window reader.

Serving writes (``serving.predlog`` buffers ``PredictionRecord`` objects and puts each batch,
encoded here, under ``storage.layout.prediction_log_key``); drift monitoring reads a time window
back (``read_window``) and a model version's drift reference has the same columns
(``REFERENCE_SCHEMA``). Writer and reader share this one module, so they cannot disagree.
pyarrow only: serving imports it (pandas is imported by pyarrow only when a window is read).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.base import ObjectStore
from storage.layout import prediction_log_hour_prefix

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class PredictionRecord:
    """One answered prediction. Serving fills the image statistics and the shadow's answer
    off the request path, after the response has gone."""

    id: str
    created_at: datetime
    model_version: str
    variant: str | None = None
    probability: float | None = None  # calibrated P(ai), as answered
    raw_score: float | None = None
    label: str | None = None  # model.calibration.Label
    latency_ms: float | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    bytes: int | None = None
    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    sharpness: float | None = None
    jpeg_quality: float | None = None
    image_sha256: str | None = None
    embedding: list[float] | None = None  # stored as float16
    shadow_version: str | None = None
    shadow_probability: float | None = None
    shadow_label: str | None = None


_TYPES: dict[str, pa.DataType] = {
    "id": pa.string(),
    "created_at": pa.timestamp("us", tz="UTC"),
    "model_version": pa.string(),
    "variant": pa.string(),
    "probability": pa.float32(),
    "raw_score": pa.float32(),
    "label": pa.string(),
    "latency_ms": pa.float32(),
    "width": pa.int32(),
    "height": pa.int32(),
    "format": pa.string(),
    "bytes": pa.int64(),
    "brightness": pa.float32(),
    "contrast": pa.float32(),
    "saturation": pa.float32(),
    "sharpness": pa.float32(),
    "jpeg_quality": pa.float32(),
    "image_sha256": pa.string(),
    "embedding": pa.list_(pa.float16()),
    "shadow_version": pa.string(),
    "shadow_probability": pa.float32(),
    "shadow_label": pa.string(),
}
SCHEMA = pa.schema([(f.name, _TYPES[f.name]) for f in fields(PredictionRecord)])

# The numeric image statistics (model.features.image_statistics computes them, with "format").
IMAGE_STATISTICS = ("width", "height", "brightness", "contrast", "saturation", "sharpness", "jpeg_quality")
# What a model version's drift reference holds of each validation image: the image statistics
# and the answer, computed as serving computes them (model.drift.reference_rows).
REFERENCE_COLUMNS = (*IMAGE_STATISTICS, "format", "bytes", "probability", "raw_score", "label", "embedding")
REFERENCE_SCHEMA = pa.schema([SCHEMA.field(name) for name in REFERENCE_COLUMNS])


def encode(records: Sequence[PredictionRecord]) -> bytes:
    """One prediction-log file (Parquet, zstd) of ``records``."""
    columns = {name: [getattr(r, name) for r in records] for name in SCHEMA.names}
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns, schema=SCHEMA), buffer, compression="zstd")
    return buffer.getvalue()


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive one is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def read_window(store: ObjectStore, start: datetime, end: datetime, model_version: str | None = None) -> pd.DataFrame:
    """Predictions logged in ``[start, end)`` (by ``model_version`` if given), from the hourly files.

    Only the hour folders that can hold such rows are listed: a batch file sits in the hour of its
    first record, so the hour before ``start`` is read too. A prediction logged twice is read once.
    """
    start, end = as_utc(start), as_utc(end)
    hour = start.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    tables = []
    while hour < end:
        for key in sorted(k for k in store.list(prediction_log_hour_prefix(hour)) if k.endswith(".parquet")):
            tables.append(pq.read_table(io.BytesIO(store.get(key))))
        hour += timedelta(hours=1)
    if not tables:
        return SCHEMA.empty_table().to_pandas()
    table = pa.concat_tables(tables, promote_options="default")
    created = table["created_at"]
    keep: Any = pc.and_(
        pc.greater_equal(created, pa.scalar(start, created.type)), pc.less(created, pa.scalar(end, created.type))
    )
    if model_version is not None:
        keep = pc.and_(keep, pc.equal(table["model_version"], model_version))
    return _one_per_id(table.filter(keep).to_pandas())


def _one_per_id(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per prediction id: the most complete, the latest file's on a tie.

    A replica killed between writing a batch and deleting its journal segment logs those records
    again at restart (``serving.journal``), some of them without the statistics filled in later.
    """
    if not frame["id"].duplicated().any():
        return frame
    filled = frame.notna().sum(axis=1)
    ranked = frame.loc[filled.sort_values(kind="stable").index]  # files in key order, so ties keep the later
    return ranked.drop_duplicates("id", keep="last").sort_index().reset_index(drop=True)
