"""The prediction journal: every answered prediction on local disk within one commit interval.

The prediction log (``serving.predlog``) writes Parquet batches every few seconds; a replica
killed in between (SIGKILL, OOM, power) would lose that buffer. So each record, as answered
(before its statistics and shadow score are filled in), also goes into an append-only segment
file (``<seq>.jsonl``, one JSON record a line): ``append`` only puts it in a list under a lock
(no I/O and no waiting on the request path), and a writer thread writes that list and fsyncs
it every ``commit_seconds`` (a group commit). A segment is deleted once every record in it has
been ``release``d, i.e. has gone into a Parquet file that is durable in the spool. At start,
the segments a killed process left behind are read back (``leftovers``; a torn last line is
skipped) and logged again. A crash between a batch reaching the spool and its segment being
deleted logs those records twice; ``storage.predictions.read_window`` keeps one of each id.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from storage.predictions import PredictionRecord

log = logging.getLogger("aidetect.serving")

SEGMENT_BYTES = 16 * 1024 * 1024  # a segment is closed beyond this (or once all of it is released)
_FIELDS = tuple(f.name for f in fields(PredictionRecord))
MAX_UNWRITTEN = 200_000  # records waiting for a disk that refuses them; beyond this the oldest lose their journal copy


def fsync_dir(path: Path) -> None:
    """Make a file's creation, rename or removal in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode_line(record: PredictionRecord) -> bytes:
    """One journal line: the record as JSON, its embedding as base64 float16 (as the log stores it)."""
    values: dict[str, Any] = {name: getattr(record, name) for name in _FIELDS}  # shallow: asdict copies lists
    values["created_at"] = record.created_at.isoformat()
    if record.embedding is not None:
        values["embedding"] = base64.b64encode(np.asarray(record.embedding, np.float16).tobytes()).decode()
    return json.dumps(values, separators=(",", ":")).encode() + b"\n"


def decode_line(line: bytes) -> PredictionRecord:
    values = json.loads(line)
    values["created_at"] = datetime.fromisoformat(values["created_at"])
    if values.get("embedding") is not None:
        values["embedding"] = np.frombuffer(base64.b64decode(values["embedding"]), np.float16).tolist()
    return PredictionRecord(**values)


def read_segment(path: Path) -> list[PredictionRecord]:
    """The records of one segment; a torn or unreadable line (the crash came mid-write) is skipped."""
    records = []
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(decode_line(line))
        except Exception as exc:  # the last line of a killed writer, or a damaged disk block
            log.warning("prediction journal: %s line %d unreadable (%s), skipped", path.name, number, exc)
    return records


@dataclass
class _Segment:
    seq: int
    path: Path
    outstanding: set[str] = field(default_factory=set)  # ids not yet released
    size: int = 0
    closed: bool = False


