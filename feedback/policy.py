"""Which feedback is believed: quarantine, agreement, review, and per-client caps.

A report is evidence, not truth: anyone can claim that any image is "real". So every report
starts in quarantine, and an image's claim is accepted only when

- a reviewer accepted it (``aidetect feedback review``), or
- at least ``min_agreeing_clients`` independent clients (distinct hashed fingerprints) made
  the same claim about it and no client claimed the opposite.

Clients that disagree about an image get all its claims rejected (unless a reviewer decides).
The same client repeating a claim counts once. When a dataset version is assembled, each
client's credit is capped (``max_per_client``): an image accepted by agreement enters only
while enough of its claimants still have credit, so one client flooding reports, even with a
few accomplices, moves at most that many images into the feedback dataset (its versions are
cumulative: the cap holds across versions, not per run). Reviewer decisions are not
capped: a person looked at them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from feedback.records import FeedbackRecord

if TYPE_CHECKING:
    from aidetect.settings import Settings

Status = Literal["quarantined", "accepted", "rejected"]


@dataclass(frozen=True)
class Review:
    """A reviewer's decision on one report (and so on its claim about its image)."""

    feedback_id: str
    decision: Literal["accept", "reject"]
    reviewer: str
    at: str
    note: str | None = None


@dataclass(frozen=True)
class Policy:
    """The numbers of the policy. Their defaults live once, in the settings
    (``AIDETECT_FEEDBACK_MIN_AGREEING_CLIENTS``, ``AIDETECT_FEEDBACK_MAX_PER_CLIENT``):
    build one with ``configured_policy``."""

    min_agreeing_clients: int
    max_per_client: int

    def __post_init__(self) -> None:
        if self.min_agreeing_clients < 1 or self.max_per_client < 1:
            raise ValueError("min_agreeing_clients and max_per_client must be at least 1")


def configured_policy(
    settings: Settings | None = None, *, min_agreeing_clients: int | None = None, max_per_client: int | None = None
) -> Policy:
    """The policy the settings give, with any number passed here taking their place.

    The one way to build the policy that is in force: serving (report statuses), the
    ``gather-feedback`` flow and ``aidetect feedback review`` all call it, so a change of
    ``AIDETECT_FEEDBACK_*`` reaches each of them; a number passed here overrides it for that call
    only (0 is refused, never taken for "unset").
    """
    if settings is None:
        from aidetect.settings import get_settings

        settings = get_settings()
    return Policy(
        min_agreeing_clients=settings.feedback_min_agreeing_clients
        if min_agreeing_clients is None
        else min_agreeing_clients,
        max_per_client=settings.feedback_max_per_client if max_per_client is None else max_per_client,
    )


@dataclass
class Decision:
    status: Status
    reason: str


@dataclass
class ImageVerdict:
    """What is believed about one image."""

    sha256: str
    label: str | None  # the accepted claim, if any
    status: Status
    reason: str
    by_reviewer: bool  # accepted by a reviewer (not capped)
    claimants: set[str] = field(default_factory=set)  # clients who claimed the accepted label
    records: list[FeedbackRecord] = field(default_factory=list)  # all reports, oldest first


def judge_images(records: list[FeedbackRecord], reviews: dict[str, Review], policy: Policy) -> dict[str, ImageVerdict]:
    """One verdict per image, from all its reports and the reviews of them."""
    by_image: dict[str, list[FeedbackRecord]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.created_at, r.id)):
        by_image[record.image_sha256].append(record)
    return {sha: _judge(sha, reports, reviews, policy) for sha, reports in by_image.items()}


