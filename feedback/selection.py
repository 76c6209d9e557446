"""Which feedback becomes training data."""

from __future__ import annotations

from feedback.records import FeedbackRecord


def select_for_training(records: list[FeedbackRecord]) -> list[FeedbackRecord]:
    """Misclassified reports, one per image; images claimed both ways are left out.

    The first report of an image stands for it (later duplicates count once).
    """
    claims: dict[str, set[str]] = {}
    first: dict[str, FeedbackRecord] = {}
    for record in sorted(records, key=lambda r: r.created_at):
        if record.status == "rejected":
            continue
        claims.setdefault(record.image_sha256, set()).add(record.claimed_label)
        first.setdefault(record.image_sha256, record)
    return [record for sha, record in first.items() if len(claims[sha]) == 1 and record.misclassified]
