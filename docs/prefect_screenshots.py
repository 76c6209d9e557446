"""Regenerate the Prefect UI screenshots: a retrain artifact with its plots, the monitor-drift
artifact, and the Evidently report opened from it (docs/prefect-*.png), in Debian's chromium.

Everything is real and local: the Prefect server from the installed package (it serves the UI),
serving on loopback with ``AIDETECT_PUBLIC_URL`` pointing at it, two small retrains of the tiny
architecture on the CIFAKE subset (the second judged against the first, so its ROC plot has the
champion's curve), newgen images sent to serving's /v1/predict, and monitor-drift on the
prediction log they leave. Needs ../shared/data; takes a few minutes on two cores.

    .venv/bin/python docs/prefect_screenshots.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT))


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603


def _newest_artifact_id(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    return str(found[0].id)


def _predict_newgen(serving: str, folder: Path, version: str) -> int:
    """Every newgen image through serving (once the retrained version is live); how many."""
    deadline = time.monotonic() + 120
    while httpx.get(serving + "/healthz").json()["model_version"] != version:
        if time.monotonic() > deadline:
            raise RuntimeError(f"serving did not load {version}")
        time.sleep(1)
    paths = sorted(folder.glob("*/*.jpg"))
    for path in paths:
        response = httpx.post(serving + "/v1/predict", files={"file": (path.name, path.read_bytes())}, timeout=30)
        response.raise_for_status()
    return len(paths)


def _wait_logged(store: Any, version: str, rows: int) -> None:
    from storage.layout import utcnow
    from storage.predictions import read_window

    deadline = time.monotonic() + 60
    while len(read_window(store, utcnow() - timedelta(hours=1), utcnow(), version)) < rows:
        if time.monotonic() > deadline:
            raise RuntimeError("serving's prediction log never reached the store")
        time.sleep(1)


def _whole(page: Any, path: Path) -> None:
    """The whole page: the Prefect UI scrolls a pane, not the document, so grow the window to it first."""
    height = page.evaluate("Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))")
    page.set_viewport_size({"width": 1400, "height": min(int(height) + 40, 8000)})
    page.wait_for_timeout(500)
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1400, "height": 1000})


def _shoot(prefect: str, retrain_artifact: str, drift_artifact: str) -> None:
    from playwright.sync_api import sync_playwright

    from tests.serving.conftest import CHROMIUM

    every_image_loaded = (
        "(n) => { const imgs = [...document.querySelectorAll('img[src*=\"/v1/\"]')];"
        " return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0); }"
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        # what the report's Content-Security-Policy blocks, if anything (it must block nothing it needs)
        context.add_init_script(
            "window.__blocked = []; document.addEventListener('securitypolicyviolation',"
            " e => window.__blocked.push(e.violatedDirective + ' ' + e.blockedURI));"
        )
        page = context.new_page()
        page.goto(f"{prefect}/artifacts/artifact/{retrain_artifact}")
        page.wait_for_function(every_image_loaded, arg=4, timeout=60_000)
        _whole(page, DOCS / "prefect-retrain-artifact.png")

        page.goto(f"{prefect}/artifacts/artifact/{drift_artifact}")
        page.wait_for_function(every_image_loaded, arg=1, timeout=60_000)
        _whole(page, DOCS / "prefect-drift-artifact.png")
        link = page.get_by_role("link", name="Open the Evidently report")
        if link.get_attribute("target") == "_blank":
            with context.expect_page() as opened:
                link.click()
            report = opened.value
        else:
            link.click()
            report = page
        report.wait_for_load_state()
        report.get_by_text("Dataset Drift is detected").first.wait_for(timeout=60_000)
        time.sleep(2)  # Evidently's plots draw after its text
        blocked = report.evaluate("window.__blocked")
        if blocked:
            raise RuntimeError(f"the report's Content-Security-Policy blocked: {blocked}")
        report.screenshot(path=str(DOCS / "prefect-drift-report.png"))
        print("report opened at", report.url)
        browser.close()


def main() -> None:
    from tests.helpers import extract_subset, free_port, shared_data, wait_http

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        prefect_port, serving_port = free_port(), free_port()
        prefect, serving = f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{serving_port}"
        store_root = tmp / "store"
        env = {
            **os.environ,
            "PREFECT_HOME": str(tmp / "prefect"),
            "PREFECT_API_URL": f"{prefect}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "AIDETECT_HOME": str(tmp / "home"),
            "AIDETECT_STORE_URL": str(store_root),
            "AIDETECT_PUBLIC_URL": serving,
            "AIDETECT_ALIAS_POLL_SECONDS": "1",
            "AIDETECT_LOG_FLUSH_SECONDS": "1",
        }
        os.environ.update(env)  # this process runs the flows: before prefect and the settings are imported
        bin_dir = Path(sys.executable).parent
        server = _start(
            [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            env,
            tmp / "prefect.log",
        )
        service = _start(
            [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory", "--port", str(serving_port)],
            env,
            tmp / "serving.log",
        )
        try:
            wait_http(f"{prefect}/api/health", 180)
            wait_http(f"{serving}/healthz", 120)
            from flows.drift import monitor_drift
            from flows.retrain import retrain
            from model.sources import import_dataset
            from storage import LocalStore
            from tests.flows.test_retrain import EPOCHS

            store = LocalStore(store_root)
            import_dataset(store, extract_subset(shared_data("cifake-dev.tar.gz"), tmp / "cifake", 600), "cifake")
            first = retrain(datasets=["cifake"], warm_start=False, reason="screenshot", **EPOCHS)
            second = retrain(datasets=["cifake"], reason="screenshot", **EPOCHS)
            live = second["version"] if second["promoted"] else first["version"]
            print("retrained:", first["version"], "then", second["version"], "promoted:", second["promoted"])
            newgen = extract_subset(shared_data("newgen-dev.tar.gz"), tmp / "newgen", None)
            sent = _predict_newgen(serving, newgen, live)
            _wait_logged(store, live, sent)
            drift = monitor_drift(min_rows=50)
            print("drift:", drift["status"], drift.get("report"))
            _shoot(prefect, _newest_artifact_id("retrain"), _newest_artifact_id("monitor-drift"))
        finally:
            for process in (service, server):
                process.terminate()
                process.wait(60)
    for picture in ("prefect-retrain-artifact.png", "prefect-drift-artifact.png", "prefect-drift-report.png"):
        print(DOCS / picture)


if __name__ == "__main__":
    main()
