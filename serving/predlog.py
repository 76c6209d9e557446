"""The prediction log: every prediction, written to the object store in batches.

``add`` only appends to a buffer (no I/O on the request path). A background task writes the
buffer as one Parquet file under ``predictions/<yyyy>/<mm>/<dd>/<hh>/<batch>.parquet`` every
few seconds or when it is full (schema, record and key: ``storage.predictions`` and
``storage.layout``). If the store refuses, the file goes to a local spool folder (written
atomically) and is sent later, oldest first; a create-only put makes the resend idempotent, so
nothing is lost and nothing is written twice. Drift monitoring reads these files.

A process killed before its buffer was written loses nothing it answered more than one commit
interval earlier: each record also goes into the journal (``serving.journal``, local disk,
fsynced every few tens of milliseconds) when it is answered, and leaves it only once its batch
is durable in the spool. ``open`` logs again what a killed process left in the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

from serving.journal import Journal, fsync_dir
from storage import ObjectStore, PreconditionFailed, StoreError
from storage.layout import new_version_id, parse_prediction_log_key, prediction_log_key
from storage.predictions import PredictionRecord, encode

log = logging.getLogger("aidetect.serving")

MAX_BUFFERED = 200_000  # records in memory at most (about 1 GB with 768-d embeddings)


def _rows(path: Path) -> int:
    try:
        return int(pq.read_metadata(path).num_rows)
    except Exception:
        return 0


def _spool_name(key: str) -> str:
    """``predictions/2026/03/02/12/<batch>.parquet`` -> ``2026_03_02_12_<batch>.parquet``."""
    hour, batch_id = parse_prediction_log_key(key)
    return f"{hour:%Y_%m_%d_%H}_{batch_id}.parquet"


def _key_of_spool_name(name: str) -> str:
    yyyy, mm, dd, hh, rest = name.split("_", 4)
    hour = datetime(int(yyyy), int(mm), int(dd), int(hh), tzinfo=UTC)
    return prediction_log_key(hour, rest.removesuffix(".parquet"))


class PredictionLog:
    def __init__(
        self,
        store: ObjectStore,
        spool_dir: Path,
        *,
        flush_seconds: float = 5.0,
        batch_size: int = 1000,
        journal: Journal | None = None,
    ):
        self.store = store
        self.spool_dir = spool_dir
        self.flush_seconds = flush_seconds
        self.batch_size = batch_size
        self.journal = journal
        self.replayed_records = 0
        self.written_records = 0
        self.spooled_records = 0
        self.write_errors = 0
        self.dropped_records = 0
        self._buffer: list[PredictionRecord] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._full = asyncio.Event()
        spool_dir.mkdir(parents=True, exist_ok=True)

    def open(self) -> None:
        """Before serving: log again what a killed process left in the journal, start journaling."""
        if self.journal is None:
            return
        leftovers = self.journal.leftovers()
        if leftovers:
            log.warning("prediction log: %d record(s) recovered from the journal", len(leftovers))
            with self._lock:
                self._buffer = leftovers + self._buffer
            self.replayed_records += len(leftovers)
            try:
                self.flush()
            except OSError:
                log.exception("prediction log: recovered records could not be spooled yet; they stay journaled")
        self.journal.start()

    def log_again(self, records: list[PredictionRecord]) -> None:
        """Log records another (dead) replica journaled; durable in the spool when this returns (else OSError)."""
        with self._lock:
            self._buffer = records + self._buffer
        self.replayed_records += len(records)
        self.flush()

    def close(self) -> None:
        """The last flush, then the journal's last commit (what is not yet spooled stays journaled)."""
        try:
            self.flush()
        finally:
            if self.journal is not None:
                self.journal.close()

    def answered(self, record: PredictionRecord) -> None:
        """Journal ``record`` as answered, before it is completed and ``add``ed (no I/O: a list append)."""
        if self.journal is not None:
            self.journal.append(record)

    def _release(self, records: list[PredictionRecord]) -> None:
        if self.journal is not None:
            self.journal.release(r.id for r in records)

    def add(self, record: PredictionRecord) -> None:
        with self._lock:
            shed = len(self._buffer) >= MAX_BUFFERED  # the disk refuses even the spool: shed, and count it
            if shed:
                self.dropped_records += 1
            else:
                self._buffer.append(record)
            full = len(self._buffer) >= self.batch_size
        if shed:
            self._release([record])
        elif full:
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
                name = _spool_name(prediction_log_key(chunk[0].created_at, new_version_id()))
                try:
                    data = encode(chunk)
                except Exception:  # a record that does not fit the schema: a bug; keep the others flowing
                    log.exception("prediction log: %d records could not be encoded and were dropped", len(chunk))
                    self.dropped_records += len(chunk)
                    self._release(chunk)
                    continue
                try:
                    self._spool(name, data)
                except OSError:  # cannot even spool (disk full?): keep the records for the next try
                    with self._lock:
                        self._buffer = records[start:] + self._buffer
                    raise
                self._release(chunk)
            return self._drain()

    def _spool(self, name: str, data: bytes) -> None:
        """Every batch passes through the spool: written there atomically and durably, then sent."""
        tmp = self.spool_dir / (name + ".part")
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        tmp.replace(self.spool_dir / name)
        fsync_dir(self.spool_dir)  # the rename too: the journal lets these records go next

    def _drain(self) -> int:
        sent = 0
        for path in self.spooled_files():
            try:
                key = _key_of_spool_name(path.name)
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