class Journal:
    """Append-only segments under ``folder``, group-committed by a writer thread (``start``/``close``)."""

    def __init__(self, folder: Path, commit_seconds: float = 0.05, *, segment_bytes: int = SEGMENT_BYTES):
        self.folder = folder
        self.commit_seconds = commit_seconds
        self.segment_bytes = segment_bytes
        self.committed_records = 0
        self.write_errors = 0
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._segments: dict[int, _Segment] = {}
        self._segment_of: dict[str, int] = {}
        self._unwritten: list[PredictionRecord] = []
        self._leftover = sorted(folder.glob("*.jsonl"))
        first = max((int(p.stem) for p in self._leftover), default=-1) + 1
        self._current = self._new_segment(first)
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _new_segment(self, seq: int) -> _Segment:
        segment = _Segment(seq, self.folder / f"{seq:012d}.jsonl")
        self._segments[seq] = segment
        return segment

    def append(self, record: PredictionRecord) -> None:
        """Journal ``record`` as it is now (a copy: completion goes on changing the original)."""
        snapshot = copy.copy(record)
        with self._lock:
            if len(self._unwritten) >= MAX_UNWRITTEN:
                dropped = self._unwritten.pop(0)
                self._forget(dropped.id)
            self._unwritten.append(snapshot)
            self._current.outstanding.add(record.id)
            self._segment_of[record.id] = self._current.seq

    def _forget(self, record_id: str) -> None:
        seq = self._segment_of.pop(record_id, None)
        if seq is not None:
            self._segments[seq].outstanding.discard(record_id)

    @property
    def unreleased(self) -> int:
        """Records journaled whose Parquet batch is not yet durable."""
        with self._lock:
            return len(self._segment_of)

    def leftovers(self) -> list[PredictionRecord]:
        """The records in the segments an earlier process left (once; they count as unreleased now)."""
        records = []
        with self._lock:
            for path in self._leftover:
                segment = self._new_segment(int(path.stem))
                segment.closed = True
                for record in read_segment(path):
                    if record.id in self._segment_of:  # journaled twice (a crash while it was replayed)
                        continue
                    records.append(record)
                    segment.outstanding.add(record.id)
                    self._segment_of[record.id] = segment.seq
                segment.size = path.stat().st_size
            self._leftover = []
        self._delete_released()  # empty or unreadable ones
        return records

    def release(self, record_ids: Iterable[str]) -> None:
        """These records are in a durable Parquet file: a segment all of whose records are released goes."""
        with self._lock:
            for record_id in record_ids:
                self._forget(record_id)
        self._delete_released()

    def _delete_released(self) -> None:
        with self._lock:
            done = [s for s in self._segments.values() if s.closed and not s.outstanding]
            for segment in done:
                del self._segments[segment.seq]
        for segment in done:
            segment.path.unlink(missing_ok=True)

    def commit(self) -> int:
        """Write what was appended since the last commit and fsync it; returns records committed."""
        with self._lock:
            # a record whose batch is durable already (released before this commit) need not be written
            batch = [r for r in self._unwritten if r.id in self._segment_of]
            self._unwritten = []
            segment = self._current
            # close the segment after this write if it is big, or if it is all released already
            rotate = segment.size >= self.segment_bytes or (segment.size > 0 and not batch and not segment.outstanding)
            if rotate:
                self._current = self._new_segment(segment.seq + 1)
        written = 0
        if batch:
            try:
                self._write(segment, b"".join(encode_line(r) for r in batch))
                written = len(batch)
                self.committed_records += written
            except OSError as exc:  # a full disk, say: the records wait for the next commit
                self.write_errors += 1
                log.warning("prediction journal: write failed (%s); %d record(s) wait", exc, len(batch))
                with self._lock:
                    self._unwritten = batch + self._unwritten
                    if rotate:  # the next commit writes them to the new segment: they count there
                        for record in batch:
                            self._move(record.id, self._current)
        if rotate:
            self._close_file()
            with self._lock:
                segment.closed = True
            self._delete_released()
        return written

    def _move(self, record_id: str, segment: _Segment) -> None:
        if self._segment_of.get(record_id) is not None:
            self._forget(record_id)
            segment.outstanding.add(record_id)
            self._segment_of[record_id] = segment.seq

    def _write(self, segment: _Segment, data: bytes) -> None:
        if self._fd is None:
            self._fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            fsync_dir(self.folder)
            if segment.size:  # reopened after a failed write: never glue a record to a torn line
                data = b"\n" + data
        try:
            os.write(self._fd, data)
            os.fdatasync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, segment.size)  # drop the torn part, if the disk lets us
            self._close_file()
            raise
        segment.size += len(data)

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-journal", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.commit_seconds
        while not self._stop.wait(max(0.0, deadline - time.monotonic())):
            deadline += self.commit_seconds
            try:
                self.commit()
            except Exception:  # keep journaling whatever one commit hit
                log.exception("prediction journal commit failed")
            deadline = max(deadline, time.monotonic())  # after a slow fsync, no burst of catch-up commits

    def close(self) -> None:
        """Stop the writer after a last commit; segments with unreleased records stay for the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.commit()
        with self._lock:
            self._current.closed = True
        self._close_file()
        self._delete_released()
