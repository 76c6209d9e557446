"""The prediction log: every prediction, written to the object store in batches.

``add`` only appends to a buffer (no I/O on the request path). A background task writes the
buffer as one Parquet file under ``predictions/<yyyy>/<mm>/<dd>/<hh>/<batch>.parquet`` every
few seconds or when it is full. If the store refuses, the file goes to a local spool folder
(written atomically) and is sent later, oldest first; a create-only put makes the resend
idempotent, so nothing is lost and nothing is written twice. Drift monitoring reads these
files.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage import ObjectStore, PreconditionFailed, StoreError
from storage.layout import PREDICTIONS, new_version_id

log = logging.getLogger("aidetect.serving")

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("model_version", pa.string()),
        ("variant", pa.string()),
        ("probability", pa.float32()),
        ("raw_score", pa.float32()),
        ("label", pa.string()),
        ("latency_ms", pa.float32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("bytes", pa.int64()),
        ("brightness", pa.float32()),
        ("contrast", pa.float32()),
        ("saturation", pa.float32()),
        ("sharpness", pa.float32()),
        ("jpeg_quality", pa.float32()),
        ("image_sha256", pa.string()),
        ("embedding", pa.list_(pa.float16())),
        ("shadow_version", pa.string()),
        ("shadow_probability", pa.float32()),
        ("shadow_label", pa.string()),
    ]
)


MAX_BUFFERED = 200_000  # records in memory at most (about 1 GB with 768-d embeddings)


def _rows(path: Path) -> int:
    try:
        return int(pq.read_metadata(path).num_rows)
    except Exception:
        return 0


def prediction_log_key(when: datetime, batch_id: str) -> str:
    return f"{PREDICTIONS}{when:%Y/%m/%d/%H}/{batch_id}.parquet"


def encode(records: list[dict[str, Any]]) -> bytes:
    columns = {name: [r.get(name) for r in records] for name in SCHEMA.names}
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns, schema=SCHEMA), buffer, compression="zstd")
    return buffer.getvalue()


class PredictionLog:
    def __init__(self, store: ObjectStore, spool_dir: Path, *, flush_seconds: float = 5.0, batch_size: int = 1000):
        self.store = store
        self.spool_dir = spool_dir
        self.flush_seconds = flush_seconds
        self.batch_size = batch_size
        self.written_records = 0
        self.spooled_records = 0
        self.write_errors = 0
        self.dropped_records = 0
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._full = asyncio.Event()
        spool_dir.mkdir(parents=True, exist_ok=True)

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            if len(self._buffer) >= MAX_BUFFERED:  # the disk refuses even the spool: shed, and count it
                self.dropped_records += 1
                return
            self._buffer.append(record)
            full = len(self._buffer) >= self.batch_size
        if full:
            self._full.set()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def spooled_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob("*.parquet"))

    def flush(self) -> int:
        """Write the buffer (to the store, else to the spool) and resend the spool. Returns records written."""
        with self._flush_lock:
            with self._lock:
                records, self._buffer = self._buffer, []
            for start in range(0, len(records), self.batch_size):
                chunk = records[start : start + self.batch_size]
                when = chunk[0].get("created_at") or datetime.now(UTC)
                batch_id = new_version_id()
                name = prediction_log_key(when, batch_id)[len(PREDICTIONS) :].replace("/", "_")
                try:
                    data = encode(chunk)
                except Exception:  # a record that does not fit the schema: a bug; keep the others flowing
                    log.exception("prediction log: %d records could not be encoded and were dropped", len(chunk))
                    self.dropped_records += len(chunk)
                    continue
                try:
                    self._spool(name, data)
                except OSError:  # cannot even spool (disk full?): keep the records for the next try
                    with self._lock:
                        self._buffer = records[start:] + self._buffer
                    raise
            return self._drain()

    def _spool(self, name: str, data: bytes) -> None:
        """Every batch passes through the spool: written there atomically, then sent."""
        tmp = self.spool_dir / (name + ".part")
        tmp.write_bytes(data)
        tmp.replace(self.spool_dir / name)

    def _drain(self) -> int:
        sent = 0
        for path in self.spooled_files():
            try:
                yyyy, mm, dd, hh, batch_id = path.name.split("_", 4)
                key = f"{PREDICTIONS}{yyyy}/{mm}/{dd}/{hh}/{batch_id}"
                data = path.read_bytes()
                rows = pq.read_metadata(io.BytesIO(data)).num_rows
            except Exception as exc:  # set it aside rather than block every file behind it
                log.error("prediction log: spool file %s unreadable (%s), moved to bad/", path.name, exc)
                (self.spool_dir / "bad").mkdir(exist_ok=True)
                path.replace(self.spool_dir / "bad" / path.name)
                continue
            try:
                self.store.put(key, data, if_none_match=True)
            except PreconditionFailed:
                pass  # sent before, we crashed before deleting the spool file
            except StoreError as exc:
                self.write_errors += 1
                log.warning(
                    "prediction log: store unavailable (%s); %d file(s) spooled", exc, len(self.spooled_files())
                )
                break
            path.unlink()
            sent += rows
        self.written_records += sent
        self.spooled_records = sum(_rows(p) for p in self.spooled_files())
        return sent

    async def run(self) -> None:
        """Flush every ``flush_seconds`` or as soon as the buffer is full (a background task)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.flush_seconds)
            self._full.clear()
            try:
                await asyncio.to_thread(self.flush)
            except Exception:  # a full disk, say: keep the task alive, the buffer is retried
                log.exception("prediction log flush failed")