def _judge(sha: str, reports: list[FeedbackRecord], reviews: dict[str, Review], policy: Policy) -> ImageVerdict:
    reviewed = sorted((reviews[r.id] for r in reports if r.id in reviews), key=lambda v: v.at)
    rejected_ids = {v.feedback_id for v in reviewed if v.decision == "reject"}
    accepted = [v for v in reviewed if v.decision == "accept"]
    if accepted:  # the latest acceptance decides the image
        record = next(r for r in reports if r.id == accepted[-1].feedback_id)
        label = record.claimed_label
        claimants = {r.client for r in reports if r.claimed_label == label and r.id not in rejected_ids}
        return ImageVerdict(
            sha, label, "accepted", f"reviewer {accepted[-1].reviewer} accepted {label}", True, claimants, reports
        )
    standing = [r for r in reports if r.id not in rejected_ids]
    clients: dict[str, set[str]] = defaultdict(set)
    for record in standing:
        clients[record.claimed_label].add(record.client)
    if not standing:
        return ImageVerdict(sha, None, "rejected", "every report was rejected by a reviewer", False, set(), reports)
    if len(clients) > 1:
        counts = ", ".join(f"{len(c)} client(s) say {claim}" for claim, c in sorted(clients.items()))
        return ImageVerdict(sha, None, "rejected", f"clients disagree: {counts}", False, set(), reports)
    claim, agreeing = next(iter(clients.items()))
    if len(agreeing) >= policy.min_agreeing_clients:
        return ImageVerdict(
            sha, claim, "accepted", f"{len(agreeing)} independent clients agree: {claim}", False, agreeing, reports
        )
    missing = policy.min_agreeing_clients - len(agreeing)
    return ImageVerdict(
        sha,
        None,
        "quarantined",
        f"waiting for {missing} more independent report(s) or a reviewer",
        False,
        agreeing,
        reports,
    )


def decide(records: list[FeedbackRecord], reviews: dict[str, Review], policy: Policy) -> dict[str, Decision]:
    """The status of every report (by id), with the reason."""
    return decide_judged(judge_images(records, reviews, policy), reviews)


def decide_judged(verdicts: dict[str, ImageVerdict], reviews: dict[str, Review]) -> dict[str, Decision]:
    """``decide`` on images already judged (``judge_images``)."""
    decisions: dict[str, Decision] = {}
    for verdict in verdicts.values():
        for record in verdict.records:
            review = reviews.get(record.id)
            if review is not None and review.decision == "reject":
                decisions[record.id] = Decision("rejected", f"reviewer {review.reviewer} rejected it")
            elif verdict.status == "accepted":
                agrees = record.claimed_label == verdict.label
                decisions[record.id] = Decision(
                    "accepted" if agrees else "rejected",
                    verdict.reason if agrees else f"contradicts the accepted claim ({verdict.reason})",
                )
            else:
                decisions[record.id] = Decision(verdict.status, verdict.reason)
    return decisions


def select_for_training(
    records: list[FeedbackRecord],
    reviews: dict[str, Review],
    policy: Policy,
    *,
    misclassified_only: bool = True,
) -> list[tuple[FeedbackRecord, str]]:
    """(representative report, accepted label) per image that may enter the next dataset version.

    Oldest images first; images accepted by agreement only while at least
    ``min_agreeing_clients`` of their claimants have credit left (each use spends one credit of
    each claimant). With ``misclassified_only``, images the model already got right are left out.
    """
    return select_judged(judge_images(records, reviews, policy), policy, misclassified_only=misclassified_only)


def select_judged(
    verdicts: dict[str, ImageVerdict], policy: Policy, *, misclassified_only: bool = True
) -> list[tuple[FeedbackRecord, str]]:
    """``select_for_training`` on images already judged (``judge_images``)."""
    credit: dict[str, int] = defaultdict(lambda: policy.max_per_client)
    chosen: list[tuple[FeedbackRecord, str]] = []
    for verdict in sorted(verdicts.values(), key=lambda v: v.records[0].created_at):
        if verdict.status != "accepted" or verdict.label is None:
            continue
        representative = next(r for r in verdict.records if r.claimed_label == verdict.label)
        if misclassified_only and not any(r.misclassified for r in verdict.records if r.claimed_label == verdict.label):
            continue
        if not verdict.by_reviewer:
            able = [c for c in verdict.claimants if credit[c] > 0]
            if len(able) < policy.min_agreeing_clients:
                continue
            for client in able:
                credit[client] -= 1
        chosen.append((representative, verdict.label))
    return chosen
