"""Quarantine and acceptance: floods, agreement, disagreement, reviews, per-client caps."""

from __future__ import annotations

from datetime import timedelta

from feedback.policy import Policy, Review, decide, select_for_training
from feedback.records import FeedbackRecord
from storage.layout import utcnow

DEFAULTS = {"min_agreeing_clients": 2, "max_per_client": 50}  # the settings defaults, spelled out to test them

START = utcnow()


def report(sha: str, claimed: str, client: str, predicted: str | None = None, minute: int = 0) -> FeedbackRecord:
    """A report claiming ``claimed``; by default the model had said the opposite (a miss)."""
    return FeedbackRecord(
        image_sha256=sha,
        image_key=f"images/{sha}.jpg",
        claimed_label=claimed,  # type: ignore[arg-type]
        predicted_label=predicted if predicted is not None else ("real" if claimed == "ai" else "ai"),
        client=client,
        created_at=START + timedelta(minutes=minute),
    )


def review(record: FeedbackRecord, decision: str, minute: int = 0) -> Review:
    return Review(record.id, decision, "alice", (START + timedelta(minutes=minute)).isoformat())  # type: ignore[arg-type]


def chosen(records: list[FeedbackRecord], reviews: dict[str, Review] | None = None, **policy: int) -> dict[str, str]:
    selected = select_for_training(records, reviews or {}, Policy(**{**DEFAULTS, **policy}))
    return {r.image_sha256: label for r, label in selected}


def test_a_flood_of_flipped_labels_from_one_client_enters_nothing() -> None:
    honest = [report(f"h{i}", "ai", client) for i in range(3) for client in ("x", "y")]
    flood = [report(f"f{i}", "real", "attacker", minute=1) for i in range(1000)]
    assert chosen(honest) == {"h0": "ai", "h1": "ai", "h2": "ai"}
    assert chosen(honest + flood) == chosen(honest)  # the next version is exactly what it would have been
    statuses = decide(flood, {}, Policy(**DEFAULTS))
    assert {d.status for d in statuses.values()} == {"quarantined"}
    assert "1 more independent report" in next(iter(statuses.values())).reason


def test_a_flood_with_an_accomplice_is_capped_per_client() -> None:
    flood = [report(f"f{i}", "real", who, minute=i) for i in range(1000) for who in ("attacker", "accomplice")]
    selected = chosen(flood, max_per_client=50)
    assert len(selected) == 50
    assert set(selected) == {f"f{i}" for i in range(50)}  # oldest first


def test_the_same_client_repeating_a_claim_counts_once() -> None:
    repeats = [report("a", "ai", "c", minute=m) for m in range(5)]
    assert chosen(repeats) == {}
    assert chosen([*repeats, report("a", "ai", "d", minute=9)]) == {"a": "ai"}


def test_independent_clients_agree_disagree_and_reviewers_decide() -> None:
    agree = [report("a", "ai", "c1"), report("a", "ai", "c2")]
    disagree = [report("b", "ai", "c1"), report("b", "ai", "c2"), report("b", "real", "c3")]
    right = [report("r", "ai", "c1", predicted="ai"), report("r", "ai", "c2", predicted="ai")]
    records = agree + disagree + right
    decisions = decide(records, {}, Policy(**DEFAULTS))
    assert decisions[agree[0].id].status == "accepted"
    assert {decisions[r.id].status for r in disagree} == {"rejected"}
    assert "clients disagree" in decisions[disagree[0].id].reason
    assert chosen(records) == {"a": "ai"}  # the model was already right about "r"

    # a reviewer settles the disagreement, and may overrule a crowd
    reviews = {disagree[2].id: review(disagree[2], "accept"), agree[0].id: review(agree[0], "reject")}
    decisions = decide(records, reviews, Policy(**DEFAULTS))
    assert decisions[disagree[2].id].status == "accepted"
    assert decisions[disagree[0].id].status == "rejected"
    assert "contradicts" in decisions[disagree[0].id].reason
    assert decisions[agree[0].id].status == "rejected" and decisions[agree[1].id].status == "quarantined"
    assert chosen(records, reviews) == {"b": "real"}


def test_reviewer_acceptances_are_not_capped_and_the_latest_decision_wins() -> None:
    lone = [report(f"l{i}", "ai", "one-client", minute=i) for i in range(5)]
    reviews = {r.id: review(r, "accept") for r in lone}
    assert len(chosen(lone, reviews, max_per_client=2)) == 5
    reviews[lone[0].id] = review(lone[0], "reject", minute=5)
    assert "l0" not in chosen(lone, reviews, max_per_client=2)


def test_the_policy_numbers_come_from_the_settings(monkeypatch) -> None:
    from aidetect.settings import Settings
    from feedback.policy import configured_policy

    assert configured_policy(Settings()) == Policy(**DEFAULTS)
    monkeypatch.setenv("AIDETECT_FEEDBACK_MIN_AGREEING_CLIENTS", "3")
    assert configured_policy(Settings()).min_agreeing_clients == 3
    assert configured_policy(Settings(), max_per_client=7) == Policy(min_agreeing_clients=3, max_per_client=7)
