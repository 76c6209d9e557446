"""Two serving replicas on one store: any replica answers for a prediction another one made.

Real uvicorn processes (A and B) on one local store. Through the API: predict on A, then B
serves the heatmap, the annotated copy, the thumbnail, the browser's history and takes the
"this is wrong" report by prediction id. In Debian's chromium (the ``browser`` fixture: missing,
the test fails) behind a real HAProxy that sends ``POST /v1/predict`` to A and everything else
to B, so the page sees one origin; each replica's /metrics shows which one served what.
Also in-process: the sweeper's retention rule, and a store that fails on the predict path.
"""

from __future__ import annotations

import io
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serving.app import create_app
from serving.history import HistoryItem, save_item
from serving.recent import RecentPrediction, save_heatmap, save_prediction
from serving.shared import sweep
from storage import LocalStore, StoreUnavailable
from storage.layout import history_prefix, new_prediction_id
from tests.helpers import free_port, image_bytes, needs_haproxy, serving_process, wait_http
from tests.serving.test_browser import synthetic_image
from tests.serving.test_hardening import mean_model_store, settings_for

# Everything but a prediction goes to B: what B answers, it can only have found in the store.
PROXY_CFG = """
global
    maxconn 256
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend web
    bind 127.0.0.1:{port}
    acl predict path /v1/predict
    acl post method POST
    use_backend a if predict post
    default_backend b
backend a
    http-response set-header X-Replica a
    server a 127.0.0.1:{a}
backend b
    http-response set-header X-Replica b
    server b 127.0.0.1:{b}
"""


@dataclass
class Replicas:
    a: str
    b: str
    store: LocalStore

    def served(self, base: str, method: str, route: str) -> dict[str, float]:
        """Requests this replica answered on ``route``, by status (its /metrics)."""
        pattern = (
            r'aidetect_http_request_duration_seconds_count\{method="'
            + method
            + r'",route="'
            + re.escape(route)
            + r'",status="(\d+)"\} (\S+)'
        )
        return {status: float(n) for status, n in re.findall(pattern, httpx.get(f"{base}/metrics").text)}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    tmp = tmp_path_factory.mktemp("replicas")
    store = mean_model_store(tmp)
    with ExitStack() as stack:
        bases = []
        for name in ("a", "b"):
            env = {"AIDETECT_HOME": str(tmp / name), "AIDETECT_STORE_URL": str(store.root), "AIDETECT_BUILD": name}
            bases.append(stack.enter_context(serving_process(env, tmp / f"{name}.log"))[1])
        yield Replicas(bases[0], bases[1], store)


