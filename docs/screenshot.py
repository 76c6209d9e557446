"""Regenerate docs/screenshot.png: the web page with a result and the Model section, in Debian's chromium.

Serves a stand-in model (P(ai) = mean brightness: the page, not the model, is on show; its card
and two plots made up as a retrain would register them) and a made-up picture (never a dataset
image). The Prefect UI's screenshots come from docs/prefect_screenshots.py.

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

    from tests.helpers import free_port, wait_http
    from tests.serving.conftest import CHROMIUM
    from tests.serving.test_browser import synthetic_image
    from tests.serving.test_reports import plotted_model_store

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        store, _, _ = plotted_model_store(tmp, blessed=True)
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
                page.wait_for_function("[...document.querySelectorAll('#model-plots img')].every(i => i.naturalWidth)")
                page.screenshot(path=str(ROOT / "docs" / "screenshot.png"), full_page=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(30)
    print(ROOT / "docs" / "screenshot.png")


if __name__ == "__main__":
    main()
