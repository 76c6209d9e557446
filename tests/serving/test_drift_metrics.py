"""/metrics carries the latest drift report, read from the store as monitor-drift leaves it."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model.drift_scale import severity
from serving.app import create_app
from serving.drift_status import read_summary
from storage import LocalStore
from storage.layout import DRIFT_LATEST
from tests.serving.test_hardening import settings_for

# summary.json of a real monitor-drift run (tests/flows/test_drift.py: 100 new-generator images
# against a CIFAKE reference, tiny model), kept as the flow writes it
SUMMARY = json.loads((Path(__file__).parent / "data" / "drift-summary.json").read_text())


def gauge(metrics: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{name}{re.escape(labels)} (\S+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else None


def wait_for(client: TestClient, name: str, labels: str = "", timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = client.get("/metrics").text
        if gauge(metrics, name, labels) is not None:
            return metrics
        time.sleep(0.05)
    raise AssertionError(f"{name}{labels} never appeared on /metrics")


def test_severity_is_one_at_the_threshold_and_above_one_for_drift() -> None:
    assert severity("embedding", 0.02, 0.01) == pytest.approx(2.0)
    assert severity("embedding", 0.005, 0.01) == pytest.approx(0.5)
    assert severity("prediction", 1e-3, 1e-3) == pytest.approx(1.0)
    assert severity("image_stats", 1e-6, 1e-3) == pytest.approx(2.0)  # smaller p: more drift
    assert severity("image_stats", 0.5, 1e-3) < 1
    assert math.isfinite(severity("image_stats", 0.0, 1e-3))  # a p-value that underflowed


def test_the_recorded_summary_reads_as_drift_in_the_parts_that_drifted() -> None:
    reading = read_summary(SUMMARY)
    assert reading.detected and SUMMARY["drift_detected"]
    assert {p for p, v in reading.severity.items() if v > 1} == set(SUMMARY["drifted_parts"])
    with pytest.raises(ValueError, match="not a drift summary.*parts"):
        read_summary({k: v for k, v in SUMMARY.items() if k != "parts"})


def test_metrics_follow_the_latest_drift_report(tmp_path: Path, mean_store: tuple[LocalStore, str]) -> None:
    store, _ = mean_store
    settings = settings_for(tmp_path, store, alias_poll_seconds=3600, drift_poll_seconds=0.05)
    with TestClient(create_app(settings)) as client:
        metrics = client.get("/metrics").text  # no report yet: nothing claimed
        assert gauge(metrics, "aidetect_drift_detected", f'{{model_version="{SUMMARY["model_version"]}"}}') is None
        assert gauge(metrics, "aidetect_drift_read_errors_total") == 0

        store.put(DRIFT_LATEST, json.dumps(SUMMARY).encode())
        labels = f'{{model_version="{SUMMARY["model_version"]}"}}'
        metrics = wait_for(client, "aidetect_drift_detected", labels)
        assert gauge(metrics, "aidetect_drift_detected", labels) == 1
        for part in ("image_stats", "embedding", "prediction"):
            value = gauge(metrics, "aidetect_drift_severity", f'{{part="{part}"}}')
            assert value is not None and (value > 1) == (part in SUMMARY["drifted_parts"]), (part, value)
        assert gauge(metrics, "aidetect_drift_window_rows") == SUMMARY["rows"]["current"]
        end = gauge(metrics, "aidetect_drift_window_end_timestamp_seconds")
        assert end is not None and abs(end - read_summary(SUMMARY).window_end) < 1e-3

        # the next report: no drift
        quiet = json.loads(json.dumps(SUMMARY))
        quiet.update(drift_detected=False, drifted_parts=[], model_version="v2")
        for part in quiet["parts"].values():
            part["score"] = part["threshold"] * (0.5 if part.get("method") == "mmd" else 2)
        store.put(DRIFT_LATEST, json.dumps(quiet).encode())
        metrics = wait_for(client, "aidetect_drift_detected", '{model_version="v2"}')
        assert gauge(metrics, "aidetect_drift_detected", '{model_version="v2"}') == 0
        assert all(
            gauge(metrics, "aidetect_drift_severity", f'{{part="{p}"}}') < 1  # type: ignore[operator]
            for p in ("image_stats", "embedding", "prediction")
        )

        # a broken file: counted, and the last good reading stays
        store.put(DRIFT_LATEST, b"{not json")
        deadline = time.monotonic() + 10
        while gauge(client.get("/metrics").text, "aidetect_drift_read_errors_total") != 1:
            assert time.monotonic() < deadline, "the unreadable report was not counted"
            time.sleep(0.05)
        time.sleep(0.3)  # several polls of the same bad object: counted once
        metrics = client.get("/metrics").text
        assert gauge(metrics, "aidetect_drift_read_errors_total") == 1
        assert gauge(metrics, "aidetect_drift_detected", '{model_version="v2"}') == 0
