"""The review API (``/v1/review/*``, serving.routes.review) and the review backlog gauge.

Against the real app (TestClient runs its lifespan: the model loads, the backlog poll runs)
with the mean-brightness model, so each image's live P(ai) is known: a solid grey of value v
scores v / 255.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from aidetect.settings import InsecureSettings, Settings
from feedback.policy import Review, configured_policy
from feedback.records import FeedbackRecord
from feedback.review_queue import REVIEW_ORDER, awaiting_review
from feedback.reviews import load_reviews
from feedback.store import save_feedback
from serving.app import create_app
from serving.schemas import REVIEW_BATCH_MAX
from storage import LocalStore, ObjectStore
from storage.layout import put_image, review_prefix
from tests.serving.test_hardening import mean_model_store, settings_for

TOKEN = "review-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
START = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def grey_png(value: int, size: int = 32) -> bytes:
    """A solid grey image: the mean-brightness model scores it value / 255."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _report(
    store: ObjectStore, image: bytes, claim: str, client: str, minutes: int, predicted: tuple[str, float] | None = None
) -> str:
    sha, key = put_image(store, image, "png")
    label, score = predicted or (None, None)
    record = FeedbackRecord(
        image_sha256=sha,
        image_key=key,
        claimed_label=claim,  # type: ignore[arg-type]
        predicted_label=label,
        predicted_score=score,
        model_version="v-then" if predicted else None,
        client=client,
        created_at=START + timedelta(minutes=minutes),
    )
    save_feedback(store, record)
    return record.id


def review_reports(store: ObjectStore, images: dict[str, bytes] | None = None) -> dict[str, str]:
    """Seven reports; five await review. By name: (claim; live P(ai) of the image; why it waits).

    far (real; 0.90: disagrees, 0.40 from the threshold), near (real; 0.60: disagrees, 0.10),
    agrees (ai; 0.55: agrees, 0.05), split_ai and split_real (ai and real, two clients, one image at
    0.20: a conflict; split_ai disagrees, 0.30), agreed (two clients agree: accepted, not waiting),
    reviewed (a reviewer rejected it: not waiting). ``images`` replaces the grey image of a name.
    """
    images = images or {}
    ids = {
        "far": _report(store, images.get("far", grey_png(230)), "real", "c-far", 0, ("ai", 0.9)),
        "near": _report(store, images.get("near", grey_png(153)), "real", "c-near", 1, ("ai", 0.6)),
        "agrees": _report(store, images.get("agrees", grey_png(140)), "ai", "c-agrees", 2, ("real", 0.45)),
    }
    split = images.get("split", grey_png(51))
    ids["split_ai"] = _report(store, split, "ai", "c-split-1", 3, ("real", 0.2))
    ids["split_real"] = _report(store, split, "real", "c-split-2", 4, ("real", 0.2))
    agreed = grey_png(10)
    _report(store, agreed, "real", "c-agreed-1", 5)
    _report(store, agreed, "real", "c-agreed-2", 6)
    ids["reviewed"] = _report(store, grey_png(99), "ai", "c-reviewed", 7)
    from feedback.reviews import save_review

    save_review(store, ids["reviewed"], "reject", "earlier")
    return ids


# the queue's order for review_reports: disagreeing first by |P(ai) - 0.5|, then agreeing
EXPECTED_ORDER = ["near", "split_ai", "far", "agrees", "split_real"]


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return mean_model_store(tmp_path)


@pytest.fixture
def client(tmp_path: Path, store: LocalStore) -> Iterator[TestClient]:
    settings = settings_for(tmp_path, store, reviewer_token=TOKEN, prediction_log=False)
    with TestClient(create_app(settings)) as client:
        yield client


