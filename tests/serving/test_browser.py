"""The web page in a real browser (Debian's chromium driven by Playwright) against real uvicorn.

Upload, verdict, heatmap shown, annotated download received, history survives a reload,
"this is wrong" files feedback and shows its status, a bad file shows a message, the Model
section shows the live version's card and plots, and the layout fits a phone. Needs
/usr/bin/chromium (`.ci/run` installs it): missing, the test fails (the ``browser`` fixture is
in conftest.py).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.helpers import serving_process
from tests.serving.test_reports import plotted_model_store


def synthetic_image(size: int = 256) -> bytes:
    """A made-up picture (never a dataset image): a gradient sky, a sun and hills."""
    y = np.linspace(0, 1, size)[:, None, None]
    sky = (np.array([70, 130, 220]) * (1 - y) + np.array([250, 200, 150]) * y).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(sky, (size, size, 3)).copy())
    draw = ImageDraw.Draw(image)
    draw.ellipse((size * 0.6, size * 0.15, size * 0.8, size * 0.35), fill=(255, 230, 120))
    draw.polygon([(0, size), (size * 0.35, size * 0.55), (size * 0.7, size)], fill=(40, 110, 60))
    draw.polygon([(size * 0.4, size), (size * 0.75, size * 0.6), (size, size * 0.9), (size, size)], fill=(30, 90, 50))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("web")
    store, _, _ = plotted_model_store(tmp)  # the mean-brightness model, with a card and plots
    env = {"AIDETECT_HOME": str(tmp / "home"), "AIDETECT_STORE_URL": str(store.root)}
    with serving_process(env, tmp / "serving.log") as (_, base):
        yield base


def test_the_page_end_to_end(server: str, browser: object, tmp_path: Path) -> None:
    context = browser.new_context(accept_downloads=True)  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(server + "/")
    assert page.locator("#empty").is_visible()
    assert page.locator("#analyze").is_disabled()

    # the Model section: the live version's card, from GET /v1/model, and its plots from the store
    live = page.request.get(server + "/v1/model").json()
    page.wait_for_function("document.getElementById('model-summary').textContent.startsWith('Version')")
    assert f"Version {live['version']} (production, fp32) · mean-brightness" in page.inner_text("#model-summary")
    card = page.inner_text("#model-card")
    assert "cifake@20260101T000000000000Z-000001, feedback@20260102T000000000000Z-000002" in card
    assert live["metadata"]["parent_version"] in card and "imagenet" in card and "drift" in card
    assert page.inner_text("#model-gate") == "Gate: rejected"
    assert page.locator("#model-reasons li").all_inner_texts() == [
        "accuracy 0.8125 is below the floor 0.9000",
        "a note",
    ]
    rows = [row.split("\t") for row in page.locator("#model-metrics tr").all_inner_texts()]
    assert ["accuracy", "0.8125", "0.7500"] in rows and ["roc auc", "0.8750", "0.8750"] in rows
    plots = page.locator("#model-plots img")
    assert plots.count() == 2 and page.locator("#model-plots figcaption").all_inner_texts() == [
        "confusion matrix",
        "roc",
    ]
    page.wait_for_function(
        "[...document.querySelectorAll('#model-plots img')].every(i => i.complete && i.naturalWidth > 300)"
    )

    page.set_input_files("#file", files=[{"name": "hills.png", "mimeType": "image/png", "buffer": synthetic_image()}])
    page.click("#analyze")
    verdict = page.locator("#verdict")
    verdict.wait_for()
    page.wait_for_function("document.getElementById('verdict').textContent.includes('confidence')")
    assert any(title in verdict.inner_text() for title in ("AI-generated", "Human-made", "Uncertain"))
    assert "model " in page.locator("#details").inner_text()
    page.wait_for_function(
        "(() => { const h = document.getElementById('heatmap'); return h.complete && h.naturalWidth >= 256; })()"
    )

    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / "annotated.png"
    download.value.save_as(saved)
    assert Image.open(saved).format == "PNG" and Image.open(saved).width >= 256

    page.reload()
    items = page.locator("#history li")
    items.first.wait_for()
    assert items.count() == 1 and "hills.png" in items.first.inner_text()
    page.wait_for_function("document.querySelector('#history img').naturalWidth > 0")

    items.first.locator("button").click()
    page.click("#wrong")
    page.wait_for_function("document.getElementById('feedback').textContent.includes('quarantined')")
    assert "waiting for 1 more independent report" in page.locator("#feedback").inner_text()
    page.reload()
    page.locator("#history li").first.wait_for()
    assert "reported" in page.locator("#history li").first.inner_text()

    page.set_input_files(
        "#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image at all"}]
    )
    page.click("#analyze")
    page.wait_for_function("document.getElementById('message').className === 'error'")
    assert "not a recognised image" in page.locator("#message").inner_text()
    assert page.locator("#history li").count() == 1

    page.click("#clear")
    page.locator("#empty").wait_for(state="visible")
    context.close()


def test_the_page_fits_a_phone_and_works_from_the_keyboard(server: str, browser: object) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    context = browser.new_context(viewport={"width": 375, "height": 740})  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(server + "/")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    chooser = None
    for _ in range(3):  # headless chromium now and then drops a chooser opened from script: retry on a fresh page
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "drop"
        try:
            with page.expect_file_chooser(timeout=5000) as opened:
                page.keyboard.press("Enter")
            chooser = opened.value
            break
        except PlaywrightTimeout:
            page.reload()
    assert chooser is not None, "Enter on the drop zone never opened the file chooser"
    chooser.set_files(files=[{"name": "big.png", "mimeType": "image/png", "buffer": b"x" * (21 * 1024 * 1024)}])
    assert "too large" in page.locator("#message").inner_text()
    context.close()
