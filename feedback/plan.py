"""The next version of the feedback dataset, planned from what is stored: pure, no store, no Prefect.

``gather-feedback`` loads the previous version's rows, the reports, the reviews and what the
live model was trained on, asks ``plan_next_version`` what the next version is, and writes it.

Incremental: the next version is the previous one plus the images accepted since, minus those
whose claim a reviewer has since rejected (or whose accepted label changed); every image keeps
the split it was given when first taken. ``holdout_share`` of new images go to the ``test``
split: the regression set, never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from feedback.policy import Policy, Review, decide_judged, judge_images, select_judged
from feedback.records import FeedbackRecord
from model.datasets import split_of

FEEDBACK_DATASET = "feedback"  # the dataset gather-feedback writes; its test split is the regression set


@dataclass(frozen=True)
class NothingNew:
    """No version to write, and why."""

    reason: str
    accepted: int  # images accepted (and misclassified, unless asked otherwise): all taken already


@dataclass(frozen=True)
class NextVersion:
    """The rows of the next version and what changed since the previous one."""

    rows: list[dict[str, Any]]  # the whole version: the rows kept, then those added
    parents: list[str]  # ``dataset@version`` of the previous version, if any
    added: list[dict[str, Any]]
    withdrawn: int  # rows of the previous version whose claim no longer stands
    feedback_ids: list[str]  # every accepted report behind the version's images
    pending: int  # training images of the version the live model was not trained on
    ask_for_retrain: bool  # ``pending`` crossed a multiple of ``retrain_after`` with this version
    accepted: int

    @property
    def regression_set(self) -> int:
        """Images held out (the ``test`` split): never trained on."""
        return sum(r["split"] == "test" for r in self.rows)

    def version_info(self) -> dict[str, Any]:
        """What the dataset version records beside its rows."""
        return {
            "added": len(self.added),
            "withdrawn": self.withdrawn,
            "regression_set": self.regression_set,
            # every report behind an accepted claim, so each reporter can see where theirs went
            "feedback_ids": self.feedback_ids,
        }


def plan_next_version(
    parent: str | None,
    previous: list[dict[str, Any]],
    records: list[FeedbackRecord],
    reviews: dict[str, Review],
    policy: Policy,
    *,
    trained_on: set[str],
    holdout_share: float,
    retrain_after: int,
    misclassified_only: bool = True,
) -> NextVersion | NothingNew:
    """What the version after ``parent`` (``dataset@version`` with rows ``previous``) holds.

    ``trained_on``: the images the live model was trained on. ``ask_for_retrain`` is set once
    per ``retrain_after`` training images it has not seen (at 50, 100, ...), not on every version
    past the bar: a challenger the gate rejected must not be retried every hour for one more image.
    ``misclassified_only=False`` also takes accepted claims that agree with the model.
    """
    if not 0 <= holdout_share < 0.9:
        raise ValueError(f"holdout_share must be in [0, 0.9), got {holdout_share}")
    verdicts = judge_images(records, reviews, policy)
    selected = select_judged(verdicts, policy, misclassified_only=misclassified_only)
    chosen = {record.image_sha256: (record, label) for record, label in selected}
    kept = [r for r in previous if r["sha256"] in chosen and chosen[r["sha256"]][1] == r["label"]]
    withdrawn = len(previous) - len(kept)
    taken = {r["sha256"] for r in kept}
    added = [
        {
            "sha256": sha,
            "key": record.image_key,
            "label": label,
            "split": split_of(sha, test_share=holdout_share),
            "source": f"feedback:{record.id}",
            "generator": record.generator or "",
        }
        for sha, (record, label) in sorted(chosen.items())
        if sha not in taken
    ]
    if not added and not withdrawn:
        return NothingNew(f"nothing new since {parent}" if parent else "no usable feedback yet", len(chosen))
    rows = kept + added
    by_id = {r.id: r for r in records}
    wanted = {(sha, label) for sha, (_, label) in chosen.items()}
    feedback_ids = sorted(
        i
        for i, d in decide_judged(verdicts, reviews).items()
        if d.status == "accepted" and (by_id[i].image_sha256, by_id[i].claimed_label) in wanted
    )
    pending = sum(r["split"] == "train" and r["sha256"] not in trained_on for r in rows)
    added_train = sum(r["split"] == "train" and r["sha256"] not in trained_on for r in added)
    ask = retrain_after > 0 and pending // retrain_after > (pending - added_train) // retrain_after
    return NextVersion(rows, [parent] if parent else [], added, withdrawn, feedback_ids, pending, ask, len(chosen))
