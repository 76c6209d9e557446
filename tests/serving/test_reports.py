"""The read-only routes for a version's plots and the drift reports, and the card on GET /v1/model
(FastAPI's TestClient, real onnxruntime, real local store, real matplotlib PNGs)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from model.card import GateRecord, Metrics, ModelCard
from model.registry import Registry
from serving.app import create_app
from serving.routes.reports import REPORT_CSP
from storage import LocalStore
from storage.layout import DRIFT_LATEST, drift_report_key, model_plot_file, model_plot_key, new_version_id
from tests.serving.onnx_models import mean_brightness_model, mean_canaries
from tests.serving.test_hardening import register_onnx, settings_for

TEST_METRICS = {"accuracy": 0.8125, "f1": 0.8, "roc_auc": 0.875, "ece": 0.0625, "mean_prediction": 0.5}


def plotted_model_store(folder: Path, *, blessed: bool = False) -> tuple[LocalStore, str, dict[str, bytes]]:
    """A store serving the mean-brightness model, registered as a retrain registers one: with its
    plots and a full card (lineage, weights, the gate's verdict, rejected unless ``blessed``, test metrics)."""
    from model.plots import plot_confusion_matrix, plot_roc

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 64), rng.random(64)
    plots = {
        "confusion_matrix.png": plot_confusion_matrix({"tn": 20, "fp": 5, "fn": 7, "tp": 32}, folder / "c.png"),
        "roc.png": plot_roc(y, p, folder / "roc.png", label="challenger", others={"champion": (y, p[::-1])}),
    }
    store = LocalStore(folder / "store")
    registry = Registry(store)
    champion = register_onnx(registry, mean_brightness_model(folder / "old.onnx"))
    canaries = io.BytesIO()
    np.savez_compressed(canaries, **mean_canaries(32))
    files = {"model.onnx": mean_brightness_model(folder / "mean.onnx"), "canaries.npz": canaries.getvalue()}
    card = ModelCard(
        input_size=32,
        config={"name": "mean-brightness"},
        datasets=["cifake@20260101T000000000000Z-000001", "feedback@20260102T000000000000Z-000002"],
        test_datasets=["cifake@20260101T000000000000Z-000001"],
        parent_version=champion,
        initial_weights="imagenet",
        trigger="drift",
        training_run="20260103T000000000000Z-000003",
        gate=GateRecord(
            blessed=blessed, reasons=[] if blessed else ["accuracy 0.8125 is below the floor 0.9000"], notes=["a note"]
        ),
        metrics=Metrics(test=TEST_METRICS),
        champion_metrics={**TEST_METRICS, "accuracy": 0.75},
    )
    version = registry.register({**files, **{model_plot_file(name): path for name, path in plots.items()}}, card)
    registry.promote(version, reason="test")
    return store, version, {name: path.read_bytes() for name, path in plots.items()}


def stored_drift_report(store: LocalStore, html: str) -> str:
    """A drift report as monitor-drift stores it (page, picture, summary, latest); returns its id."""
    report_id = new_version_id()
    summary = {"status": "drift", "report": drift_report_key(report_id, "report.html")}
    store.put(drift_report_key(report_id, "report.html"), html.encode())
    store.put(drift_report_key(report_id, "drift.png"), b"\x89PNG not really")
    store.put(drift_report_key(report_id, "summary.json"), json.dumps(summary).encode())
    store.put(DRIFT_LATEST, json.dumps(summary).encode())
    return report_id


def test_the_live_card_lists_its_plots_and_they_are_served_as_immutable_pngs(tmp_path: Path) -> None:
    store, version, plots = plotted_model_store(tmp_path)
    with TestClient(create_app(settings_for(tmp_path, store))) as client:
        live = client.get("/v1/model").json()
        assert live["version"] == version
        card = live["metadata"]
        assert card["datasets"][1].startswith("feedback@") and card["parent_version"] is not None
        assert card["initial_weights"] == "imagenet" and card["trigger"] == "drift"
        assert card["gate"]["blessed"] is False and card["gate"]["reasons"] == [
            "accuracy 0.8125 is below the floor 0.9000"
        ]
        assert card["metrics"]["test"] == TEST_METRICS
        assert live["plots"] == {name: f"/v1/models/{version}/plots/{name}" for name in sorted(plots)}

        for name, url in live["plots"].items():
            response = client.get(url)
            assert response.status_code == 200, response.text
            assert response.content == plots[name] and response.headers["content-type"] == "image/png"
            assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert response.headers["etag"] == f'"{hashlib.sha256(plots[name]).hexdigest()}"'
            assert "sandbox" in response.headers["content-security-policy"]
            assert response.headers["x-content-type-options"] == "nosniff"
            again = client.get(url, headers={"If-None-Match": response.headers["etag"]})
            assert again.status_code == 304 and again.content == b""


