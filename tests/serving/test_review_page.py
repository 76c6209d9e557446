"""The review page (``/review``) in a real browser (Debian's chromium via Playwright) against real uvicorn.

A bad token is refused on the page; then, from the keyboard, accept (a), move and reject (j, r),
select and bulk-accept (x, space, shift+A), and with the mouse reject one and bulk-reject the
rest; every decision lands in the store as an append-only review and leaves the queue.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from feedback.reviews import load_reviews
from storage import LocalStore
from tests.helpers import serving_process
from tests.serving.test_hardening import mean_model_store
from tests.serving.test_review import EXPECTED_ORDER, TOKEN, _report, grey_png, review_reports


@pytest.fixture(scope="module")
def review_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, LocalStore, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("review-page")
    store = mean_model_store(tmp)
    ids = review_reports(store)
    # two more, both agreeing with the live model, the oldest last: P(ai) 0.70 and 0.30 (0.20 from 0.5)
    ids["old_ai"] = _report(store, grey_png(179), "ai", "c-old-ai", -20, ("ai", 0.7))
    ids["old_real"] = _report(store, grey_png(77), "real", "c-old-real", -10, ("real", 0.3))
    env = {
        "AIDETECT_HOME": str(tmp / "home"),
        "AIDETECT_STORE_URL": str(store.root),
        "AIDETECT_REVIEWER_TOKEN": TOKEN,
        "AIDETECT_PREDICTION_LOG": "false",
    }
    with serving_process(env, tmp / "serving.log") as (_, base):
        yield base, store, ids


def test_the_review_page_from_the_keyboard_and_the_mouse(
    review_server: tuple[str, LocalStore, dict[str, str]], browser: object
) -> None:
    base, store, ids = review_server
    names = {v: k for k, v in ids.items()}
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(base + "/review")
    page.locator("#login").wait_for()
    assert page.inner_text("#message") == ""

    page.fill("#token", "not-the-token-0123456789")
    page.click("#open")
    page.wait_for_function("document.getElementById('message').textContent.includes('Refused')")
    assert page.inner_text("#message") == "Refused: the reviewer token is wrong."
    assert page.locator("#login").is_visible() and not page.locator("#review").is_visible()
    assert page.evaluate("sessionStorage.getItem('aidetect.reviewer_token')") is None

    page.fill("#token", TOKEN)
    page.fill("#reviewer", "carol")
    page.click("#open")
    page.locator("#review").wait_for()
    order = ["near", "split_ai", "far", "agrees", "old_real", "old_ai", "split_real"]
    assert order[:4] == EXPECTED_ORDER[:4]  # the two added ones (0.20 from the threshold) sort among the agreeing

    def queue() -> list[str]:
        return [names[i] for i in page.locator("#queue .item").evaluate_all("els => els.map(e => e.dataset.id)")]

    def wait_count(n: int) -> None:
        page.wait_for_function(f"document.querySelectorAll('#queue .item').length === {n}")

    assert queue() == order
    assert page.inner_text("#count") == "7 report(s) awaiting review"
    assert page.inner_text("#order").startswith("Order: Reports whose claim the live model disagrees with come first")
    first = page.locator("#queue .item").first
    assert "current" in (first.get_attribute("class") or "")
    assert "Claims real" in first.inner_text() and "P(ai) 0.600" in first.inner_text()
    assert "conflict" in page.locator("#queue .item").nth(1).inner_text()
    page.wait_for_function(
        "[...document.querySelectorAll('#queue img')].every(i => i.complete && i.naturalWidth === 32)"
    )

    page.keyboard.press("a")  # accept the current report (the first)
    wait_count(6)
    assert queue() == order[1:] and "Accepted 1 report(s) as carol" in page.inner_text("#message")
    page.keyboard.press("j")
    page.keyboard.press("r")  # reject the second: far
    wait_count(5)
    assert queue() == ["split_ai", "agrees", "old_real", "old_ai", "split_real"]
    # current stays at the second place: agrees; select it and the next (space), then shift+A
    page.keyboard.press("x")
    page.keyboard.press("ArrowDown")
    page.keyboard.press(" ")
    assert page.inner_text("#accept-selected") == "Accept selected (2)"
    page.keyboard.press("Shift+A")
    wait_count(3)
    assert queue() == ["split_ai", "old_ai", "split_real"]

    page.locator("#queue .item").first.locator("button.reject").click()  # the mouse: reject split_ai
    wait_count(2)
    page.click("#select-all")
    page.click("#reject-selected")
    wait_count(0)
    assert page.locator("#empty").is_visible() and page.inner_text("#count") == "0 report(s) awaiting review"

    reviews = load_reviews(store)
    decided = {name: reviews[ids[name]].decision for name in order if ids[name] in reviews}
    assert decided == {
        "near": "accept",
        "far": "reject",
        "agrees": "accept",
        "old_real": "accept",
        "split_ai": "reject",
        "old_ai": "reject",
        "split_real": "reject",
    }
    assert {reviews[ids[name]].reviewer for name in decided} == {"carol"}
    page.close()