def test_any_replica_answers_for_a_prediction_made_on_another(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    with httpx.Client(timeout=30) as client:  # one cookie jar: a cookie is not per port
        made = client.post(f"{a}/v1/predict", files={"file": ("sky.png", synthetic_image(64), "image/png")})
        assert made.status_code == 200, made.text
        prediction = made.json()
        pid = prediction["id"]

        heat = client.get(f"{b}/v1/predictions/{pid}/heatmap")
        assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
        assert client.get(f"{a}/v1/predictions/{pid}/heatmap").content == heat.content  # B's, from the store
        annotated = client.get(f"{b}/v1/predictions/{pid}/annotated")
        assert annotated.status_code == 200 and Image.open(io.BytesIO(annotated.content)).width >= 64
        assert client.get(f"{b}/v1/predictions/{pid}/thumbnail").status_code == 200

        (item,) = client.get(f"{b}/v1/history").json()
        assert item["id"] == pid and item["filename"] == "sky.png" and item["image_available"]
        assert item["label"] == prediction["label"] and item["feedback_id"] is None

        report = client.post(f"{b}/v1/feedback", data={"prediction_id": pid, "label": "ai"})
        assert report.status_code == 201, report.text
        assert report.json()["predicted_label"] == prediction["label"]
        assert client.get(f"{a}/v1/history").json()[0]["feedback_id"] == report.json()["id"]

        for unknown in (new_prediction_id(), "0" * 16, "../../registry", "x" * 300):
            assert client.get(f"{b}/v1/predictions/{unknown}/annotated").status_code == 404, unknown
        assert (
            client.post(f"{b}/v1/feedback", data={"prediction_id": new_prediction_id(), "label": "ai"}).status_code
            == 404
        )

        assert client.delete(f"{b}/v1/history").json() == {"cleared": 1}
        assert client.get(f"{a}/v1/history").json() == []
    cookie = made.cookies["aidetect_browser"]
    assert not any(cookie in key for key in replicas.store.list(""))  # only its hash names a key


@contextmanager
def proxy(config: str, log_path: Path) -> Iterator[None]:
    config_path = log_path.with_suffix(".cfg")
    config_path.write_text(config)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(  # noqa: S603
            ["haproxy", "-db", "-f", str(config_path)],  # noqa: S607
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield
    finally:
        process.terminate()
        process.wait(10)


@needs_haproxy
def test_the_page_works_when_every_request_but_the_prediction_reaches_another_replica(
    replicas: Replicas, browser: object, tmp_path: Path
) -> None:
    a, b = replicas.a, replicas.b
    port = free_port()
    config = PROXY_CFG.format(port=port, a=a.rsplit(":", 1)[1], b=b.rsplit(":", 1)[1])
    routes = {
        ("POST", "/v1/predict"),
        ("GET", "/v1/predictions/{prediction_id}/heatmap"),
        ("GET", "/v1/predictions/{prediction_id}/annotated"),
        ("GET", "/v1/predictions/{prediction_id}/thumbnail"),
        ("GET", "/v1/history"),
        ("POST", "/v1/feedback"),
    }
    before = {(base, *r): replicas.served(base, *r) for base in (a, b) for r in routes}
    with proxy(config, tmp_path / "proxy.log"):
        site = f"http://127.0.0.1:{port}"
        wait_http(f"{site}/healthz", 20)
        context = browser.new_context(accept_downloads=True)  # type: ignore[attr-defined]
        page = context.new_page()
        replica_of: dict[str, str] = {}
        page.on("response", lambda r: replica_of.setdefault(f"{r.request.method} {r.url}", r.headers.get("x-replica")))
        page.goto(site + "/")
        page.set_input_files(
            "#file", files=[{"name": "hills.png", "mimeType": "image/png", "buffer": synthetic_image()}]
        )
        page.click("#analyze")
        page.wait_for_function("document.getElementById('verdict').textContent.includes('confidence')")
        page.wait_for_function(
            "(() => { const h = document.getElementById('heatmap'); return h.complete && h.naturalWidth >= 256; })()"
        )
        with page.expect_download() as download:
            page.click("#download")
        saved = tmp_path / "annotated.png"
        download.value.save_as(saved)
        assert Image.open(saved).format == "PNG"

        page.reload()
        items = page.locator("#history li")
        items.first.wait_for()
        assert items.count() == 1 and "hills.png" in items.first.inner_text()
        page.wait_for_function("document.querySelector('#history img').naturalWidth > 0")
        items.first.locator("button").click()
        page.click("#wrong")
        page.wait_for_function("document.getElementById('feedback').textContent.includes('quarantined')")
        page.reload()
        page.locator("#history li").first.wait_for()
        assert "reported" in page.locator("#history li").first.inner_text()
        page.click("#clear")
        page.locator("#empty").wait_for(state="visible")
        context.close()

    def new_requests(base: str, method: str, route: str) -> dict[str, float]:
        now = replicas.served(base, method, route)
        return {
            s: n - before[(base, method, route)].get(s, 0)
            for s, n in now.items()
            if n > before[(base, method, route)].get(s, 0)
        }

    assert new_requests(a, "POST", "/v1/predict") == {"200": 1}
    for method, route in routes - {("POST", "/v1/predict")}:
        assert new_requests(a, method, route) == {}, (method, route)  # A served nothing but the prediction
        served_by_b = new_requests(b, method, route)
        assert served_by_b and set(served_by_b) <= {"200", "201"}, (method, route, served_by_b)
    assert {v for k, v in replica_of.items() if "/v1/predict" in k and k.startswith("POST")} == {"a"}
    assert {v for k, v in replica_of.items() if "/v1/predictions/" in k or "/v1/feedback" in k} == {"b"}


def _made(store: LocalStore, at: datetime, browser: str = "f" * 32) -> str:
    pid = new_prediction_id(at)
    item = RecentPrediction(pid, image_bytes(), "jpg", "ai", 0.9, "v1", at.timestamp(), "x.jpg")
    save_prediction(store, item)
    save_heatmap(store, pid, "v1", b"png")
    save_item(store, browser, HistoryItem(pid, "ai", 0.9, "v1", "x.jpg", at.timestamp()))
    return pid


def test_the_sweeper_deletes_what_is_past_retention_and_nothing_else(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    now = datetime(2026, 12, 2, 12, tzinfo=UTC)
    old = [_made(store, now - timedelta(hours=hours)) for hours in (50, 25)]
    kept = [_made(store, now - timedelta(hours=hours)) for hours in (23, 0)]
    store.put("recent/not-an-id/prediction.json", b"{}")  # not ours to judge
    assert sweep(store, timedelta(hours=24), now) == 2 * 4
    assert sweep(store, timedelta(hours=24), now) == 0  # idempotent: any replica may sweep
    remaining = list(store.list("recent/")) + list(store.list("history/"))
    assert not any(pid in key for pid in old for key in remaining)
    assert all(sum(pid in key for key in remaining) == 4 for pid in kept)
    assert "recent/not-an-id/prediction.json" in remaining
    assert all(key.startswith(history_prefix("f" * 32)) for key in store.list("history/"))


class DownStore(LocalStore):
    """A local store that cannot be reached while ``down`` is set."""

    down = False

    def _reachable(self) -> None:
        if self.down:
            raise StoreUnavailable("connection refused (simulated outage)")

    def put(self, key: str, data: bytes, **kwargs: object) -> str:  # type: ignore[override]
        self._reachable()
        return super().put(key, data, **kwargs)  # type: ignore[arg-type]

    def get(self, key: str) -> bytes:
        self._reachable()
        return super().get(key)

    def exists(self, key: str) -> bool:
        self._reachable()
        return super().exists(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        self._reachable()
        return super().list(prefix)


def test_a_store_outage_on_the_predict_path_keeps_the_prediction_on_this_replica(tmp_path: Path) -> None:
    served = mean_model_store(tmp_path)
    with TestClient(create_app(settings_for(tmp_path, served, prediction_log=False))) as client:
        state = client.app.state.serving  # type: ignore[attr-defined]
        down_store = DownStore(served.root)
        state.store = down_store
        down_store.down = True
        started = time.perf_counter()
        ids = [client.post("/v1/predict", files={"file": ("x.png", image_bytes(seed=s, fmt="PNG"))}) for s in range(3)]
        assert [r.status_code for r in ids] == [200, 200, 200]
        assert time.perf_counter() - started < 10
        metrics = client.get("/metrics").text
        assert 'aidetect_recent_store_writes_total{outcome="failed"} 1.0' in metrics
        assert 'aidetect_recent_store_writes_total{outcome="skipped"} 2.0' in metrics  # paused after a failure
        pid = ids[0].json()["id"]
        assert client.get(f"/v1/predictions/{pid}/annotated").status_code == 200  # from this replica's memory
        assert [i["id"] for i in client.get("/v1/history").json()] == [r.json()["id"] for r in reversed(ids)]
        assert client.get(f"/v1/predictions/{new_prediction_id()}/annotated").status_code == 503  # only the store knows
        assert client.post("/v1/feedback", data={"prediction_id": pid, "label": "real"}).status_code == 202  # outbox
        down_store.down = False
        assert not list(down_store.list("recent/"))  # nothing was written: it is on this replica only
