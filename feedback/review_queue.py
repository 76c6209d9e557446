"""The review queue: which reports await a reviewer, and in which order (pure: no store, no model).

A report awaits review while no reviewer has decided on it and its image has no accepted claim:
it is in quarantine (too few independent clients agree), or its image's clients disagree
(the policy rejects every claim of such an image until a reviewer decides). Reviewing one report
of an image can take the others out too: accepting a claim settles the image.

The order is ``review_priority``, described in words by ``REVIEW_ORDER`` (the review page
shows that text, the API returns it with the queue).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from feedback.policy import Policy, Review, decide_judged, judge_images
from feedback.records import FeedbackRecord


@dataclass(frozen=True)
class LiveScore:
    """What the live model says of a report's image now."""

    version: str
    label: str  # ai, real or uncertain
    probability: float  # calibrated P(ai)
    threshold: float  # the model's ai/real threshold on ``probability``


@dataclass
class Awaiting:
    """One report awaiting review, with the other reports of its image."""

    record: FeedbackRecord
    reason: str  # the policy's, e.g. "waiting for 1 more independent report(s) or a reviewer"
    conflict: bool  # clients disagree about this image
    same_image: list[FeedbackRecord] = field(default_factory=list)  # the image's other reports, oldest first
    statuses: dict[str, str] = field(default_factory=dict)  # status of each report of the image, by id


def awaiting_review(records: list[FeedbackRecord], reviews: dict[str, Review], policy: Policy) -> list[Awaiting]:
    """The reports awaiting a reviewer (oldest first), by the same policy as ``feedback.policy.decide``."""
    verdicts = judge_images(records, reviews, policy)
    decisions = decide_judged(verdicts, reviews)
    waiting: list[Awaiting] = []
    for verdict in verdicts.values():
        if verdict.status == "accepted":
            continue
        unreviewed = [r for r in verdict.records if r.id not in reviews]
        standing = {
            r.claimed_label for r in verdict.records if r.id not in reviews or reviews[r.id].decision != "reject"
        }
        statuses: dict[str, str] = {r.id: decisions[r.id].status for r in verdict.records}
        for record in unreviewed:
            others = [r for r in verdict.records if r.id != record.id]
            waiting.append(Awaiting(record, decisions[record.id].reason, len(standing) > 1, others, statuses))
    waiting.sort(key=lambda a: (a.record.created_at, a.record.id))
    return waiting


REVIEW_ORDER = (
    "Reports whose claim the live model disagrees with come first (its verdict now is not the claimed label: "
    "if the claim is true, these are what it would learn from). Within each group, the reports it is least "
    "sure about come first (its P(ai) closest to its threshold), then the oldest. Reports it could not score "
    "(no model loaded, unreadable image) come last, oldest first."
)


def review_priority(record: FeedbackRecord, live: LiveScore | None) -> tuple[int, float, datetime, str]:
    """The sort key of the review queue (smaller first); ``REVIEW_ORDER`` says it in words."""
    if live is None:
        return (2, 0.0, record.created_at, record.id)
    group = 0 if live.label != record.claimed_label else 1
    return (group, abs(live.probability - live.threshold), record.created_at, record.id)
