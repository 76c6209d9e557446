"""The prediction journal: append, group commit, rotation, replay after a kill, and one row per id on read."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from serving.journal import Journal, decode_line, encode_line, read_segment
from serving.predlog import PredictionLog
from storage import LocalStore
from storage.predictions import PredictionRecord, encode, read_window


def _record(i: int, **fields: object) -> PredictionRecord:
    values: dict[str, object] = {
        "id": f"p{i}",
        "created_at": datetime.now(UTC),
        "model_version": "v",
        "probability": 0.25,
        "label": "real",
        "embedding": [0.5, -1.25, 2.0],
        **fields,
    }
    return PredictionRecord(**values)  # type: ignore[arg-type]


def _segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jsonl"))


def test_a_line_round_trips_the_record_as_the_log_stores_it() -> None:
    record = _record(1, width=32, brightness=0.5, embedding=[0.1, 0.2])
    back = decode_line(encode_line(record))
    assert back.created_at == record.created_at and back.width == 32 and back.shadow_version is None
    assert back.embedding == pytest.approx([0.1, 0.2], abs=1e-3)  # float16, as in the Parquet files


def test_append_is_only_in_memory_until_a_commit_writes_and_keeps_a_snapshot(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 0.05)
    record = _record(1)
    journal.append(record)
    record.width = 99  # completion goes on after the answer: the journal keeps the record as answered
    assert _segments(tmp_path) == []
    assert journal.commit() == 1 and journal.commit() == 0
    [segment] = _segments(tmp_path)
    [back] = read_segment(segment)
    assert back.id == "p1" and back.width is None
    assert journal.unreleased == 1


def test_the_writer_thread_commits_every_interval(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 0.02)
    journal.start()
    try:
        journal.append(_record(1))
        deadline = time.monotonic() + 5
        while journal.committed_records < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert journal.committed_records == 1
        [segment] = _segments(tmp_path)
        assert [r.id for r in read_segment(segment)] == ["p1"]
    finally:
        journal.close()


def test_a_segment_goes_once_all_its_records_are_released_and_rotates_when_big(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 0.05, segment_bytes=300)  # about two records a segment
    for i in range(5):
        journal.append(_record(i))
        journal.commit()
    assert len(_segments(tmp_path)) == 3  # rotated past 300 bytes
    journal.release(["p0", "p1", "p3"])
    assert len(_segments(tmp_path)) == 2  # the first (p0, p1) went; p2 keeps the second
    journal.release(["p2"])
    assert [r.id for s in _segments(tmp_path) for r in read_segment(s)] == ["p4"]
    journal.release(["p4"])
    journal.commit()  # all of the open segment is released: it is closed and deleted
    assert _segments(tmp_path) == [] and journal.unreleased == 0
    journal.append(_record(5))
    journal.close()  # a clean stop keeps only what is unreleased
    assert [r.id for s in _segments(tmp_path) for r in read_segment(s)] == ["p5"]


def test_a_released_record_not_yet_written_does_not_keep_its_segment(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 0.05)
    journal.append(_record(1))
    journal.release(["p1"])  # its batch reached the spool before the journal's commit
    journal.close()
    assert _segments(tmp_path) == []


def test_a_disk_that_refuses_a_commit_keeps_the_records_for_the_next_one(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 0.05)
    (tmp_path / "000000000000.jsonl").symlink_to("/dev/full")  # the first segment's writes: ENOSPC
    journal.append(_record(1))
    assert journal.commit() == 0 and journal.write_errors == 1 and journal.unreleased == 1
    (tmp_path / "000000000000.jsonl").unlink()  # space again
    journal.append(_record(2))
    assert journal.commit() == 2
    assert [r.id for r in read_segment(_segments(tmp_path)[0])] == ["p1", "p2"]


def test_replay_skips_a_torn_last_line_and_new_segments_follow_the_old(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 0.05)
    for i in range(3):
        journal.append(_record(i))
    journal.commit()
    [segment] = _segments(tmp_path)
    with open(segment, "ab") as file:  # killed in the middle of a write
        file.write(encode_line(_record(3))[:40])
    (tmp_path / "000000000007.jsonl").write_bytes(b"")  # an empty one, created just before the kill

    again = Journal(tmp_path, 0.05)
    leftovers = again.leftovers()
    assert [r.id for r in leftovers] == ["p0", "p1", "p2"]
    assert again.leftovers() == []  # once
    assert _segments(tmp_path) == [segment]  # the empty one is gone at once
    again.append(_record(4))
    again.commit()
    assert _segments(tmp_path)[-1].name == "000000000008.jsonl"
    again.release(["p0", "p1", "p2"])
    assert [p.name for p in _segments(tmp_path)] == ["000000000008.jsonl"]


def test_a_killed_log_loses_nothing_journaled_and_the_reader_counts_each_prediction_once(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    spool, journal_dir = tmp_path / "spool", tmp_path / "journal"
    before = datetime.now(UTC) - timedelta(seconds=1)
    killed = PredictionLog(store, spool, journal=Journal(journal_dir, 0.05))  # its commits by hand, below
    for i in range(6):
        record = _record(i)
        killed.answered(record)
        record.width, record.brightness = 32, 0.5  # completed ...
        if i < 2:
            killed.add(record)  # ... and only p0, p1 buffered before the kill
    killed.flush()  # p0, p1 in the store, and released: the commit leaves them out
    assert killed.journal is not None and killed.journal.commit() == 4
    # a crash between a batch's write and its segment's release: p1 is in the store and journaled
    killed.journal.append(_record(1))
    killed.journal.commit()  # and then SIGKILL: no close, nothing flushed

    restarted = PredictionLog(store, spool, journal=Journal(journal_dir, 0.05))
    restarted.open()
    restarted.close()
    assert restarted.replayed_records == 5 and _segments(journal_dir) == []
    window = read_window(store, before, datetime.now(UTC) + timedelta(seconds=1))
    assert sorted(window["id"]) == [f"p{i}" for i in range(6)]  # p1 logged twice, read once
    by_id = window.set_index("id")
    assert by_id.loc["p1", "width"] == 32  # the completed copy wins over the journal's
    assert pd.isna(by_id.loc["p4", "width"])  # killed before its statistics were logged: null, as the schema allows
    assert by_id.loc["p4", "probability"] == 0.25 and len(by_id.loc["p4", "embedding"]) == 3  # the answer is there


def test_the_reader_keeps_the_most_complete_then_the_latest_copy_of_an_id(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    when = datetime.now(UTC)
    hour = f"predictions/{when:%Y/%m/%d/%H}"
    store.put(f"{hour}/a.parquet", encode([_record(1, created_at=when, width=32), _record(2, created_at=when)]))
    store.put(f"{hour}/b.parquet", encode([_record(1, created_at=when), _record(2, created_at=when, label="ai")]))
    window = read_window(store, when - timedelta(seconds=1), when + timedelta(seconds=1))
    assert list(window["id"]) == ["p1", "p2"]
    assert window.iloc[0]["width"] == 32  # more fields filled
    assert window.iloc[1]["label"] == "ai"  # as complete: the later file
