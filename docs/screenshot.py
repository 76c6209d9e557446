"""Regenerate docs/screenshot.png: the web page with a result, in Debian's chromium.

Serves a stand-in model (P(ai) = mean brightness: the page, not the model, is on show) and a
made-up picture (never a dataset image).

    .venv/bin/python docs/screenshot.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from playwright.sync_api import sync_playwright

    from model.registry import Registry
    from storage import LocalStore
    from tests.helpers import free_port, wait_http
    from tests.serving.onnx_models import mean_brightness_model
    from tests.serving.test_browser import CHROMIUM, synthetic_image
    from tests.serving.test_hardening import register_onnx

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        store = LocalStore(tmp / "store")
        registry = Registry(store)
        registry.promote(register_onnx(registry, mean_brightness_model(tmp / "m.onnx")), reason="screenshot")
        port = free_port()
        env = {**os.environ, "AIDETECT_HOME": str(tmp / "home"), "AIDETECT_STORE_URL": str(store.root)}
        server = subprocess.Popen(  # noqa: S603 - fixed arguments: this interpreter running uvicorn
            [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/readyz")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 900, "height": 1000})
                page.goto(url)
                image = {"name": "hills.png", "mimeType": "image/png", "buffer": synthetic_image()}
                page.set_input_files("#file", files=[image])
                page.click("#analyze")
                page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0")
                page.click("#wrong")
                page.wait_for_function("document.getElementById('feedback').textContent.includes('Report')")
                page.screenshot(path=str(ROOT / "docs" / "screenshot.png"), full_page=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(30)
    print(ROOT / "docs" / "screenshot.png")


if __name__ == "__main__":
    main()
