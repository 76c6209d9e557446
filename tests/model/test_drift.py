"""Drift detection: a new generator is caught, CIFAKE against CIFAKE is not, and the report opens.

The CIFAKE windows are images the tiny model never saw: they come from the archive past the
600 per class that ``cifake_folder`` (the model's training data) holds, so the reference and the
windows are alike in everything, as a model's validation split and live traffic should be.
"""

from __future__ import annotations

import io
import json
import tarfile
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from model.calibration import Calibration
from model.drift import (
    DRIFT_CALIBRATION_FILE,
    REFERENCE_FILE,
    build_reference_files,
    calibrate,
    detect_drift,
    read_reference,
    reference_rows,
)
from storage import ObjectStore
from storage.predictions import read_window
from tests.conftest import Trained
from tests.helpers import shared_data

REFERENCE_PER_CLASS = 300  # a 600-image reference
WINDOW_PER_CLASS = 75  # two CIFAKE windows of 150 images


def unseen_cifake(skip_per_class: int, per_class: int) -> list[bytes]:
    """CIFAKE images past the first ``skip_per_class`` of each class in the archive, in archive order.

    ``cifake_folder`` (the tiny model's data) holds the first 600 of each class.
    """
    picked: dict[str, list[bytes]] = {"ai": [], "real": []}
    seen = dict.fromkeys(picked, 0)
    with tarfile.open(shared_data("cifake-dev.tar.gz"), "r:*") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[1] not in picked:
                continue
            label = parts[1]
            seen[label] += 1
            if skip_per_class < seen[label] <= skip_per_class + per_class:
                file = tar.extractfile(member)
                assert file is not None
                picked[label].append(file.read())
            if all(len(images) == per_class for images in picked.values()):
                break
    return picked["ai"] + picked["real"]


def folder_images(folder: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted(folder.glob("*/*.jpg"))]


