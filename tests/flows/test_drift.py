"""monitor-drift against a real Prefect API: the report, the artifact, the event, and the quiet paths."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.card import ModelCard
from model.drift import reference_rows
from model.registry import ONNX_FILE, Registry
from serving.drift_status import read_summary
from storage import LocalStore
from storage.layout import DRIFT_LATEST, DRIFT_REPORTS, utcnow
from tests.conftest import Trained

REFERENCE_IMAGES = 300


def images(folder: Path, per_class: int | None = None) -> list[bytes]:
    return [path.read_bytes() for label in ("ai", "real") for path in sorted(folder.glob(f"{label}/*.jpg"))[:per_class]]


@pytest.fixture(scope="module")
def reference_files(trained_tiny: Trained, cifake_folder: Path) -> dict[str, bytes]:
    from model.drift import build_reference_files

    return build_reference_files(trained_tiny.onnx_path, images(cifake_folder, REFERENCE_IMAGES // 2))


def serve(store: LocalStore, version: str, rows: list[dict[str, Any]], minutes_ago: int, batch: str) -> None:
    """Log ``rows`` as serving would: one prediction-log file in the hour of ``minutes_ago``."""
    from storage.layout import prediction_log_key
    from storage.predictions import PredictionRecord, encode

    when = utcnow() - timedelta(minutes=minutes_ago)
    records = [
        PredictionRecord(
            **{
                **row,
                "id": f"{batch}-{i}",
                "created_at": when + timedelta(seconds=i),
                "model_version": version,
                "variant": "fp32",
                "latency_ms": 5.0,
                "embedding": np.asarray(row["embedding"], np.float16).tolist(),
            }
        )
        for i, row in enumerate(rows)
    ]
    store.put(prediction_log_key(when, batch), encode(records))


def register(store: LocalStore, trained: Trained, files: dict[str, bytes]) -> str:
    registry = Registry(store)
    version = registry.register({ONNX_FILE: trained.onnx_path, **files}, ModelCard(input_size=32))
    registry.promote(version, reason="test")
    return version


def drift_events(version: str, timeout: float = 30.0) -> list[Any]:
    """The ``aidetect.drift.detected`` events about ``version`` the API has stored (they arrive asynchronously)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    event_filter = EventFilter(
        event=EventNameFilter(name=["aidetect.drift.detected"]),
        resource=EventResourceFilter(id=[f"aidetect.model.{version}"]),
    )
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            events = client.read_events(filter=event_filter, limit=10).events
            if events or time.monotonic() > deadline:
                return list(events)
            time.sleep(0.5)


def artifact_markdown(key: str) -> str:
    """The newest artifact under ``key``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    return str(found[0].data) if found else ""


def test_drift_is_reported_and_announced(
    tmp_path: Path,
    prefect_api: None,
    trained_tiny: Trained,
    newgen_folder: Path,
    reference_files: dict[str, bytes],
) -> None:
    from flows.drift import monitor_drift

    store = LocalStore(tmp_path / "store")
    version = register(store, trained_tiny, reference_files)
    newgen = reference_rows(trained_tiny.onnx_path, images(newgen_folder)).to_dict("records")
    serve(store, version, newgen[:50], minutes_ago=30, batch="now")
    serve(store, version, newgen[50:], minutes_ago=90, batch="earlier")  # the hour before
    serve(store, "another-version", newgen, minutes_ago=20, batch="other")  # not this model's
    serve(store, version, newgen, minutes_ago=60 * 30, batch="old")  # before the window

    summary = monitor_drift(store_url=str(store.root), min_rows=50)

    assert summary["status"] == "drift" and summary["drift_detected"]
    assert summary["model_version"] == version
    assert summary["rows"]["current"] == 100 and summary["rows"]["reference"] == REFERENCE_IMAGES
    keys = list(store.list(DRIFT_REPORTS))
    assert [key.rsplit("/", 1)[1] for key in keys] == ["drift.png", "report.html", "summary.json", "latest.json"]
    assert summary["plot"] == keys[0] and summary["report"] == keys[1] and keys[3] == DRIFT_LATEST
    assert json.loads(store.get(keys[2])) == json.loads(store.get(DRIFT_LATEST)) == summary
    assert store.get(keys[0]).startswith(b"\x89PNG")

    # what serving exports from it: severity above 1 exactly for the parts that drifted
    reading = read_summary(json.loads(store.get(DRIFT_LATEST)))
    assert reading.detected and reading.model_version == version and reading.rows == 100
    assert {part for part, value in reading.severity.items() if value > 1} == set(summary["drifted_parts"])
    assert set(reading.severity) == {"image_stats", "embedding", "prediction"}
    html = store.get(keys[1]).decode()
    assert html.lstrip().startswith("<!DOCTYPE html>") and "Dataset Drift is detected" in html

    markdown = artifact_markdown("monitor-drift")
    assert f"`{version}` (production): drift" in markdown and summary["report"] in markdown
    assert "AIDETECT_PUBLIC_URL" in markdown  # no address for serving: the artifact says so

    events = drift_events(version)
    assert len(events) == 1
    event = events[0]
    assert event.resource["aidetect.alias"] == "production"
    assert event.payload["report"] == summary["report"]
    assert "image_stats" in event.payload["drifted_parts"]


def test_too_few_predictions_write_no_report(
    tmp_path: Path, prefect_api: None, trained_tiny: Trained, newgen_folder: Path, reference_files: dict[str, bytes]
) -> None:
    from flows.drift import monitor_drift

    store = LocalStore(tmp_path / "store")
    version = register(store, trained_tiny, reference_files)
    rows = reference_rows(trained_tiny.onnx_path, images(newgen_folder, 10)).to_dict("records")
    serve(store, version, rows, minutes_ago=10, batch="few")

    summary = monitor_drift(store_url=str(store.root), min_rows=50)

    assert summary["status"] == "insufficient data" and not summary["drift_detected"]
    assert summary["rows"] == {"current": 20}
    assert list(store.list(DRIFT_REPORTS)) == []
    assert "insufficient data" in artifact_markdown("monitor-drift")
    assert drift_events(version, timeout=1.0) == []


def test_a_version_without_reference_is_refused(tmp_path: Path, prefect_api: None, trained_tiny: Trained) -> None:
    from flows.drift import MissingReference, monitor_drift

    store = LocalStore(tmp_path / "store")
    version = register(store, trained_tiny, {})
    with pytest.raises(MissingReference, match=version):
        monitor_drift(store_url=str(store.root))
