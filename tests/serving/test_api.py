"""The HTTP API in-process (FastAPI's TestClient, real onnxruntime, real local store)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from aidetect.settings import Settings
from feedback.store import iter_feedback
from model.registry import Registry
from serving.app import create_app
from storage import LocalStore
from tests.conftest import Trained
from tests.helpers import free_port, image_bytes
from tests.serving.conftest import register_trained


def _settings(tmp_path: Path, store: LocalStore, **overrides: object) -> Settings:
    return Settings(home=tmp_path / "home", store_url=str(store.root), alias_poll_seconds=0.2, **overrides)


def test_predict_returns_a_verdict_from_the_live_model(tmp_path: Path, model_store: tuple[LocalStore, str]) -> None:
    store, version = model_store
    with TestClient(create_app(_settings(tmp_path, store))) as client:
        response = client.post("/v1/predict", files={"file": ("x.jpg", image_bytes(), "image/jpeg")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == version
        assert 0.0 <= body["probability"] <= 1.0
        assert body["label"] == ("ai" if body["probability"] >= 0.5 else "real")
        assert body["latency_ms"] > 0
        assert client.get("/v1/model").json()["version"] == version
        assert client.get("/readyz").json() == {"status": "ready", "model_version": version, "build": "dev"}


@pytest.mark.parametrize(
    ("files", "status", "message"),
    [
        ({"file": ("e.jpg", b"", "image/jpeg")}, 400, "empty"),
        ({"file": ("t.jpg", b"hello, I am text", "image/jpeg")}, 400, "not a recognised image"),
        ({"file": ("c.jpg", image_bytes((64, 64))[:300], "image/jpeg")}, 400, "corrupt or truncated"),
        ({"file": ("big.png", image_bytes((600, 600), fmt="PNG"), "image/png")}, 413, "larger than"),
        ({}, 422, "file"),
    ],
)
def test_bad_uploads_get_a_clear_4xx(
    tmp_path: Path, model_store: tuple[LocalStore, str], files: dict, status: int, message: str
) -> None:
    store, _ = model_store
    with TestClient(create_app(_settings(tmp_path, store, max_upload_bytes=100_000))) as client:
        response = client.post("/v1/predict", files=files)
        assert response.status_code == status
        assert message in json.dumps(response.json())
        assert client.get("/healthz").status_code == 200


def test_without_a_model_predict_and_readyz_say_so(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "empty")
    with TestClient(create_app(_settings(tmp_path, store))) as client:
        assert client.get("/healthz").json() == {"status": "ok", "model_version": None, "build": "dev"}
        assert client.get("/readyz").status_code == 503
        response = client.post("/v1/predict", files={"file": ("x.jpg", image_bytes())})
        assert response.status_code == 503
        assert "no model" in response.json()["detail"]


def test_feedback_by_prediction_id_and_by_upload_lands_in_the_store(
    tmp_path: Path, model_store: tuple[LocalStore, str]
) -> None:
    store, version = model_store
    with TestClient(create_app(_settings(tmp_path, store))) as client:
        prediction = client.post("/v1/predict", files={"file": ("x.jpg", image_bytes(seed=5))}).json()
        claimed = "real" if prediction["label"] == "ai" else "ai"
        first = client.post("/v1/feedback", data={"prediction_id": prediction["id"], "label": claimed})
        assert first.status_code == 201, first.text
        assert first.json()["misclassified"] is True
        second = client.post(
            "/v1/feedback", data={"label": "ai"}, files={"file": ("y.png", image_bytes(seed=6, fmt="PNG"))}
        )
        assert second.status_code == 201, second.text
        assert second.json()["model_version"] == version
        assert second.json()["predicted_label"] in ("ai", "real")

        assert client.post("/v1/feedback", data={"prediction_id": "unknown", "label": "ai"}).status_code == 404
        neither = client.post("/v1/feedback", data={"label": "ai"})
        assert neither.status_code == 422  # FastAPI's validation-error shape, like every other 422
        assert neither.json()["detail"][0]["msg"] == "send a prediction_id or the image file"
        bad_label = client.post("/v1/feedback", data={"prediction_id": prediction["id"], "label": "maybe"})
        assert bad_label.status_code == 422
        not_image = client.post("/v1/feedback", data={"label": "ai"}, files={"file": ("z.jpg", b"nope")})
        assert not_image.status_code == 400

    records = {r.id: r for r in iter_feedback(store)}
    assert set(records) == {first.json()["id"], second.json()["id"]}
    by_id = records[first.json()["id"]]
    assert by_id.prediction_id == prediction["id"]
    assert by_id.model_version == version and by_id.claimed_label == claimed
    assert store.get(by_id.image_key) == image_bytes(seed=5)
    assert records[second.json()["id"]].image_key.endswith(".png")


def test_hot_swap_and_refusals(tmp_path: Path, model_store: tuple[LocalStore, str], trained_tiny: Trained) -> None:
    store, v1 = model_store
    registry = Registry(store)
    with TestClient(create_app(_settings(tmp_path, store))) as client:
        holder = client.app.state.serving.holder  # type: ignore[attr-defined]
        v2 = register_trained(registry, trained_tiny)
        registry.promote(v2, reason="newer")
        assert holder.refresh() is True
        info = client.get("/v1/model").json()
        assert info["version"] == v2 and info["swaps"] == 2

        wrong = dict(trained_tiny.canaries, expected=trained_tiny.canaries["expected"] + 0.5)
        v3 = register_trained(registry, trained_tiny, canaries=wrong)
        registry.promote(v3, reason="bad canaries")
        assert holder.refresh() is False
        info = client.get("/v1/model").json()
        assert info["version"] == v2 and info["refused"] == 1
        assert "canary" in info["last_error"]

        v4 = register_trained(registry, trained_tiny)
        store.put(f"models/{v4}/model.onnx", b"tampered after registration")
        registry.promote(v4, reason="tampered")
        assert holder.refresh() is False
        info = client.get("/v1/model").json()
        assert info["version"] == v2 and info["refused"] == 2
        assert "sha256" in info["last_error"]
        response = client.post("/v1/predict", files={"file": ("x.jpg", image_bytes())})
        assert response.json()["model_version"] == v2


def test_replica_starts_from_its_cache_when_the_store_is_down(
    tmp_path: Path, model_store: tuple[LocalStore, str]
) -> None:
    store, version = model_store
    with TestClient(create_app(_settings(tmp_path, store))) as client:
        assert client.get("/v1/model").json()["version"] == version
    unreachable = Settings(
        home=tmp_path / "home", store_url="s3://bucket/x", s3_endpoint_url=f"http://127.0.0.1:{free_port()}"
    )
    with TestClient(create_app(unreachable)) as client:
        assert client.get("/v1/model").json()["version"] == version
        assert client.post("/v1/predict", files={"file": ("x.jpg", image_bytes())}).status_code == 200


def test_serving_never_imports_tensorflow(tmp_path: Path, model_store: tuple[LocalStore, str]) -> None:
    store, version = model_store
    code = f"""
import sys
from fastapi.testclient import TestClient
from aidetect.settings import Settings
from serving.app import create_app
settings = Settings(home={str(tmp_path / "h2")!r}, store_url={str(store.root)!r})
with TestClient(create_app(settings)) as client:
    assert client.post("/v1/predict", files={{"file": ("x.jpg", {image_bytes()!r})}}).status_code == 200
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "prefect"))
print("heavy:", heavy)
sys.exit(1 if heavy else 0)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_calibrated_scores_inside_the_band_are_uncertain(tmp_path: Path, trained_tiny: Trained) -> None:
    store = LocalStore(tmp_path / "store")
    registry = Registry(store)
    sharp = register_trained(registry, trained_tiny, temperature=0.01, uncertain_band=[0.0, 1.01])
    registry.promote(sharp, reason="everything uncertain")
    with TestClient(create_app(_settings(tmp_path, store))) as client:
        body = client.post("/v1/predict", files={"file": ("x.jpg", image_bytes())}).json()
        assert body["label"] == "uncertain"
        # temperature 0.01 sharpens any score towards 0 or 1
        assert body["probability"] < 0.01 or body["probability"] > 0.99
