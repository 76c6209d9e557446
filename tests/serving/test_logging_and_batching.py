"""Prediction log (spooled through outages), micro-batching, batch endpoint, annotated image,
metrics, shadow scoring and the INT8 variant."""

from __future__ import annotations

import asyncio
import io
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.card import Int8Variant, ModelCard
from model.inference import OnnxModel
from model.registry import Registry
from serving.app import create_app
from serving.batching import MicroBatcher
from serving.predlog import PredictionLog
from storage import LocalStore, ObjectStore, StoreUnavailable
from storage.predictions import PredictionRecord
from tests.conftest import Trained
from tests.helpers import image_bytes
from tests.serving.onnx_models import mean_brightness_model
from tests.serving.test_hardening import register_onnx, settings_for


class FlakyStore(LocalStore):
    """A local store whose writes fail while ``down`` is set."""

    down = False

    def put(self, key: str, data: bytes, **kwargs: object) -> str:  # type: ignore[override]
        if self.down:
            raise StoreUnavailable("connection refused (simulated outage)")
        return super().put(key, data, **kwargs)  # type: ignore[arg-type]


def _logged(store: ObjectStore) -> list[dict]:
    rows: list[dict] = []
    for key in store.list("predictions/"):
        rows.extend(pq.read_table(io.BytesIO(store.get(key))).to_pylist())
    return rows


def _record(i: int) -> PredictionRecord:
    return PredictionRecord(
        id=f"p{i}",
        created_at=datetime.now(UTC),
        model_version="v",
        probability=0.5,
        label="ai",
        embedding=[0.1, 0.2, 0.3],
    )


def test_prediction_log_spools_through_an_outage_and_writes_each_record_once(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "store")
    log = PredictionLog(store, tmp_path / "spool", batch_size=10)
    store.down = True
    for i in range(25):
        log.add(_record(i))
    assert log.flush() == 0
    assert len(log.spooled_files()) == 3 and log.spooled_records == 25 and log.pending == 0
    for i in range(25, 30):
        log.add(_record(i))
    log.flush()
    assert log.spooled_records == 30 and _logged(store) == []

    store.down = False
    assert log.flush() == 30
    assert log.spooled_files() == [] and log.spooled_records == 0
    assert sorted(r["id"] for r in _logged(store)) == sorted(f"p{i}" for i in range(30))

    # a crash between sending a file and deleting its spool copy: the resend is a no-op
    log.add(_record(99))
    log._spool("2026_11_25_10_crash.parquet", (tmp_path / "x").write_bytes(b"") or _encode_one(99))  # noqa: SLF001
    store.put("predictions/2026/11/25/10/crash.parquet", _encode_one(99))
    log.flush()
    assert sorted(r["id"] for r in _logged(store)).count("p99") == 2  # one buffered, one from the "crash"
    assert log.spooled_files() == []


def _encode_one(i: int) -> bytes:
    from storage.predictions import encode

    return encode([_record(i)])


def test_serving_logs_predictions_with_statistics_and_embeddings_and_survives_an_outage(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "store")
    registry = Registry(store)
    version = register_onnx(registry, mean_brightness_model(tmp_path / "m.onnx"))
    registry.promote(version, reason="test")
    settings = settings_for(tmp_path, store, log_flush_seconds=0.1)
    with TestClient(create_app(settings)) as client:
        state = client.app.state.serving  # type: ignore[attr-defined]
        state.predlog.store = store
        store.down = True
        ids = []
        for seed in range(6):
            response = client.post("/v1/predict", files={"file": ("x.jpg", image_bytes((48, 40), seed=seed))})
            assert response.status_code == 200  # the outage never reaches the request
            ids.append(response.json()["id"])
        deadline = time.monotonic() + 20
        while state.predlog.spooled_records < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.predlog.spooled_records == 6
        assert "aidetect_prediction_log_spooled_records 6.0" in client.get("/metrics").text
        store.down = False
        while state.predlog.spooled_records and time.monotonic() < deadline:
            time.sleep(0.05)
    rows = _logged(store)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    row = rows[0]
    assert row["model_version"] == version and row["format"] == "JPEG"
    assert (row["width"], row["height"]) == (48, 40)
    assert 1 <= row["jpeg_quality"] <= 100 and row["sharpness"] > 0 and 0 < row["brightness"] < 255
    assert len(row["embedding"]) == 3 and row["label"] in ("ai", "real", "uncertain")
    assert row["shadow_version"] is None


def test_micro_batching_groups_concurrent_requests_per_model(trained_tiny: Trained) -> None:
    model = OnnxModel(trained_tiny.onnx_path)
    other = OnnxModel(trained_tiny.onnx_path)  # "the model after a swap"
    pixels = trained_tiny.val_x[:12]
    expected, _ = model.predict(pixels)
    sizes: list[int] = []

    async def scenario() -> list[tuple[float, np.ndarray]]:
        batcher = MicroBatcher(max_batch=8, max_wait=0.002, on_batch=sizes.append)
        await batcher.start()
        try:
            jobs = [batcher.score(model if i < 10 else other, pixels[i]) for i in range(12)]
            results = await asyncio.gather(*jobs)
            # a lone request with nobody decoding does not wait for company (max_wait is huge)
            batcher.max_wait = 60
            alone = await asyncio.wait_for(batcher.score(model, pixels[0]), 10)
            return [*results, alone]
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert np.allclose([r[0] for r in results[:12]], expected, atol=1e-5)
    assert results[12][0] == pytest.approx(expected[0], abs=1e-5)
    assert sizes[:3] == [8, 2, 2]  # 8 of model, then the rest split by model: 2 + 2
    assert sizes[3] == 1