def as_cifake_file(data: bytes) -> bytes:
    """The image as CIFAKE stores one: 32x32, JPEG quality 75 (what the file says no longer differs)."""
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cifake_images() -> dict[str, list[bytes]]:
    images = unseen_cifake(600, REFERENCE_PER_CLASS + 2 * WINDOW_PER_CLASS)
    ai, real = images[: len(images) // 2], images[len(images) // 2 :]

    def part(start: int, stop: int) -> list[bytes]:
        return ai[start:stop] + real[start:stop]

    first, second = REFERENCE_PER_CLASS, REFERENCE_PER_CLASS + WINDOW_PER_CLASS
    return {
        "reference": part(0, first),
        "window_a": part(first, second),
        "window_b": part(second, second + WINDOW_PER_CLASS),
    }


Reference = tuple[pd.DataFrame, dict[str, Any]]


@pytest.fixture(scope="module")
def reference(trained_tiny: Trained, cifake_images: dict[str, list[bytes]]) -> Reference:
    files = build_reference_files(trained_tiny.onnx_path, cifake_images["reference"])
    return read_reference(files[REFERENCE_FILE]), json.loads(files[DRIFT_CALIBRATION_FILE])


@pytest.fixture(scope="module")
def newgen_result(trained_tiny: Trained, newgen_folder: Path, reference: Reference) -> tuple[dict[str, Any], str]:
    current = reference_rows(trained_tiny.onnx_path, folder_images(newgen_folder))
    return detect_drift(reference[0], current, reference[1])


@pytest.fixture(scope="module")
def cifake_windows(
    trained_tiny: Trained, cifake_images: dict[str, list[bytes]], reference: Reference
) -> dict[str, tuple[pd.DataFrame, dict[str, Any]]]:
    """Each CIFAKE window's rows and drift summary."""
    results = {}
    for window in ("window_a", "window_b"):
        current = reference_rows(trained_tiny.onnx_path, cifake_images[window])
        results[window] = current, detect_drift(reference[0], current, reference[1])[0]
    return results


def test_reference_rows_are_prediction_log_rows(trained_tiny: Trained, cifake_images: dict[str, list[bytes]]) -> None:
    from model.calibration import apply_temperature
    from model.features import image_statistics
    from model.inference import OnnxModel
    from model.preprocess import decode_image, to_model_input
    from storage.predictions import SCHEMA

    images = cifake_images["window_a"][:8] + [b"not an image"]
    rows = reference_rows(trained_tiny.onnx_path, images, Calibration(temperature=2.0))
    assert len(rows) == 8  # what serving refuses is left out
    table = pa.Table.from_pandas(rows, preserve_index=False)
    for field in table.schema:  # the prediction log's names and types
        assert SCHEMA.field(field.name).type == field.type, field.name

    image, model = decode_image(images[0]), OnnxModel(trained_tiny.onnx_path)
    raw, embedding = model.predict(to_model_input(image, model.image_size)[None])
    first = rows.iloc[0]
    for name, value in image_statistics(image, images[0]).items():
        assert first[name] == pytest.approx(value), name
    assert first["raw_score"] == pytest.approx(raw[0], abs=1e-6)
    assert first["probability"] == pytest.approx(float(apply_temperature(raw[0], 2.0)), abs=1e-6)
    assert first["label"] == ("ai" if first["probability"] >= 0.5 else "real")
    np.testing.assert_allclose(first["embedding"], embedding[0], rtol=1e-3, atol=1e-3)  # stored as float16


def test_calibration_measures_its_false_alarm_rate(reference: Reference) -> None:
    frame, calibration = reference
    assert len(frame) == 2 * REFERENCE_PER_CLASS
    assert set(calibration["thresholds"]) == {"image_stats", "embedding", "prediction"}
    assert 0 < calibration["thresholds"]["image_stats"] < 0.01
    assert 0 < calibration["thresholds"]["prediction"] < 0.02
    assert calibration["thresholds"]["embedding"] > 0
    measured = calibration["measured_on"]
    assert measured["heldout_splits"] >= 300 and measured["reference_rows"] == len(frame)
    # 300 held-out window pairs at a 1% target: 3 alarms expected at worst, 8 would be far out.
    assert calibration["false_alarm_rate"] <= 0.025


def test_a_new_generator_is_drift(newgen_result: tuple[dict[str, Any], str]) -> None:
    summary, _ = newgen_result
    assert summary["drift_detected"]
    assert "image_stats" in summary["drifted_parts"]
    assert {"width", "height", "jpeg_quality"} <= set(summary["drifted_columns"])  # 512x512 q92 against 32x32 q75
    assert summary["rows"] == {"reference": 600, "current": 100, "compared_reference": 600, "compared_current": 100}
    assert summary["false_alarm_rate"] is not None


def test_a_new_generator_is_drift_even_in_cifake_files(
    trained_tiny: Trained, newgen_folder: Path, reference: Reference
) -> None:
    """Re-encoded as CIFAKE stores images, newgen differs in content only: the embedding sees it."""
    current = reference_rows(trained_tiny.onnx_path, [as_cifake_file(d) for d in folder_images(newgen_folder)])
    summary, _ = detect_drift(reference[0], current, reference[1])
    assert summary["drift_detected"]
    assert not {"width", "height", "jpeg_quality"} & set(summary["drifted_columns"])
    embedding = summary["parts"]["embedding"]
    assert embedding["drifted"], embedding


@pytest.mark.parametrize("window", ["window_a", "window_b"])
def test_cifake_against_cifake_is_not_drift(
    window: str, cifake_windows: dict[str, tuple[pd.DataFrame, dict[str, Any]]]
) -> None:
    _, summary = cifake_windows[window]
    assert not summary["drift_detected"], summary["parts"]
    assert summary["drifted_columns"] == []
    means = summary["mean_probability"]
    assert abs(means["current"] - means["reference"]) < 0.1


def test_the_report_opens(newgen_result: tuple[dict[str, Any], str], tmp_path: Path) -> None:
    summary, html = newgen_result

    class Parser(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: set[str] = set()

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.tags.add(tag)

    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    parser = Parser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert {"html", "head", "body", "script"} <= parser.tags
    assert len(html) > 100_000  # the report's data and its renderer are inline: it opens offline
    assert 'id="root_metric_' in html and "window.drawDashboard(" in html  # Evidently's renderer
    for text in ("Dataset Drift is detected", "Drift in embeddings 'embedding'", "Drift in column 'probability'"):
        assert text in html, text
    assert summary["drift_detected"]


def test_the_report_scores_are_the_calibrated_scores(
    reference: Reference, cifake_windows: dict[str, tuple[pd.DataFrame, dict[str, Any]]]
) -> None:
    """Calibration scores windows with Evidently's functions directly; the report must give the same numbers."""
    from model.drift import _prepare, _projection, _quiet, _scores

    frame = reference[0]
    current, summary = cifake_windows["window_a"]
    projection = _projection(frame)
    with _quiet():
        direct = _scores(_prepare(frame, projection), _prepare(current, projection))
    parts = summary["parts"]
    assert parts["image_stats"]["p_values"] == pytest.approx(direct.stats_p, rel=1e-9)
    assert parts["prediction"]["score"] == pytest.approx(direct.prediction_p, rel=1e-9)
    assert parts["embedding"]["score"] == pytest.approx(direct.mmd, rel=1e-6, abs=1e-12)


def test_windows_need_rows_and_the_same_model(reference: Reference) -> None:
    frame, calibration = reference
    with pytest.raises(ValueError, match="at least"):
        detect_drift(frame, frame.iloc[:3], calibration)
    other = frame.copy()
    other["embedding"] = [np.zeros(7, np.float16)] * len(other)
    with pytest.raises(ValueError, match="not the same model"):
        detect_drift(frame, other, calibration)
    with pytest.raises(ValueError, match="at least"):
        calibrate(frame.iloc[:50])


def test_read_window(any_store: ObjectStore) -> None:
    from storage.layout import prediction_log_key
    from storage.predictions import PredictionRecord, encode

    end = datetime(2026, 3, 2, 12, 30, tzinfo=UTC)
    start = end - timedelta(hours=3)

    def record(when: datetime, version: str, n: int) -> PredictionRecord:
        return PredictionRecord(
            id=f"{version}-{n}", created_at=when, model_version=version, probability=0.5, width=32, embedding=[0.0, 1.0]
        )

    def write(records: list[PredictionRecord], batch: str) -> None:
        any_store.put(prediction_log_key(records[0].created_at, batch), encode(records))

    # a batch that began in the hour before the window and ran into it
    write([record(start - timedelta(seconds=2), "v1", 0), record(start + timedelta(seconds=1), "v1", 1)], "b0")
    write([record(start + timedelta(hours=1), "v1", 2), record(start + timedelta(hours=1), "v2", 3)], "b1")
    write([record(end - timedelta(seconds=1), "v1", 4), record(end, "v1", 5)], "b2")  # the end is excluded
    write([record(start - timedelta(hours=5), "v1", 6)], "b3")  # long before

    window = read_window(any_store, start, end, "v1")
    assert sorted(window["id"]) == ["v1-1", "v1-2", "v1-4"]
    assert list(window["embedding"].iloc[0]) == [0.0, 1.0]
    assert sorted(read_window(any_store, start, end)["id"]) == ["v1-1", "v1-2", "v1-4", "v2-3"]
    naive = read_window(any_store, start.replace(tzinfo=None), end.replace(tzinfo=None), "v1")
    assert len(naive) == 3  # naive times are UTC
    assert len(read_window(any_store, end, end + timedelta(hours=2))) == 1  # v1-5 only
    assert read_window(any_store, end + timedelta(days=1), end + timedelta(days=2)).empty