def _backlog_metric(client: TestClient) -> float | None:
    match = re.search(r"^aidetect_review_backlog (\S+)$", client.get("/metrics").text, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_review_is_refused_without_the_token_and_disabled_without_a_setting(tmp_path: Path, store: LocalStore) -> None:
    with TestClient(create_app(settings_for(tmp_path, store, prediction_log=False))) as off:
        for response in (
            off.get("/v1/review/queue", headers=AUTH),
            off.post("/v1/review", json={"decisions": []}, headers=AUTH),
        ):
            assert response.status_code == 403
            assert "AIDETECT_REVIEWER_TOKEN" in response.json()["detail"]
        page = off.get("/review")  # static: the same page, which says review is disabled when the API does
        assert page.status_code == 200 and "Review is disabled" in page.text and TOKEN not in page.text
    with TestClient(create_app(settings_for(tmp_path, store, reviewer_token=TOKEN, prediction_log=False))) as on:
        assert on.get("/v1/review/queue").json()["detail"] == "a reviewer token is required"
        for bad in ("Bearer wrong-token-0123456789", f"Basic {TOKEN}", TOKEN):
            response = on.get("/v1/review/queue", headers={"Authorization": bad})
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert on.get("/v1/review/queue", headers={"Authorization": "Bearer nope"}).json()["detail"] == (
            "the reviewer token is wrong"
        )
        assert on.get("/v1/review/reports/20261130aaaaaaaaaaaa/image").status_code == 401
        assert on.get("/v1/review/queue", headers=AUTH).status_code == 200


def test_a_placeholder_reviewer_token_is_refused_with_an_s3_store() -> None:
    with pytest.raises(InsecureSettings, match="AIDETECT_REVIEWER_TOKEN is a placeholder"):
        Settings(store_url="s3://bucket/prefix", reviewer_token="changeme").check_serving_security()  # type: ignore[arg-type]
    Settings(reviewer_token="changeme").check_serving_security()  # type: ignore[arg-type]  # embedded: allowed


def test_the_queue_holds_what_awaits_review_in_the_stated_order(client: TestClient, store: LocalStore) -> None:
    ids = review_reports(store)
    names = {v: k for k, v in ids.items()}
    queue = client.get("/v1/review/queue", headers=AUTH).json()
    assert queue["order"] == REVIEW_ORDER and queue["total"] == 5 and queue["model_version"]
    assert [names[item["id"]] for item in queue["items"]] == EXPECTED_ORDER
    by_name = {names[item["id"]]: item for item in queue["items"]}
    near = by_name["near"]
    assert near["claimed_label"] == "real" and near["client"] == "c-near" and near["status"] == "quarantined"
    assert near["then"] == {"label": "ai", "probability": 0.6, "model_version": "v-then"}
    assert near["now"]["label"] == "ai" and near["now"]["probability"] == pytest.approx(0.6, abs=0.005)
    assert near["now"]["model_version"] == queue["model_version"]
    assert not near["conflict"] and near["other_reports"] == []
    assert near["age_seconds"] > 0 and "more independent report" in near["reason"]
    split = by_name["split_ai"]
    assert split["conflict"] and split["status"] == "rejected" and "clients disagree" in split["reason"]
    assert split["now"]["label"] == "real" and split["now"]["probability"] == pytest.approx(0.2, abs=0.005)
    assert [(o["id"], o["client"], o["claimed_label"]) for o in split["other_reports"]] == [
        (ids["split_real"], "c-split-2", "real")
    ]
    assert by_name["split_real"]["conflict"] and by_name["agrees"]["now"]["label"] == "ai"
    image = client.get(near["image_url"], headers=AUTH)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == grey_png(153)
    assert [names[i["id"]] for i in client.get("/v1/review/queue?limit=2", headers=AUTH).json()["items"]] == [
        "near",
        "split_ai",
    ]
    assert _backlog_metric(client) == 5  # a queue read refreshes the gauge


def test_accept_reject_and_bulk_are_appended_and_leave_the_queue(client: TestClient, store: LocalStore) -> None:
    ids = review_reports(store)
    one = {"decisions": [{"report_id": ids["near"], "decision": "accept"}], "reviewer": "alice"}
    answer = client.post("/v1/review", json=one, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "reviewer": "alice",
        "reviewed": [{"report_id": ids["near"], "decision": "accept", "status": "accepted"}],
        "backlog": 4,
    }
    bulk = {
        "decisions": [
            {"report_id": ids["far"], "decision": "reject", "reason": "a photo of a painting"},
            {"report_id": ids["split_ai"], "decision": "accept"},
        ]
    }
    answer = client.post("/v1/review", json=bulk, headers=AUTH).json()
    assert [(r["decision"], r["status"]) for r in answer["reviewed"]] == [
        ("reject", "rejected"),
        ("accept", "accepted"),
    ]
    assert answer["reviewer"] == "web" and answer["backlog"] == 1  # split_real left too: its image is settled
    queue = client.get("/v1/review/queue", headers=AUTH).json()
    assert [item["id"] for item in queue["items"]] == [ids["agrees"]]
    reviews = load_reviews(store)
    assert reviews[ids["near"]].decision == "accept" and reviews[ids["near"]].reviewer == "alice"
    assert reviews[ids["far"]].decision == "reject" and reviews[ids["far"]].note == "a photo of a painting"
    assert reviews[ids["split_ai"]].reviewer == "web" and ids["split_real"] not in reviews
    # append-only: a second decision is a second object, and the latest wins
    client.post("/v1/review", json={"decisions": [{"report_id": ids["near"], "decision": "reject"}]}, headers=AUTH)
    assert len(list(store.list(review_prefix(ids["near"])))) == 2
    assert load_reviews(store)[ids["near"]].decision == "reject"
    assert _backlog_metric(client) == 1  # each decision refreshes the gauge: only agrees still waits


def test_bad_decisions_are_refused_and_nothing_is_written(client: TestClient, store: LocalStore) -> None:
    ids = review_reports(store)
    known = {"report_id": ids["near"], "decision": "accept"}
    cases = [
        (
            {"decisions": [known, {"report_id": "20261130aaaaaaaaaaaa", "decision": "accept"}]},
            404,
            "no feedback report",
        ),
        ({"decisions": [{"report_id": "../../etc/passwd", "decision": "accept"}]}, 404, "no feedback report"),
        ({"decisions": [{"report_id": ids["near"], "decision": "maybe"}]}, 422, "accept"),
        ({"decisions": []}, 422, "at least 1"),
        ({"decisions": [known] * (REVIEW_BATCH_MAX + 1)}, 422, f"at most {REVIEW_BATCH_MAX}"),
        ({"decisions": [known, {**known, "decision": "reject"}]}, 422, "decided twice"),
        ({"decisions": [known], "reviewer": "<script>"}, 422, "pattern"),
        ({"decisions": [{**known, "reason": "x" * 2001}]}, 422, "2000"),
    ]
    for body, code, message in cases:
        response = client.post("/v1/review", json=body, headers=AUTH)
        assert response.status_code == code, (body, response.text)
        assert message in str(response.json()["detail"])
    assert set(load_reviews(store)) == {ids["reviewed"]}  # only the review made before
    assert client.get("/v1/review/reports/20261130aaaaaaaaaaaa/image", headers=AUTH).status_code == 404
    assert client.get("/v1/review/reports/not-an-id/image", headers=AUTH).json()["detail"] == (
        "no feedback report 'not-an-id'"
    )
    assert client.get("/v1/review/queue?limit=0", headers=AUTH).status_code == 422


def test_the_backlog_gauge_follows_the_store(tmp_path: Path, store: LocalStore) -> None:
    settings = settings_for(
        tmp_path, store, reviewer_token=TOKEN, prediction_log=False, review_backlog_poll_seconds=0.2
    )
    with TestClient(create_app(settings)) as client:
        review_reports(store)  # written behind serving's back: only the periodic count sees them
        deadline = time.monotonic() + 60
        while _backlog_metric(client) != 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _backlog_metric(client) == 5
        metrics = client.get("/metrics").text
        oldest = re.search(r"^aidetect_review_backlog_oldest_timestamp_seconds (\S+)$", metrics, re.MULTILINE)
        assert oldest and float(oldest.group(1)) == START.timestamp()
        assert "aidetect_review_backlog_read_errors_total 0.0" in metrics


def test_a_conflict_ends_when_a_reviewer_rejects_one_side() -> None:
    record = dict(image_sha256="s" * 64, image_key="images/s.png", predicted_label="real")
    ai = FeedbackRecord(claimed_label="ai", client="a", created_at=START, **record)  # type: ignore[arg-type]
    real = FeedbackRecord(claimed_label="real", client="b", created_at=START, **record)  # type: ignore[arg-type]
    policy = configured_policy(Settings())
    assert [(w.record.id, w.conflict) for w in awaiting_review([ai, real], {}, policy)] == [
        (r.id, True) for r in sorted([ai, real], key=lambda r: r.id)
    ]
    rejected = {ai.id: Review(ai.id, "reject", "r", START.isoformat())}
    assert [(w.record.id, w.conflict) for w in awaiting_review([ai, real], rejected, policy)] == [(real.id, False)]


def test_an_empty_reviewer_token_is_unset_and_a_placeholder_is_refused() -> None:
    """compose passes an unset .env value as "": review is off, serving starts; a placeholder is refused."""
    from aidetect.settings import InsecureSettings, Settings

    assert Settings(reviewer_token="", store_url="s3://bucket/prefix").reviewer_token is None  # type: ignore[arg-type]
    Settings(reviewer_token="", store_url="s3://bucket/prefix").check_serving_security()  # type: ignore[arg-type]
    with pytest.raises(InsecureSettings, match="AIDETECT_REVIEWER_TOKEN"):
        Settings(reviewer_token="CHANGE_ME", store_url="s3://bucket/prefix").check_serving_security()  # type: ignore[arg-type]