def test_batch_endpoint_annotated_image_and_metrics(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    registry = Registry(store)
    version = register_onnx(registry, mean_brightness_model(tmp_path / "m.onnx"))
    registry.promote(version, reason="test")
    with TestClient(create_app(settings_for(tmp_path, store, batch_max_files=3))) as client:
        files = [
            ("files", ("a.jpg", image_bytes(seed=1), "image/jpeg")),
            ("files", ("b.txt", b"just text", "text/plain")),
            ("files", ("c.png", image_bytes(seed=2, fmt="PNG"), "image/png")),
        ]
        response = client.post("/v1/predict/batch", files=files)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r.get("model_version") for r in results] == [version, None, version]
        assert results[1] == {"filename": "b.txt", "status": 400, "error": results[1]["error"]}
        assert "not a recognised image" in results[1]["error"]
        too_many = client.post("/v1/predict/batch", files=files + files[:1])
        assert too_many.status_code == 400 and "at most 3" in too_many.json()["detail"]

        annotated = client.get(f"/v1/predictions/{results[0]['id']}/annotated")
        assert annotated.status_code == 200 and annotated.headers["content-type"] == "image/png"
        assert f'filename="aidetect-{results[0]["id"]}.png"' in annotated.headers["content-disposition"]
        image = Image.open(io.BytesIO(annotated.content))
        assert image.width >= 320 and image.height > image.width  # enlarged 32 px image under a banner
        assert client.get("/v1/predictions/0123456789abcdef/annotated").status_code == 404

        metrics = client.get("/metrics").text
        labels = [r["label"] for r in (results[0], results[2])]
        for label in set(labels):
            assert f'aidetect_predictions_total{{label="{label}"}} {float(labels.count(label))}' in metrics
        assert re.search(
            rf'aidetect_model_info\{{alias="production",role="production",variant="fp32",version="{version}"\}} 1\.0',
            metrics,
        )
        assert 'aidetect_rejected_uploads_total{reason="unreadable"} 1.0' in metrics
        assert 'route="/v1/predict/batch",status="200"' in metrics
        assert "aidetect_inference_batch_size_count" in metrics

        schema = client.get("/openapi.json").json()
        for path in (
            "/v1/predict",
            "/v1/predict/batch",
            "/v1/predictions/{prediction_id}/annotated",
            "/v1/feedback",
            "/v1/model",
            "/v1/admin/reload",
            "/v1/admin/rollback",
            "/healthz",
            "/readyz",
            "/metrics",
        ):
            assert path in schema["paths"], path


def test_shadow_model_scores_in_the_background_and_is_never_returned(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    registry = Registry(store)
    production = register_onnx(registry, mean_brightness_model(tmp_path / "p.onnx"))
    registry.promote(production, reason="test")
    candidate = register_onnx(registry, mean_brightness_model(tmp_path / "c.onnx"))
    registry.promote(candidate, "candidate", reason="challenger under evaluation")
    settings = settings_for(tmp_path, store, shadow_alias="candidate", shadow_share=1.0, log_flush_seconds=0.1)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/model").json()["shadow"] == {"alias": "candidate", "version": candidate, "share": 1.0}
        bodies = [client.post("/v1/predict", files={"file": ("x.jpg", image_bytes(seed=s))}).json() for s in range(4)]
        assert {b["model_version"] for b in bodies} == {production}
    rows = {r["id"]: r for r in _logged(store)}
    assert set(rows) == {b["id"] for b in bodies}
    for body in bodies:
        row = rows[body["id"]]
        assert row["model_version"] == production and row["shadow_version"] == candidate
        assert row["shadow_probability"] == pytest.approx(body["probability"], abs=1e-6)  # the same graph


def test_the_int8_variant_is_selectable(tmp_path: Path, trained_tiny: Trained) -> None:
    from model.export import quantize_int8
    from tests.serving.conftest import register_trained

    int8 = quantize_int8(trained_tiny.onnx_path, tmp_path / "model.int8.onnx", trained_tiny.val_x[:64])
    store = LocalStore(tmp_path / "store")
    registry = Registry(store)
    buffer = io.BytesIO()
    expected_int8, _ = OnnxModel(int8).predict(trained_tiny.canaries["inputs"])
    np.savez_compressed(buffer, **trained_tiny.canaries, expected_int8=expected_int8)
    version = registry.register(
        {"model.onnx": trained_tiny.onnx_path, "model.int8.onnx": int8, "canaries.npz": buffer.getvalue()},
        ModelCard(input_size=32, int8=Int8Variant(file="model.int8.onnx")),
    )
    registry.promote(version, reason="test")
    image = image_bytes(seed=3)
    with TestClient(create_app(settings_for(tmp_path, store))) as client:
        fp32 = client.post("/v1/predict", files={"file": ("x.jpg", image)}).json()["probability"]
    with TestClient(create_app(settings_for(tmp_path, store, model_variant="int8"))) as client:
        assert client.get("/v1/model").json()["variant"] == "int8"
        quantized = client.post("/v1/predict", files={"file": ("x.jpg", image)}).json()["probability"]
        assert quantized != fp32 and abs(quantized - fp32) < 0.25

        holder = client.app.state.serving.holder  # type: ignore[attr-defined]
        no_int8 = register_trained(registry, trained_tiny)
        registry.promote(no_int8, reason="exported without INT8")
        assert holder.refresh() is False
        assert "no INT8 variant" in client.get("/v1/model").json()["last_error"]
