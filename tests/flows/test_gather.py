"""gather-feedback: which reports become training data, and idempotency against a real Prefect API."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from feedback.records import FeedbackRecord
from feedback.selection import select_for_training
from feedback.store import save_feedback
from model.data import list_datasets, read_manifest, read_version_info
from storage import LocalStore
from storage.layout import put_image, utcnow
from tests.helpers import image_bytes


def _record(sha: str, claimed: str, predicted: str | None, minutes: int = 0, **kw: object) -> FeedbackRecord:
    return FeedbackRecord(
        image_sha256=sha,
        image_key=f"images/{sha}.jpg",
        claimed_label=claimed,  # type: ignore[arg-type]
        predicted_label=predicted,
        client="c",
        created_at=utcnow() + timedelta(minutes=minutes),
        **kw,  # type: ignore[arg-type]
    )


def test_selection_keeps_misclassified_unambiguous_images_once() -> None:
    records = [
        _record("a", "ai", "real"),  # misclassified: taken
        _record("a", "ai", "real", minutes=1),  # duplicate: counts once
        _record("b", "real", "real"),  # the model was right: not training data
        _record("c", "ai", "real"),
        _record("c", "real", "real", minutes=1),  # claimed both ways: left out
        _record("d", "real", None),  # no prediction on record: counts as a miss
        _record("e", "ai", "real", status="rejected"),
    ]
    chosen = select_for_training(records)
    assert sorted(r.image_sha256 for r in chosen) == ["a", "d"]


def test_gather_flow_writes_a_version_once(tmp_path: Path, prefect_api: None) -> None:
    from flows.gather import gather_feedback

    store = LocalStore(tmp_path / "store")
    url = str(store.root)
    assert gather_feedback(store_url=url) is None  # nothing reported yet
    for i in range(6):
        sha, key = put_image(store, image_bytes(seed=i), "jpg")
        record = _record(sha, "ai", "real" if i < 4 else "ai")
        save_feedback(store, record.model_copy(update={"image_key": key}))
    first = gather_feedback(store_url=url)
    assert first is not None
    manifest = read_manifest(store, "feedback", first).to_pylist()
    assert len(manifest) == 4 and {r["label"] for r in manifest} == {"ai"}
    assert gather_feedback(store_url=url) == first  # idempotent: nothing new, no new version
    assert list_datasets(store)["feedback"] == [first]

    sha, key = put_image(store, image_bytes(seed=99), "jpg")
    save_feedback(store, _record(sha, "real", "ai").model_copy(update={"image_key": key}))
    second = gather_feedback(store_url=url)
    assert second != first
    assert read_version_info(store, "feedback", second)["parents"] == [f"feedback@{first}"]
    assert len(read_manifest(store, "feedback", second)) == 5
