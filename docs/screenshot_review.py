"""Regenerate docs/review-page.png: the review page with a queue, in Debian's chromium.

Serves a stand-in model (P(ai) = mean brightness: the page, not the model, is on show) and the
reports of the review tests (tests/serving/test_review.py: a conflict, claims the model agrees
and disagrees with), four of them about images from ../shared/data/cifake-dev.tar.gz.

    .venv/bin/python docs/screenshot_review.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "review-page.png"


def _dataset_images(folder: Path) -> list[bytes]:
    from tests.helpers import SHARED_DATA, extract_subset

    root = extract_subset(SHARED_DATA / "cifake-dev.tar.gz", folder, per_class=2)
    return [p.read_bytes() for p in sorted(root.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png")][:4]


def main() -> None:
    from playwright.sync_api import sync_playwright

    from tests.helpers import free_port, wait_http
    from tests.serving.conftest import CHROMIUM
    from tests.serving.test_hardening import mean_model_store
    from tests.serving.test_review import TOKEN, review_reports

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        store = mean_model_store(tmp)
        pictures = _dataset_images(tmp / "data")
        review_reports(store, images=dict(zip(["far", "near", "agrees", "split"], pictures, strict=False)))
        port = free_port()
        env = {
            **os.environ,
            "AIDETECT_HOME": str(tmp / "home"),
            "AIDETECT_STORE_URL": str(store.root),
            "AIDETECT_REVIEWER_TOKEN": TOKEN,
            "AIDETECT_PREDICTION_LOG": "false",
        }
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
                page = browser.new_page(viewport={"width": 1000, "height": 1000})
                page.goto(url + "/review")
                page.fill("#token", TOKEN)
                page.fill("#reviewer", "carol")
                page.click("#open")
                page.locator("#review").wait_for()
                page.wait_for_function(
                    "[...document.querySelectorAll('#queue img')].every(i => i.complete && i.naturalWidth > 0)"
                )
                page.keyboard.press("j")  # the second report current, the third selected: keyboard state on show
                page.keyboard.press("j")
                page.keyboard.press("x")
                page.keyboard.press("k")
                page.screenshot(path=str(OUT), full_page=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(30)
    print(OUT)


if __name__ == "__main__":
    main()