def test_only_a_versions_registered_plots_are_served(tmp_path: Path) -> None:
    store, version, _ = plotted_model_store(tmp_path)
    other = register_onnx(Registry(store), mean_brightness_model(tmp_path / "plain.onnx"))  # no plots
    store.put(model_plot_key(other, "roc.png"), b"put there, never registered")
    with TestClient(create_app(settings_for(tmp_path, store))) as client:
        cases = {
            f"/v1/models/{version}/plots/reliability.png": "it has: confusion_matrix.png, roc.png",
            f"/v1/models/{other}/plots/roc.png": "has no plot 'roc.png'; it has: none",
            "/v1/models/20990101T000000000000Z-ffffff/plots/roc.png": "is not registered",
            f"/v1/models/{version}/plots/metadata.json": "is not a plot name",
            f"/v1/models/{version}/plots/model.onnx": "is not a plot name",
            f"/v1/models/{version}/plots/ROC.PNG": "is not a plot name",
            f"/v1/models/{version}/plots/..png": "is not a plot name",
            "/v1/models/..%2e/plots/roc.png": "is not a model version",
            "/v1/models/.hidden/plots/roc.png": "is not a model version",
        }
        for url, message in cases.items():
            response = client.get(url)
            assert response.status_code == 404, url
            assert message in response.json()["detail"], (url, response.json())
        # a slash, encoded or not, or a dot segment never reaches a key: no route matches
        for url in (
            f"/v1/models/{version}/plots/..",
            f"/v1/models/{version}/plots/..%2Fmetadata.json",
            f"/v1/models/{version}/plots/%2e%2e%2fmodel.onnx",
            "/v1/models/..%2F..%2Fregistry%2Faliases%2Fproduction.json/plots/roc.png",
            f"/v1/models/{version}/plots/../../../registry/aliases/production.json",
        ):
            response = client.get(url)
            assert response.status_code == 404 and response.json() == {"detail": "Not Found"}, url
        # listed in the card but gone from the store
        store.delete(model_plot_key(version, "roc.png"))
        response = client.get(f"/v1/models/{version}/plots/roc.png")
        assert response.status_code == 404 and "the store has no such file" in response.json()["detail"]


def test_drift_reports_are_served_with_a_sandboxing_csp_and_latest_redirects(tmp_path: Path) -> None:
    store, _, _ = plotted_model_store(tmp_path)
    with TestClient(create_app(settings_for(tmp_path, store))) as client:
        missing = client.get("/v1/reports/drift/latest", follow_redirects=False)
        assert missing.status_code == 404 and "no drift report yet" in missing.json()["detail"]

        first = stored_drift_report(store, "<!DOCTYPE html><p>first</p>")
        report_id = stored_drift_report(store, "<!DOCTYPE html><p>the newest</p>")
        latest = client.get("/v1/reports/drift/latest", follow_redirects=False)
        assert latest.status_code == 307 and latest.headers["location"] == f"/v1/reports/drift/{report_id}"
        assert latest.headers["cache-control"] == "no-store"
        page = client.get("/v1/reports/drift/latest")  # followed
        assert page.status_code == 200 and page.text == "<!DOCTYPE html><p>the newest</p>"
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["content-security-policy"] == REPORT_CSP and "sandbox allow-scripts" in REPORT_CSP
        assert "allow-same-origin" not in REPORT_CSP
        assert page.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert client.get(f"/v1/reports/drift/{first}").text == "<!DOCTYPE html><p>first</p>"

        summary = client.get(f"/v1/reports/drift/{report_id}/summary.json")
        assert summary.headers["content-type"] == "application/json" and summary.json()["status"] == "drift"
        picture = client.get(f"/v1/reports/drift/{report_id}/drift.png")
        assert picture.headers["content-type"] == "image/png" and picture.content == b"\x89PNG not really"

        cases = {
            "/v1/reports/drift/20990101T000000000000Z-ffffff": "has no report.html",
            "/v1/reports/drift/latest2": "is not a drift report id",
            "/v1/reports/drift/...": "is not a drift report id",
            f"/v1/reports/drift/{report_id}/secrets.txt": "not 'secrets.txt'",
            f"/v1/reports/drift/{report_id}/...": "not '...'",
        }
        for url, message in cases.items():
            response = client.get(url)
            assert response.status_code == 404 and message in response.json()["detail"], (url, response.json())
        for url in (
            f"/v1/reports/drift/{report_id}/..%2F..%2Flatest.json",
            "/v1/reports/drift/..%2Flatest.json/x",
            f"/v1/reports/drift/{report_id}/..",
        ):
            response = client.get(url)
            assert response.status_code == 404 and response.json() == {"detail": "Not Found"}, url

        store.put(DRIFT_LATEST, json.dumps({"status": "drift", "report": "../../etc/passwd"}).encode())
        broken = client.get("/v1/reports/drift/latest", follow_redirects=False)
        assert broken.status_code == 404 and "names no report" in broken.json()["detail"]
