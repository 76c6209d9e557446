"""Feedback over HTTP: an outage loses nothing, duplicates count once, rate limits, and status."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from feedback.outbox import Outbox
from feedback.records import FeedbackRecord
from feedback.store import get_feedback, iter_feedback
from model.card import ModelCard
from model.registry import Registry
from serving.app import create_app
from storage import LocalStore, StoreUnavailable
from tests.helpers import image_bytes
from tests.serving.test_hardening import mean_model_store, settings_for


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return mean_model_store(tmp_path)


@contextlib.contextmanager
def from_address(client: TestClient, address: str) -> Iterator[TestClient]:
    """The same client (and event loop), its requests coming from another address."""
    transport = client._transport  # noqa: SLF001 - Starlette's test transport holds the ASGI client address
    saved = transport.client  # type: ignore[attr-defined]
    transport.client = (address, 40000)  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        transport.client = saved  # type: ignore[attr-defined]


def _report(client: TestClient, seed: int, label: str = "ai", agent: str = "browser-1") -> dict:
    response = client.post(
        "/v1/feedback",
        data={"label": label},
        files={"file": (f"{seed}.png", image_bytes((32, 32), seed=seed, fmt="PNG"), "image/png")},
        headers={"User-Agent": agent},
    )
    assert response.status_code in (201, 202), response.text
    return {"status_code": response.status_code, **response.json()}


def test_a_store_outage_loses_no_feedback_and_each_report_lands_once(
    tmp_path: Path, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = {"on": False}
    real_put = LocalStore.put

    def flaky_put(self: LocalStore, key: str, data: bytes, **kwargs: object) -> str:
        if down["on"]:
            raise StoreUnavailable("connection refused (simulated outage)")
        return real_put(self, key, data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalStore, "put", flaky_put)
    settings = settings_for(tmp_path, store, outbox_flush_seconds=0.1, prediction_log=False)
    with TestClient(create_app(settings)) as client:
        down["on"] = True
        queued = [_report(client, seed) for seed in range(5)]
        queued.append(_report(client, 0))  # the same image, the same claim, the same client again
        assert {q["status_code"] for q in queued} == {202} and {q["status"] for q in queued} == {"queued"}
        assert client.get(f"/v1/feedback/{queued[0]['id']}").json()["status"] == "queued"
        assert 'aidetect_feedback_total{status="queued"} 6.0' in client.get("/metrics").text
        down["on"] = False
        outbox = client.app.state.serving.outbox  # type: ignore[attr-defined]
        deadline = time.monotonic() + 20
        while outbox.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outbox.pending() == 0
        status = client.get(f"/v1/feedback/{queued[0]['id']}").json()
        assert status["status"] == "quarantined" and "1 more independent report" in status["reason"]
    records = list(iter_feedback(store))
    assert sorted(r.id for r in records) == sorted(q["id"] for q in queued)  # all six, each once
    assert all(store.exists(r.image_key) for r in records)


def test_an_outbox_resend_after_a_crash_writes_nothing_twice(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    outbox = Outbox(tmp_path / "outbox")
    record = FeedbackRecord(image_sha256="ab" * 32, image_key=f"images/{'ab' * 32}.png", claimed_label="ai", client="c")
    outbox.put(record, b"image bytes", "png")
    assert outbox.flush(store) == 1
    outbox.put(record, b"image bytes", "png")  # the files were sent but not deleted before a crash
    assert outbox.flush(store) == 1 and outbox.pending() == 0
    assert [r.id for r in iter_feedback(store)] == [record.id]
    assert get_feedback(store, record.id) == record


def test_feedback_is_rate_limited_per_client(tmp_path: Path, store: LocalStore) -> None:
    settings = settings_for(tmp_path, store, feedback_burst=3, feedback_per_minute=1, prediction_log=False)
    with TestClient(create_app(settings)) as client:
        for seed in range(3):
            _report(client, seed)
        refused = client.post(
            "/v1/feedback",
            data={"label": "ai"},
            files={"file": ("x.png", image_bytes(seed=9, fmt="PNG"))},
            headers={"User-Agent": "browser-1"},
        )
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert "too many feedback reports" in refused.json()["detail"]
        # a new user agent is the same client; another address is not
        changed_agent = client.post(
            "/v1/feedback",
            data={"label": "ai"},
            files={"file": ("x.png", image_bytes(seed=9, fmt="PNG"))},
            headers={"User-Agent": "a-different-browser"},
        )
        assert changed_agent.status_code == 429
        with from_address(client, "10.0.0.2") as other:
            assert _report(other, 9)["status_code"] == 201


def test_status_follows_a_report_into_a_dataset_and_a_model(
    tmp_path: Path, store: LocalStore, prefect_api: None
) -> None:
    from flows.gather import gather_feedback

    settings = settings_for(tmp_path, store, prediction_log=False)
    with TestClient(create_app(settings)) as client:
        # mean-brightness model: noise images score ~0.5; claim the opposite of what it said
        first = _report(client, 1)
        label = "real" if first["predicted_label"] == "ai" else "ai"
        first = _report(client, 1, label=label)
        assert client.get(f"/v1/feedback/{first['id']}").json()["status"] == "quarantined"
        _report(client, 1, label=label, agent="another-browser")  # the same address: not independent
        assert client.get(f"/v1/feedback/{first['id']}").json()["status"] == "quarantined"
        with from_address(client, "10.0.0.7") as other:
            _report(other, 1, label=label)  # an independent client agrees
        status = client.get(f"/v1/feedback/{first['id']}").json()
        assert status["status"] == "accepted" and "2 independent clients agree" in status["reason"]
        assert status["dataset_versions"] == [] and status["model_versions"] == []

        version = gather_feedback(store_url=str(store.root))
        registry = Registry(store)
        model = registry.register(
            {"model.onnx": b"trained elsewhere"}, ModelCard(input_size=32, datasets=[f"feedback@{version}"])
        )
        status = client.get(f"/v1/feedback/{first['id']}").json()
        assert status["dataset_versions"] == [f"feedback@{version}"] and status["model_versions"] == [model]
        assert client.get("/v1/feedback/20260101aaaaaaaaaaaa").status_code == 404
        assert client.get("/v1/feedback/not-an-id").status_code == 404


def test_feedback_posted_from_another_site_is_refused(tmp_path: Path, store: LocalStore) -> None:
    with TestClient(create_app(settings_for(tmp_path, store, prediction_log=False))) as client:
        files = {"file": ("x.png", image_bytes(seed=3, fmt="PNG"))}
        forged = client.post(
            "/v1/feedback", data={"label": "ai"}, files=files, headers={"Origin": "https://evil.example"}
        )
        assert forged.status_code == 403 and "another site" in forged.json()["detail"]
        same = client.post("/v1/feedback", data={"label": "ai"}, files=files, headers={"Origin": "http://testserver"})
        assert same.status_code == 201
