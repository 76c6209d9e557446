"""The prediction log's one contract: what serving writes, the drift window reader reads back."""

from __future__ import annotations

import time
from dataclasses import fields
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model.features import image_statistics
from model.preprocess import decode_image
from model.registry import Registry
from serving.app import create_app
from storage import LocalStore
from storage.layout import parse_prediction_log_key, prediction_log_key, utcnow
from storage.predictions import REFERENCE_SCHEMA, SCHEMA, PredictionRecord, read_window
from tests.helpers import image_bytes
from tests.serving.onnx_models import mean_brightness_model
from tests.serving.test_hardening import register_onnx, settings_for


def test_a_prediction_served_is_read_back_by_the_window_reader(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    registry = Registry(store)
    version = register_onnx(registry, mean_brightness_model(tmp_path / "m.onnx"), temperature=2.0)
    registry.promote(version, reason="test")
    image = image_bytes(fmt="JPEG", seed=7)
    before = utcnow()
    with TestClient(create_app(settings_for(tmp_path, store, log_flush_seconds=0.05))) as client:
        answer = client.post("/v1/predict", files={"file": ("x.jpg", image)})
        assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 30
        while not store.list("predictions/") and time.monotonic() < deadline:
            time.sleep(0.05)
    window = read_window(store, before - timedelta(seconds=1), utcnow() + timedelta(seconds=1), version)
    assert list(window.columns) == SCHEMA.names  # the one schema, nothing more, nothing less
    assert len(window) == 1
    row = window.iloc[0]
    body = answer.json()
    assert row["id"] == body["id"] and row["model_version"] == version and row["label"] == body["label"]
    assert row["probability"] == pytest.approx(body["probability"], abs=1e-6)  # float32 in the log
    assert row["variant"] == "fp32" and row["bytes"] == len(image) and len(row["embedding"]) == 3
    for name, value in image_statistics(decode_image(image), image).items():  # filled off the request path
        assert row[name] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-5)), name
    assert read_window(store, before - timedelta(seconds=1), utcnow(), "another version").empty


def test_the_record_the_schema_and_the_reference_agree() -> None:
    assert [f.name for f in fields(PredictionRecord)] == SCHEMA.names
    for field in REFERENCE_SCHEMA:  # a drift reference's columns are prediction-log columns
        assert SCHEMA.field(field.name).type == field.type


def test_prediction_log_keys_round_trip() -> None:
    when = utcnow()
    key = prediction_log_key(when, "20261202T101500000000Z-abc123")
    hour, batch = parse_prediction_log_key(key)
    assert key.startswith(f"predictions/{when:%Y/%m/%d/%H}/")
    assert hour == when.replace(minute=0, second=0, microsecond=0) and batch == "20261202T101500000000Z-abc123"
    for bad in ("predictions/2026/12/02/batch.parquet", "models/x/metadata.json", "predictions/2026/12/02/10/x.json"):
        with pytest.raises(ValueError, match="not a prediction-log key"):
            parse_prediction_log_key(bad)
