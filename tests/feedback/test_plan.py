"""The next feedback dataset version, planned without Prefect or a store."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest

import feedback.plan
from feedback.plan import NextVersion, NothingNew, plan_next_version
from feedback.policy import Policy, Review
from feedback.records import FeedbackRecord
from model.datasets import split_of
from storage.layout import utcnow

POLICY = Policy(min_agreeing_clients=2, max_per_client=50)
START = utcnow()


def sha(i: int | str) -> str:
    return hashlib.sha256(f"image {i}".encode()).hexdigest()


def agreed(sha: str, label: str = "ai", minute: int = 0, predicted: str | None = None) -> list[FeedbackRecord]:
    """Two independent clients make the same claim (by default the model had said the opposite)."""
    said = predicted if predicted is not None else ("real" if label == "ai" else "ai")
    return [
        FeedbackRecord(
            image_sha256=sha,
            image_key=f"images/{sha}.jpg",
            claimed_label=label,  # type: ignore[arg-type]
            predicted_label=said,
            client=client,
            generator="gen-x",
            created_at=START + timedelta(minutes=minute),
        )
        for client in ("a", "b")
    ]


def plan(
    records: list[FeedbackRecord],
    previous: list[dict[str, Any]] | None = None,
    reviews: dict[str, Review] | None = None,
    **options: Any,
) -> NextVersion | NothingNew:
    settings: dict[str, Any] = {"trained_on": set(), "holdout_share": 0.2, "retrain_after": 50, **options}
    parent = "feedback@v1" if previous is not None else None
    return plan_next_version(parent, previous or [], records, reviews or {}, POLICY, **settings)


def test_accepted_misclassified_images_become_rows_with_their_reports() -> None:
    records = [r for i in range(10) for r in agreed(sha(i), minute=i)]
    right = agreed(sha("right"), predicted="ai")  # the model was right: not training data
    result = plan(records + right)
    assert isinstance(result, NextVersion)
    assert [r["sha256"] for r in result.rows] == sorted(sha(i) for i in range(10))
    assert result.parents == [] and result.added == result.rows and result.withdrawn == 0
    assert result.accepted == 10
    first = result.rows[0]
    assert first["key"] == f"images/{first['sha256']}.jpg" and first["label"] == "ai" and first["generator"] == "gen-x"
    assert first["source"].startswith("feedback:")
    assert all(r["split"] == split_of(r["sha256"], test_share=0.2) for r in result.rows)
    assert result.regression_set == sum(r["split"] == "test" for r in result.rows)
    # every agreeing report is recorded, not only the one the row names
    assert result.feedback_ids == sorted(r.id for r in records)
    assert result.version_info() == {
        "added": 10,
        "withdrawn": 0,
        "regression_set": result.regression_set,
        "feedback_ids": result.feedback_ids,
    }
    everything = plan(records + right, misclassified_only=False)
    assert isinstance(everything, NextVersion) and len(everything.rows) == 11


def test_nothing_new_says_why() -> None:
    quarantined = agreed(sha("q"))[:1]  # one client only
    nothing = plan(quarantined)
    assert nothing == NothingNew("no usable feedback yet", 0)
    records = agreed(sha(0))
    first = plan(records)
    assert isinstance(first, NextVersion)
    again = plan(records + quarantined, previous=first.rows)
    assert again == NothingNew("nothing new since feedback@v1", 1)


def test_the_next_version_keeps_splits_and_withdraws_rejected_claims() -> None:
    records = [r for i in range(20) for r in agreed(sha(i), minute=i)]
    first = plan(records, holdout_share=0.5)
    assert isinstance(first, NextVersion)
    held_out = {r["sha256"] for r in first.rows if r["split"] == "test"}
    assert held_out
    # a reviewer rejects one taken claim; a new image is accepted; the share held out changes
    rejected = records[0]
    reviews = {rejected.id: Review(rejected.id, "reject", "alice", START.isoformat())}
    new = agreed(sha("new"), minute=30)
    second = plan(records + new, previous=first.rows, reviews=reviews, holdout_share=0.0)
    assert isinstance(second, NextVersion)
    assert second.parents == ["feedback@v1"] and second.withdrawn == 1
    assert [r["sha256"] for r in second.added] == [sha("new")] and second.added[0]["split"] != "test"
    assert sha(0) not in {r["sha256"] for r in second.rows} and len(second.rows) == 20
    assert {r["sha256"] for r in second.rows if r["split"] == "test"} == held_out - {sha(0)}  # kept their split
    assert rejected.id not in second.feedback_ids and new[0].id in second.feedback_ids


def test_a_retrain_is_asked_for_once_per_retrain_after_unseen_training_images() -> None:
    shas = [sha(i) for i in range(60)]
    records = [r for i, s in enumerate(shas) for r in agreed(s, minute=i)]

    def training(n: int) -> int:  # of the first n images, those in the train split
        return sum(split_of(s, test_share=0.0) == "train" for s in shas[:n])

    bar = training(30) - 1
    first = plan(records[:40], holdout_share=0.0, retrain_after=bar)  # 20 images
    assert isinstance(first, NextVersion) and first.pending == training(20) < bar
    assert not first.ask_for_retrain
    second = plan(records[:60], previous=first.rows, holdout_share=0.0, retrain_after=bar)
    assert isinstance(second, NextVersion) and second.pending == training(30) and second.ask_for_retrain
    third = plan(records[:62], previous=second.rows, holdout_share=0.0, retrain_after=bar)
    assert isinstance(third, NextVersion) and third.pending < 2 * bar and not third.ask_for_retrain
    # what the live model was trained on is not pending
    seen = {r["sha256"] for r in second.rows}
    known = plan(records[:62], previous=second.rows, holdout_share=0.0, retrain_after=bar, trained_on=seen)
    assert isinstance(known, NextVersion) and known.pending == training(31) - training(30)
    never = plan(records, holdout_share=0.0, retrain_after=0)
    assert isinstance(never, NextVersion) and not never.ask_for_retrain  # 0: never ask


def test_feedback_is_judged_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    judge = feedback.plan.judge_images

    def counting(*args: Any) -> Any:
        calls.append(1)
        return judge(*args)

    monkeypatch.setattr(feedback.plan, "judge_images", counting)
    assert isinstance(plan(agreed(sha(0))), NextVersion)
    assert len(calls) == 1


def test_a_holdout_share_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="holdout_share"):
        plan(agreed(sha(0)), holdout_share=0.9)
