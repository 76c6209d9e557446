"""gather-feedback: which reports become training data, and idempotency against a real Prefect API."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from feedback.records import FeedbackRecord
from feedback.reviews import save_review
from feedback.store import iter_feedback, save_feedback
from model.datasets import list_datasets, read_manifest, read_version_info
from storage import LocalStore
from storage.layout import put_image, utcnow
from tests.helpers import image_bytes


def _record(
    sha: str, claimed: str, predicted: str | None, minutes: int = 0, client: str = "c", **kw: object
) -> FeedbackRecord:
    return FeedbackRecord(
        image_sha256=sha,
        image_key=f"images/{sha}.jpg",
        claimed_label=claimed,  # type: ignore[arg-type]
        predicted_label=predicted,
        client=client,
        created_at=utcnow() + timedelta(minutes=minutes),
        **kw,  # type: ignore[arg-type]
    )


def test_gather_flow_writes_a_version_once(tmp_path: Path, prefect_api: None) -> None:
    from flows.gather import gather_feedback

    store = LocalStore(tmp_path / "store")
    url = str(store.root)
    assert gather_feedback(store_url=url) is None  # nothing reported yet
    for i in range(6):
        sha, key = put_image(store, image_bytes(seed=i), "jpg")
        record = _record(sha, "ai", "real" if i < 4 else "ai")
        save_feedback(store, record.model_copy(update={"image_key": key}))
    assert gather_feedback(store_url=url) is None  # one client's reports wait in quarantine
    # image 5: two clients agree, but the model was right about it: not training data
    save_feedback(store, _record(sha, "ai", "ai", client="other").model_copy(update={"image_key": key}))
    for i in range(3):  # a second client agrees about images 0-2; a reviewer accepts image 3's report
        sha, key = put_image(store, image_bytes(seed=i), "jpg")
        save_feedback(store, _record(sha, "ai", "real", client="other").model_copy(update={"image_key": key}))
    sha3, _ = put_image(store, image_bytes(seed=3), "jpg")
    report3 = next(r for r in iter_feedback(store) if r.image_sha256 == sha3)
    save_review(store, report3.id, "accept", "alice")
    first = gather_feedback(store_url=url)
    assert first is not None
    manifest = read_manifest(store, "feedback", first).to_pylist()
    assert len(manifest) == 4 and {r["label"] for r in manifest} == {"ai"}
    assert gather_feedback(store_url=url) == first  # idempotent: nothing new, no new version
    assert list_datasets(store)["feedback"] == [first]

    sha, key = put_image(store, image_bytes(seed=99), "jpg")
    for client in ("c", "other"):
        save_feedback(store, _record(sha, "real", "ai", client=client).model_copy(update={"image_key": key}))
    second = gather_feedback(store_url=url)
    assert second != first
    assert read_version_info(store, "feedback", second)["parents"] == [f"feedback@{first}"]
    assert len(read_manifest(store, "feedback", second)) == 5


def test_gather_is_incremental_holds_out_a_regression_set_and_asks_for_a_retrain(
    tmp_path: Path, prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.gather
    from flows.gather import gather_feedback

    emitted: list[dict[str, Any]] = []
    monkeypatch.setattr(flows.gather, "emit_event", lambda **event: emitted.append(event))

    store = LocalStore(tmp_path / "store")
    url = str(store.root)
    reports: dict[int, str] = {}

    def report(i: int, label: str = "ai") -> None:
        sha, key = put_image(store, image_bytes(seed=1000 + i), "jpg")
        for client in ("a", "b"):  # two independent clients agree
            record = _record(sha, label, "real" if label == "ai" else "ai", client=client)
            save_feedback(store, record.model_copy(update={"image_key": key}))
        reports[i] = sha

    for i in range(30):
        report(i)
    first = gather_feedback(store_url=url, retrain_after=1000)
    assert first is not None
    rows = {r["sha256"]: r for r in read_manifest(store, "feedback", first).to_pylist()}
    info = read_version_info(store, "feedback", first)
    assert len(rows) == 30 and info["added"] == 30 and info["withdrawn"] == 0
    held_out = {sha for sha, r in rows.items() if r["split"] == "test"}
    assert info["regression_set"] == len(held_out) >= 1  # ~20% of 30 (content-hashed)

    # a reviewer rejects one taken claim, and five new images are accepted
    withdrawn = reports[0]
    report_id = next(r.id for r in iter_feedback(store) if r.image_sha256 == withdrawn)
    save_review(store, report_id, "reject", "alice")
    for i in range(30, 35):
        report(i)
    second = gather_feedback(store_url=url, retrain_after=1000)
    info2 = read_version_info(store, "feedback", second)
    rows2 = {r["sha256"]: r for r in read_manifest(store, "feedback", second).to_pylist()}
    assert info2["parents"] == [f"feedback@{first}"]
    assert info2["added"] == 5 and info2["withdrawn"] == 1
    assert withdrawn not in rows2 and len(rows2) == 34
    # what was taken keeps its split: the held-out images stay held out
    assert all(rows2[sha]["split"] == "test" for sha in held_out - {withdrawn})
    assert gather_feedback(store_url=url) == second  # nothing changed: no version

    assert not emitted  # below the bar (1000): no event

    # no model is live yet, so every taken training image is new to it: crossing the bar, an event
    waiting = sum(r["split"] == "train" for r in rows2.values())
    bar = waiting + 1
    for i in range(40, 45):  # five more images: some land in the training split
        report(i)
    third = gather_feedback(store_url=url, retrain_after=bar)
    assert [e["event"] for e in emitted] == ["aidetect.feedback.ready"]
    assert emitted[0]["payload"]["version"] == third and emitted[0]["payload"]["pending"] >= bar
    # one more image, still under the next multiple of the bar: no second request
    report(45)
    assert gather_feedback(store_url=url, retrain_after=bar) != third
    assert len(emitted) == 1
